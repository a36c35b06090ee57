package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/batuta-dev/batuta"
)

// cronInfo is what the parsed schedule tells beyond Next (the
// cronexpr.Expr behind batuta.ParseSchedule has these methods).
type cronInfo interface {
	Wildcard() bool
	Location() *time.Location
	Every() time.Duration
	Never() bool
	AmbiguousWeekdays() bool
}

// fireTime is one upcoming tick as --json prints it.
type fireTime struct {
	Time time.Time `json:"time"`
	UTC  string    `json:"utc"`
	// Note says how daylight saving time affects the tick, if it does.
	Note string `json:"note,omitempty"`
}

// transition is a change of the zone's UTC offset and what the schedule
// does there.
type transition struct {
	At time.Time `json:"at"`
	// Kind is "gap" (clocks go forward: wall times that do not exist) or
	// "overlap" (clocks go back: wall times that happen twice).
	Kind string `json:"kind"`
	// Shift is the change of offset (positive forward).
	Shift string `json:"shift"`
	// Wall is the range of wall times skipped or repeated.
	Wall string `json:"wall"`
	// Effects says, for each matching wall time in the range, when it fires.
	Effects []string `json:"effects"`
}

// scheduleReport is the result of schedules next.
type scheduleReport struct {
	Spec        string       `json:"spec"`
	Zone        string       `json:"zone"`
	ZoneFrom    string       `json:"zone_from"` // "spec", "--tz" or "local"
	Kind        string       `json:"kind"`      // "fixed-time", "wildcard", "every"
	KindWhy     string       `json:"kind_why"`
	From        time.Time    `json:"from"`
	Fires       []fireTime   `json:"fires"`
	Transitions []transition `json:"transitions"`
	Warnings    []string     `json:"warnings,omitempty"`
}

func (a *app) schedulesCommand() *cobra.Command {
	c := groupCommand("schedules", "Explain cron specs", "Explain cron specs as batuta's cron trigger reads them.")
	var (
		n      int
		tz     string
		from   string
		quartz bool
	)
	next := &cobra.Command{
		Use:   "next SPEC",
		Short: "Parse a cron spec and show its next fire times, with DST notes",
		Long: `Parse a cron spec (the syntax of batuta.ParseSchedule and docs/cron.md) and show
its next fire times in its time zone and in UTC. Then, for each daylight-saving
transition of the zone in the coming year (and among the fire times shown), say
which times the spec matches in the gap (clocks forward) or the overlap (clocks
back) and when batuta fires them:

  fixed-time spec (minute and hour start with a digit, "30 2 * * *"):
    a skipped time fires once, right after the jump (a few nanoseconds after it,
    so each has its own event ID); a repeated time fires once, at its first
    occurrence.
  wildcard spec (minute or hour starts with '*', "*/15 * * * *", "0 */2 * * *"):
    follows the new wall clock: a skipped time does not fire, a repeated time
    fires in both copies.
  jumps of 3 hours or more are clock corrections: every spec follows the new
    wall clock. @every ignores wall clocks and DST.

The zone is the spec's CRON_TZ= prefix, else --tz, else the local zone (the
trigger uses its clock's, time.Local for SystemClock). A spec that cannot be
parsed exits with code 2 and names the field and the token.`,
		Example: `  batuta schedules next "30 2 * * *" --tz Europe/Paris
  batuta schedules next "CRON_TZ=America/New_York 0,15,30,45 1 * * *" -n 8 --from 2026-10-31T00:00:00Z
  batuta schedules next "0 12 ? * 6L" --quartz
  batuta schedules next "@every 90m" --json`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if n < 1 || n > 1000 {
				return usageErrorf("-n %d: must be between 1 and 1000", n)
			}
			start := a.now()
			if from != "" {
				t, err := time.Parse(time.RFC3339Nano, from)
				if err != nil {
					return usageErrorf("--from %q: not an RFC 3339 time", from)
				}
				start = t
			}
			rep, err := explainSchedule(args[0], tz, start, n, quartz)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(a.out(cmd), rep)
			}
			writeSchedule(a.out(cmd), rep)
			return nil
		},
	}
	next.Flags().IntVarP(&n, "count", "n", 5, "how many fire times to show")
	next.Flags().StringVar(&tz, "tz", "", "time zone for a spec without CRON_TZ= (IANA name, e.g. Europe/Paris; default local)")
	next.Flags().StringVar(&from, "from", "", "start from this time (RFC 3339; default now)")
	next.Flags().BoolVar(&quartz, "quartz", false, "read day-of-week numbers as Quartz does (1 = Sunday)")
	c.AddCommand(next)
	return c
}

