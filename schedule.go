package batuta

import (
	"errors"
	"time"

	"github.com/batuta-dev/batuta/internal/cronexpr"
)

// A Schedule says when a cron trigger fires.
//
// Next returns the first activation strictly after t, or the zero time if
// there is none. It must be safe for concurrent use, return a time after t
// (or zero), and be monotonic: t1 <= t2 implies Next(t1) <= Next(t2). The
// cron trigger relies on that to find missed ticks without enumerating them.
//
// ParseSchedule returns the Schedule of a cron spec; ScheduleFunc adapts a
// function, for calendars that cron cannot express.
type Schedule interface {
	Next(t time.Time) time.Time
}

// ScheduleFunc adapts a function to the Schedule interface.
type ScheduleFunc func(t time.Time) time.Time

// Next returns f(t).
func (f ScheduleFunc) Next(t time.Time) time.Time { return f(t) }

// ParseSchedule parses a cron spec into a Schedule. The Schedule it returns
// is immutable, safe for concurrent use, implements fmt.Stringer (returning
// spec), and its Next does not allocate.
//
// # Syntax
//
// Five fields, "minute hour day-of-month month day-of-week", or six with a
// leading "second" field; fields are separated by spaces or tabs:
//
//	field          values                  also
//	second         0-59                    (six-field form only; 0 otherwise)
//	minute         0-59
//	hour           0-23
//	day-of-month   1-31                    ?  L  L-n  LW  L-nW  nW
//	month          1-12 or JAN-DEC
//	day-of-week    0-7 or SUN-SAT (0, 7 = Sunday)   ?  wL  w#k
//
// Each field is "*" or a comma-separated list of values, ranges "a-b" and
// steps "*/s", "a-b/s" or "a/s" (which means a to the end of the range, every
// s). Names are case-insensitive. A range must not wrap ("5-1" and "FRI-MON"
// are errors); a step must be between 1 and the number of values of the
// field. "?" means "*" and is allowed only in the two day fields.
//
// Day fields: when both day-of-month and day-of-week are restricted, a day
// matches if either matches (the classic cron rule); when one of them is
// unrestricted, only the other one counts. A day field is unrestricted when
// one of its list items is "*" or "?" with no step (or step 1): "*/2" is
// restricted, so "0 0 */2 * MON" fires on odd days and on Mondays (this is
// robfig/cron's rule; Vixie cron would treat "*/2" as unrestricted).
//
// Quartz extensions, which may appear in lists:
//
//	L     last day of the month             L-n   n days before the last day (n 0-30)
//	LW    last weekday (Mon-Fri) of month   nW    the weekday nearest day n, within the month
//	L-nW  the weekday nearest L-n           wL    last weekday w of the month
//	w#k   k-th weekday w of the month (k 1-5)
//
// Weekday numbers are Unix cron's, 0 (or 7) = Sunday, also with L and #:
// "5L" is the last Friday and "5#3" the third Friday of the month. Quartz,
// where L and # come from, numbers weekdays from 1 = Sunday, so there "5L"
// is the last Thursday. Write names ("FRIL", "FRI#3") to mean the same in
// both, or parse Quartz specs with ScheduleOptions.QuartzWeekdays (or
// CronConfig.QuartzWeekdays). NewCron logs a warning for a spec that uses a
// number with L or # under Unix numbering.
//
// "nW" and "L-nW" never cross a month boundary, as in Quartz: 1W on a
// Saturday is Monday the 3rd, LW (that is, L-0W) on a Sunday the 31st is
// Friday the 29th, and nW for a day the month does not have (31W in April,
// L-30W in a 30-day month) does not fire. They mix with other items:
// "L-1W,L-1" fires on the weekday nearest the day before the last and on
// that day itself.
// "L" alone in day-of-week is refused as ambiguous (Quartz reads it as
// Saturday); write "6L" or "SATL".
//
// A date that does not exist never fires: "0 0 30 2 *" parses, and its Next
// always returns the zero time.
//
// # Descriptors
//
//	@yearly, @annually   0 0 1 1 *      @daily, @midnight   0 0 * * *
//	@monthly             0 0 1 * *      @hourly             0 * * * *
//	@weekly              0 0 * * 0      @every <duration>   e.g. @every 1h30m, @every 50ms
//
// "@every d" (d >= 1ms, time.ParseDuration syntax) fires every d of elapsed
// time, ignoring wall clocks, time zones and daylight saving time. Its ticks
// are the whole multiples of d since the Unix epoch (1970-01-01T00:00:00Z),
// as in Temporal's interval schedules, not counted from process start: every
// process computes the same ticks (so a tick's event ID is the same on every
// node, and agrees with other systems anchored on the epoch), "@every 1h"
// fires on the hour of UTC, "@every 24h" at midnight UTC, and "@every 7h" at
// 00:00, 07:00, 14:00 and 21:00 UTC on 1 January 1970 and every 7 hours
// since.
//
// # Time zones
//
// A prefix "CRON_TZ=<IANA name> " or "TZ=<IANA name> " evaluates the spec in
// that zone, and Next returns times in it. Without one, Next evaluates the
// spec in the location of its argument (the cron trigger passes its clock's
// time, normally time.Local). Unknown zones are errors.
//
// # Daylight saving time
//
// Next follows the wall clock of the zone, with cronie's rules for the
// instants where the UTC offset jumps (daylight saving time, or any other
// change of offset): cron.c's main loop and find_jobs, and the man page
// cron(8), "Daylight Saving Time and other time changes". The rule depends
// on the spec's kind, read from its text as cronie does (entry.c sets
// MIN_STAR or HR_STAR when the minute or hour field starts with '*'):
//
//   - Fixed-time schedules, whose minute and hour fields both start with a
//     digit ("30 2 * * *", "0,30 2 * * *", "0 0-23 * * *", "@daily"):
//     each matching time that a jump forward skips fires once, right after
//     the jump; several skipped times fire once each. To give each its own
//     instant (and event ID), the one s seconds into the gap fires at the
//     instant of the jump plus s+1 nanoseconds, after a match at the jump
//     itself: in Madrid on 29 March 2026 (02:00 -> 03:00), "0,30 2 * * *"
//     fires at 03:00:00.000000001 and 03:00:00.000001801 CEST. A matching
//     time that a jump back repeats fires only at its first occurrence.
//   - Wildcard schedules, whose minute or hour field starts with '*'
//     ("*/15 * * * *", "0 * * * *", "0 */2 * * *", "*/10 2 * * *",
//     "@hourly"): they follow the new wall clock. A skipped time does not
//     fire and is not caught up; a repeated time fires in both copies.
//   - Jumps forward of 3 hours or more, and back of more than 181 minutes,
//     are taken as corrections of the clock: every schedule follows the
//     new wall clock. Jumps forward of less than 5 minutes catch up
//     wildcard schedules too.
//   - "@every" ignores wall clocks altogether.
//
// cronie applies these rules in the daemon's time zone only (its CRON_TZ
// jobs may miss or repeat runs at a transition); Next applies them in the
// schedule's zone. The man page says the special handling covers "jobs that
// run with a granularity greater than one hour", but the code (which this
// follows) looks only at the first character of the fields: "0 */2 * * *"
// is a wildcard job.
//
// # Errors
//
// A spec that cannot be parsed returns a *ScheduleError naming the field and
// the offending token; errors.Is(err, ErrInvalidSchedule) holds. ParseSchedule
// never panics, whatever bytes it is given.
func ParseSchedule(spec string) (Schedule, error) {
	return ParseScheduleWith(spec, ScheduleOptions{})
}

