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
// Next follows the wall clock of the zone, with the rules of Vixie cron and
// cronie for the instants where the UTC offset jumps (daylight saving time
// or any other change of offset):
//
//   - Fixed-time schedules (the hour field does not cover all 24 hours): a
//     matching time skipped by a jump forward fires once, right after the
//     gap, at the instant of the jump (several skipped matches coalesce
//     into that one tick); a matching time that occurs twice after a jump
//     back fires only at its first occurrence.
//   - Schedules whose hour field covers all 24 hours ("*", "*/1", "0-23"):
//     they fire whenever the wall clock reads a matching time, so a skipped
//     time does not fire and a repeated time fires twice. For the usual
//     one-hour shift this keeps their elapsed-time rhythm exactly: "*/15 * * * *"
//     fires every 15 minutes and "0 * * * *" every 60 minutes through both
//     transitions. Where the shift is 30 minutes (Australia/Lord_Howe), the
//     rhythm is kept for minute patterns invariant under a 30-minute shift
//     ("*/5", "*/15", "0,30"...); others ("0 * * * *") see one interval of
//     30 or 90 minutes, as their wall-clock alignment demands.
//   - "@every" ignores wall clocks altogether.
//
// # Errors
//
// A spec that cannot be parsed returns a *ScheduleError naming the field and
// the offending token; errors.Is(err, ErrInvalidSchedule) holds. ParseSchedule
// never panics, whatever bytes it is given.
func ParseSchedule(spec string) (Schedule, error) {
	e, err := cronexpr.Parse(spec)
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