// stripZone returns spec without its CRON_TZ= / TZ= prefix.
func stripZone(spec string) string {
	body := strings.TrimSpace(spec)
	for _, p := range []string{"CRON_TZ=", "TZ="} {
		if rest, ok := strings.CutPrefix(body, p); ok {
			if i := strings.IndexAny(rest, " \t"); i >= 0 {
				return strings.TrimSpace(rest[i:])
			}
		}
	}
	return body
}

// explainSchedule computes the report of schedules next.
func explainSchedule(spec, tz string, from time.Time, n int, quartz bool) (*scheduleReport, error) {
	opts := batuta.ScheduleOptions{QuartzWeekdays: quartz}
	sched, err := batuta.ParseScheduleWith(spec, opts)
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	info, ok := sched.(cronInfo)
	if !ok {
		return nil, errors.New("internal error: the parsed schedule does not describe itself")
	}
	rep := &scheduleReport{Spec: spec, Fires: []fireTime{}, Transitions: []transition{}}
	loc := info.Location()
	switch {
	case loc != nil:
		rep.ZoneFrom = "spec"
		if tz != "" && tz != loc.String() {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("the spec names its own zone %s; --tz %s is ignored", loc, tz))
		}
	case tz != "":
		if loc, err = time.LoadLocation(tz); err != nil {
			return nil, usageErrorf("--tz %q: unknown time zone", tz)
		}
		rep.ZoneFrom = "--tz"
	default:
		loc, rep.ZoneFrom = time.Local, "local"
	}
	rep.Zone = loc.String()
	rep.From = from.In(loc)
	switch {
	case info.Every() > 0:
		rep.Kind, rep.KindWhy = "every", "@every counts elapsed time from the Unix epoch: wall clocks, time zones and DST play no part"
	case info.Wildcard():
		rep.Kind, rep.KindWhy = "wildcard", "the minute or the hour field starts with '*': it follows the wall clock; a time skipped by a DST jump does not fire, a repeated time fires twice"
	default:
		rep.Kind, rep.KindWhy = "fixed-time", "the minute and hour fields start with a digit: a time skipped by a DST jump fires right after the jump, a repeated time fires once"
	}
	if info.AmbiguousWeekdays() && !quartz {
		rep.Warnings = append(rep.Warnings, "a weekday number is used with L or #: batuta reads it with Unix numbers (0 = Sunday), Quartz with 1 = Sunday, so the same text names the day before there; pass --quartz to read it as Quartz does, or use names (FRIL, FRI#3)")
	}
	if info.Never() {
		rep.Warnings = append(rep.Warnings, "the spec names only dates that never exist: it never fires")
		return rep, nil
	}

	t := from.In(loc)
	for range n {
		t = sched.Next(t)
		if t.IsZero() {
			break
		}
		rep.Fires = append(rep.Fires, fireTime{Time: t, UTC: t.UTC().Format(time.RFC3339Nano)})
	}
	if rep.Kind == "every" {
		return rep, nil
	}

	// Transitions: every offset change up to the last fire time shown or a
	// year ahead, whichever is later (at most 8).
	horizon := from.AddDate(1, 0, 0)
	if k := len(rep.Fires); k > 0 && rep.Fires[k-1].Time.After(horizon) {
		horizon = rep.Fires[k-1].Time
	}
	body, err := batuta.ParseScheduleWith(stripZone(spec), opts)
	if err != nil {
		return nil, fmt.Errorf("parse %q without its zone: %w", stripZone(spec), err)
	}
	cur := from.In(loc)
	for len(rep.Transitions) < 8 {
		_, end := cur.ZoneBounds()
		if end.IsZero() || end.After(horizon) {
			break
		}
		cur = end
		_, before := end.Add(-time.Nanosecond).Zone()
		_, after := end.Zone()
		if before == after {
			continue // a change of abbreviation only
		}
		tr := describeTransition(sched, body, end, before, after)
		rep.Transitions = append(rep.Transitions, tr)
		for i := range rep.Fires {
			if note := fireNote(rep.Fires[i].Time, tr, end, before, after); note != "" {
				rep.Fires[i].Note = note
			}
		}
	}
	return rep, nil
}