// ScheduleOptions change how ParseScheduleWith reads a spec. The zero value
// reads it as ParseSchedule does.
type ScheduleOptions struct {
	// QuartzWeekdays numbers the days of the week as Quartz does, from 1
	// (Sunday) to 7 (Saturday), in every form of the day-of-week field:
	// "6L" is then the last Friday of the month, "6#3" the third Friday,
	// "2-6" Monday to Friday, and 0 is out of range. Names (SUN-SAT) and the
	// descriptors (@weekly) mean the same either way. Set it for specs
	// copied from Quartz or from tools numbered like it (AWS EventBridge);
	// the other fields read the same in both syntaxes.
	// Default: Unix numbering, 0 or 7 = Sunday.
	QuartzWeekdays bool
}

// ParseScheduleWith is ParseSchedule with options.
func ParseScheduleWith(spec string, opts ScheduleOptions) (Schedule, error) {
	e, err := cronexpr.ParseWith(spec, cronexpr.Options{QuartzWeekdays: opts.QuartzWeekdays})
	if err != nil {
		var ce *cronexpr.Error
		if errors.As(err, &ce) {
			return nil, &ScheduleError{Spec: spec, Field: ce.Field, Token: ce.Token, Reason: ce.Reason}
		}
		return nil, &ScheduleError{Spec: spec, Field: "spec", Token: spec, Reason: err.Error()}
	}
	return e, nil
}

// MustParseSchedule is like ParseSchedule but panics if spec is invalid. It
// is meant for package-level variables initialised with a constant spec.
func MustParseSchedule(spec string) Schedule {
	s, err := ParseSchedule(spec)
	if err != nil {
		panic(err)
	}
	return s
}
