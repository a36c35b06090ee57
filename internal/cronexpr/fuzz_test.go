package cronexpr

import (
	"errors"
	"testing"
	"time"
)

var fuzzZones = func() []*time.Location {
	locs := []*time.Location{time.UTC, time.FixedZone("+0545", 5*3600+45*60)}
	for _, name := range []string{"Europe/Madrid", "America/New_York", "Australia/Lord_Howe", "Pacific/Apia", "America/Santiago"} {
		loc, err := time.LoadLocation(name)
		if err != nil {
			panic(err)
		}
		locs = append(locs, loc)
	}
	return locs
}()

// FuzzParseNext checks that Parse never panics, that every rejection is an
// *Error naming a field, and that Next is strictly increasing, consistent
// (no activation is skipped when starting just before one) and terminates.
// Run it with: go test ./internal/cronexpr -run '^$' -fuzz FuzzParseNext
func FuzzParseNext(f *testing.F) {
	seeds := []string{
		"* * * * *", "*/15 * * * *", "0 9 * * MON-FRI", "30 2 * * *", "0 0 L 2 *",
		"0 0 29 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *", "5 4 * * sun", "0 12 15W * *",
		"0 12 LW * *", "0 12 L-3 * *", "0 12 * * 5L", "0 12 * * MON#2,FRI#5", "*/5 1-30/5 * * * *",
		"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly",
		"@every 90s", "@every 50ms", "@every 1h30m", "CRON_TZ=Europe/Madrid 0 9 * * *",
		"TZ=Australia/Lord_Howe 0 2 * * *", "TZ=America/New_York 30 1 * * *",
		"61 * * * *", "* * *", "*/0 * * * *", "5-1 * * * *", "CRON_TZ=Mars/Olympus * * * * *", "0 12 L-1W,L-1 * *", "0 0,30 2 * * *", "0 12 ? * 6L", "0 12 ? * 6#3",
		"", "\x00\xff", "0 0 ? * ?", "0 0 1,15 * 1", "0 0 * JAN-MAR,dec 7", "1/10 * * * * *",
		"0 0 31 2 MON#5", "0 0 * 2 MON#5", "@every 0s", "TZ= * * * * *", "0 0 1 1 * 2030",
	}
	for i, s := range seeds {
		f.Add(s, int64(1774749600+i*86400*17), uint32(i*7919), uint8(i))
	}
	f.Fuzz(func(t *testing.T, spec string, sec int64, nsec uint32, zone uint8) {
		// The high bit of zone selects Quartz's weekday numbering.
		e, err := ParseWith(spec, Options{QuartzWeekdays: zone&0x80 != 0})
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.Field == "" || pe.Reason == "" {
				t.Fatalf("Parse(%q): error %v is not a complete *Error", spec, err)
			}
			return
		}
		if e.AmbiguousWeekdays() && zone&0x80 != 0 {
			t.Fatalf("%q: ambiguous weekdays reported under Quartz numbering", spec)
		}
		if e.String() != spec {
			t.Fatalf("String() = %q, want %q", e.String(), spec)
		}
		// Keep t within years -10000..12000 (the interesting range).
		sec %= 315537897600
		from := time.Unix(sec, int64(nsec%1e9)).In(fuzzZones[int(zone&0x7f)%len(fuzzZones)])
		n := e.Next(from)
		if n.IsZero() {
			if !e.Never() && from.Year() > 1 && from.Year() < 9000 && e.Every() == 0 {
				t.Fatalf("Next(%s) of %q is zero but the spec is not Never", from, spec)
			}
			return
		}
		if !n.After(from) {
			t.Fatalf("Next(%s) of %q = %s, not after", from, spec, n)
		}
		if e.Every() == 0 && n.Nanosecond() != 0 {
			// Only catch-up activations after a jump forward have one:
			// 1 + (seconds into the gap) nanoseconds after the jump.
			u := n.Unix()
			jump := offset(n.Location(), u) - offset(n.Location(), u-1)
			if jump <= 0 || n.Nanosecond() > jump || !e.catchesUp(jump) {
				t.Fatalf("Next(%s) of %q = %s has a fraction of a second but is no catch-up after a jump forward", from, spec, n)
			}
		}
		if want := e.Location(); want != nil && n.Location() != want {
			t.Fatalf("Next of %q is in %s, want %s", spec, n.Location(), want)
		}
		// Nothing fires between from and n.
		for _, x := range []time.Time{n.Add(-time.Nanosecond), from.Add(n.Sub(from) / 2)} {
			if x.Before(from) {
				continue
			}
			if m := e.Next(x); !m.Equal(n) {
				t.Fatalf("%q: Next(%s) = %s but Next(%s) = %s", spec, from, n, x, m)
			}
		}
		if m := e.Next(n); !m.IsZero() && !m.After(n) {
			t.Fatalf("%q: Next(%s) = %s, not after", spec, n, m)
		}
	})
}