// describeTransition says what the schedule does at the offset change at
// instant at, from offset before to after (seconds east of UTC). body is
// the spec without its zone, evaluated in fixed zones to find the wall
// times it matches in the gap or overlap.
func describeTransition(sched, body batuta.Schedule, at time.Time, before, after int) transition {
	d := time.Duration(after-before) * time.Second
	oldZone := time.FixedZone(at.Add(-time.Nanosecond).Format("MST"), before)
	newZone := time.FixedZone(at.Format("MST"), after)
	tr := transition{At: at, Shift: signed(d)}
	const maxEffects = 6
	more := 0
	add := func(s string) {
		if len(tr.Effects) < maxEffects {
			tr.Effects = append(tr.Effects, s)
		} else {
			more++
		}
	}
	if d > 0 { // gap: wall times [at in old offset, + d) do not exist
		tr.Kind = "gap"
		gs := at.In(oldZone)
		tr.Wall = fmt.Sprintf("%s to %s do not exist (clocks go from %s to %s)",
			gs.Format("15:04:05"), gs.Add(d-time.Second).Format("15:04:05"), gs.Format("15:04 MST"), at.Format("15:04 MST"))
		// The fires right after the jump, from sched itself.
		fired := map[time.Duration]time.Time{}
		for t := sched.Next(at.Add(-time.Nanosecond)); !t.IsZero() && t.Before(at.Add(time.Second)); t = sched.Next(t) {
			if off := t.Sub(at); off > 0 {
				fired[off] = t
			}
		}
		for w := body.Next(gs.Add(-time.Nanosecond)); !w.IsZero() && w.Before(gs.Add(d)); w = body.Next(w) {
			s := w.Sub(gs)
			if t, ok := fired[time.Duration(s.Seconds())+1]; ok {
				add(fmt.Sprintf("%s is skipped: fires once right after the jump, at %s (%s UTC)",
					w.Format("15:04:05"), t.Format("15:04:05.000000000 MST"), t.UTC().Format(time.RFC3339Nano)))
			} else {
				why := "the schedule follows the new wall clock"
				if d >= 3*time.Hour {
					why = "a jump of 3 hours or more is a clock correction"
				}
				add(fmt.Sprintf("%s is skipped and does not fire (%s)", w.Format("15:04:05"), why))
			}
		}
	} else { // overlap: wall times [at in new offset, + |d|) happen twice
		tr.Kind = "overlap"
		nd := -d
		ws := at.In(newZone)
		tr.Wall = fmt.Sprintf("%s to %s happen twice (clocks go from %s back to %s)",
			ws.Format("15:04:05"), ws.Add(nd-time.Second).Format("15:04:05"), at.In(oldZone).Format("15:04 MST"), ws.Format("15:04 MST"))
		fired := map[int64]bool{} // by UnixNano: Times in other Locations are not ==
		for t := sched.Next(at.Add(-nd - time.Nanosecond)); !t.IsZero() && t.Before(at.Add(nd)); t = sched.Next(t) {
			fired[t.UnixNano()] = true
		}
		for w := body.Next(ws.Add(-time.Nanosecond)); !w.IsZero() && w.Before(ws.Add(nd)); w = body.Next(w) {
			first := w.Add(-nd) // the same wall time in the old offset
			a, b := fired[first.UnixNano()], fired[w.UnixNano()]
			wall := w.Format("15:04:05")
			switch {
			case a && b:
				add(fmt.Sprintf("%s fires twice: %s and %s", wall, first.In(oldZone).Format("15:04 MST"), w.Format("15:04 MST")))
			case a:
				add(fmt.Sprintf("%s fires once, at the first %s (%s)", wall, wall, first.In(oldZone).Format("MST")))
			case b:
				add(fmt.Sprintf("%s fires once, at the second %s (%s)", wall, wall, w.Format("MST")))
			default:
				add(fmt.Sprintf("%s does not fire", wall))
			}
		}
	}
	if more > 0 {
		tr.Effects = append(tr.Effects, fmt.Sprintf("... and %d more", more))
	}
	if len(tr.Effects) == 0 {
		tr.Effects = []string{"the spec matches no time in this range: unaffected"}
	}
	return tr
}

// fireNote says how a fire time relates to the transition at, or "".
func fireNote(t time.Time, tr transition, at time.Time, before, after int) string {
	d := time.Duration(after-before) * time.Second
	if tr.Kind == "gap" {
		if off := t.Sub(at); off > 0 && off < time.Second {
			skipped := at.In(time.FixedZone("", before)).Add(time.Duration(off.Nanoseconds()-1) * time.Second)
			return fmt.Sprintf("DST gap: %s does not exist on this day; fired right after the jump", skipped.Format("15:04:05"))
		}
		return ""
	}
	nd := -d
	switch {
	case !t.Before(at.Add(-nd)) && t.Before(at):
		return "DST overlap: the first of two " + t.Format("15:04:05")
	case !t.Before(at) && t.Before(at.Add(nd)):
		return "DST overlap: the second of two " + t.Format("15:04:05")
	}
	return ""
}

// signed formats a duration with its sign, without zero minutes and
// seconds: "+1h", "-30m", "+2h30m".
func signed(d time.Duration) string {
	sign := "+"
	if d < 0 {
		sign, d = "-", -d
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return sign + s
}

// writeSchedule prints the report for people.
func writeSchedule(w io.Writer, rep *scheduleReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	printf(tw, "Spec:\t%s\n", rep.Spec)
	printf(tw, "Zone:\t%s (%s)\n", rep.Zone, map[string]string{"spec": "from the spec", "--tz": "from --tz", "local": "the local zone; name one with CRON_TZ= or --tz"}[rep.ZoneFrom])
	printf(tw, "Kind:\t%s: %s\n", rep.Kind, rep.KindWhy)
	printf(tw, "From:\t%s\n", rep.From.Format(time.RFC3339))
	_ = tw.Flush()
	for _, warn := range rep.Warnings {
		printf(w, "Warning: %s\n", warn)
	}
	if len(rep.Fires) == 0 {
		printf(w, "\nno fire time\n")
	} else {
		printf(w, "\n")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		printf(tw, "FIRE TIME (%s)\tUTC\tNOTE\n", rep.Zone)
		for _, f := range rep.Fires {
			layout := "Mon 2006-01-02 15:04:05 MST"
			if f.Time.Nanosecond() != 0 {
				layout = "Mon 2006-01-02 15:04:05.000000000 MST"
			}
			printf(tw, "%s\t%s\t%s\n", f.Time.Format(layout), f.UTC, f.Note)
		}
		_ = tw.Flush()
	}
	if rep.Kind == "every" {
		return
	}
	if len(rep.Transitions) == 0 {
		printf(w, "\nNo UTC offset change in %s in the coming year.\n", rep.Zone)
		return
	}
	printf(w, "\nDaylight saving time in %s:\n", rep.Zone)
	for _, tr := range rep.Transitions {
		printf(w, "  %s, %s: %s\n", tr.At.Format("Mon 2006-01-02 15:04 MST"), tr.Shift, tr.Wall)
		for _, e := range tr.Effects {
			printf(w, "    %s\n", e)
		}
	}
}
