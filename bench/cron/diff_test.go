package cronbench

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"
	_ "time/tzdata"

	"github.com/batuta-dev/batuta"
	robfig "github.com/robfig/cron/v3"
)

// The syntax both libraries accept: five fields (robfig.ParseStandard) or
// six with seconds; numbers, names, *, ranges, steps, lists, ? in the day
// fields, TZ= and CRON_TZ= prefixes, and the descriptors except @every.
//
// Left out on purpose: "@every", whose ticks robfig computes relative to the
// argument of Next (t truncated to the second, plus the interval) while
// batuta anchors them at a fixed grid, so that every node computes the same
// tick times; this is a difference of design, not a bug. Syntax only one side
// accepts (7 for Sunday, L, W, #, steps larger than the field, "?" outside
// the day fields, upper-case descriptors, empty time zones...) is not
// compared either.

var robfigSixFields = robfig.NewParser(robfig.Second | robfig.Minute | robfig.Hour | robfig.Dom | robfig.Month | robfig.Dow | robfig.Descriptor)

func parseRobfig(spec string) (robfig.Schedule, error) {
	if len(strings.Fields(strings.TrimSpace(stripTZ(spec)))) == 6 {
		return robfigSixFields.Parse(spec)
	}
	return robfig.ParseStandard(spec)
}

func stripTZ(spec string) string {
	if strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=") {
		if i := strings.IndexByte(spec, ' '); i >= 0 {
			return spec[i:]
		}
	}
	return spec
}

var diffZones = []string{"UTC", "Europe/Madrid", "America/New_York", "Australia/Lord_Howe", "America/Santiago", "Australia/Sydney", "Asia/Kolkata"}

func field(r *rand.Rand, lo, hi int, names []string) string {
	tok := func(v int) string {
		if names != nil && v < len(names) && names[v] != "" && r.IntN(3) == 0 {
			n := names[v]
			if r.IntN(2) == 0 {
				n = strings.ToLower(n)
			}
			return n
		}
		return fmt.Sprint(v)
	}
	item := func() string {
		a := lo + r.IntN(hi-lo+1)
		b := a + r.IntN(hi-a+1)
		step := 1 + r.IntN(max(1, (hi-lo+1)/2))
		switch r.IntN(7) {
		case 0:
			return "*"
		case 1:
			return fmt.Sprintf("*/%d", step)
		case 2:
			return tok(a) + "-" + tok(b)
		case 3:
			return fmt.Sprintf("%s-%s/%d", tok(a), tok(b), step)
		case 4:
			return fmt.Sprintf("%d/%d", a, step)
		default:
			return tok(a)
		}
	}
	if r.IntN(3) == 0 {
		return "*"
	}
	n := 1 + r.IntN(3)
	parts := make([]string, n)
	for i := range parts {
		parts[i] = item()
	}
	return strings.Join(parts, ",")
}

var (
	months = []string{"", "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"}
	days   = []string{"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"}
)

// genCommonSpec returns a random spec in the syntax both libraries accept.
func genCommonSpec(r *rand.Rand) string {
	if r.IntN(12) == 0 {
		d := []string{"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
		return d[r.IntN(len(d))]
	}
	var f []string
	if r.IntN(3) == 0 {
		f = append(f, field(r, 0, 59, nil))
	}
	f = append(f, field(r, 0, 59, nil), field(r, 0, 23, nil))
	dom, dow := field(r, 1, 31, nil), field(r, 0, 6, days)
	switch r.IntN(4) {
	case 0:
		dom = "?"
	case 1:
		dow = "?"
	}
	f = append(f, dom, field(r, 1, 12, months), dow)
	spec := strings.Join(f, " ")
	if r.IntN(4) == 0 {
		prefix := "CRON_TZ="
		if r.IntN(2) == 0 {
			prefix = "TZ="
		}
		spec = prefix + diffZones[r.IntN(len(diffZones))] + " " + spec
	}
	return spec
}

// Disagreement classes. Each names the robfig/cron v3.0.1 bug it stands for.
const (
	agree = ""
	// robfig/cron follows the wall clock hour by hour with time.Add and
	// time.Date: a fixed time in a spring-forward gap is skipped (not run
	// right after the gap, as cron does: robfig/cron PR #541, PR #12), a
	// fixed time repeated by a fall-back runs twice, and 30-minute shifts
	// and midnight transitions derail its search (robfig/cron PR #12; the
	// code's own NOTE on Sao Paulo): time.Date on a wall time that does not
	// exist moves it, and the shifted minutes stick for the rest of the
	// search.
	classDST = "robfig DST handling (robfig/cron #541, #12)"
	// robfig/cron gives up after five years and returns the zero time, so
	// it misses leap-day schedules across 2100 and rare combinations
	// (same code in cert-manager's fork: cert-manager/cert-manager#9148).
	classHorizon = "robfig five-year search limit (cert-manager/cert-manager#9148)"
)

// classify returns agree, the class of a known robfig bug, or an error for a
// disagreement nothing explains (a bug of one side to look into).
func classify(loc *time.Location, from, ours, theirs time.Time) (string, error) {
	if ours.Equal(theirs) {
		return agree, nil
	}
	if theirs.IsZero() && !ours.IsZero() && ours.In(loc).Year() > from.In(loc).Year()+4 {
		return classHorizon, nil
	}
	end := ours
	if theirs.After(end) {
		end = theirs
	}
	// robfig restarts its search at the first of the month with time.Date,
	// so an offset change since then can derail it too.
	if !theirs.IsZero() && !ours.IsZero() && offsetChanges(loc, from.AddDate(0, 0, -32), end.Add(26*time.Hour)) {
		return classDST, nil
	}
	return "", fmt.Errorf("unexplained disagreement: batuta %s, robfig %s", ours, theirs)
}

// offsetChanges reports whether loc's UTC offset changes within [a, b].
func offsetChanges(loc *time.Location, a, b time.Time) bool {
	_, off := a.In(loc).Zone()
	for t := a; !t.After(b); t = t.Add(30 * time.Minute) {
		if _, o := t.In(loc).Zone(); o != off {
			return true
		}
	}
	_, o := b.In(loc).Zone()
	return o != off
}

// evalLocation is the location Next evaluates spec in for a time in loc.
func evalLocation(spec string, loc *time.Location) *time.Location {
	for _, p := range []string{"CRON_TZ=", "TZ="} {
		if rest, ok := strings.CutPrefix(spec, p); ok {
			name, _, _ := strings.Cut(rest, " ")
			if l, err := time.LoadLocation(name); err == nil {
				return l
			}
		}
	}
	return loc
}

// transitionsIn returns instants near the offset changes of loc in year y.
func transitionsIn(loc *time.Location, y int) []time.Time {
	var out []time.Time
	start := time.Date(y, 1, 1, 0, 0, 0, 0, time.UTC)
	for d := start; d.Year() == y; d = d.Add(24 * time.Hour) {
		if offsetChanges(loc, d, d.Add(24*time.Hour)) {
			out = append(out, d.Add(12*time.Hour))
			d = d.Add(24 * time.Hour)
		}
	}
	return out
}

func TestDifferential(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(2026, 3))
	locs := make([]*time.Location, len(diffZones))
	near := map[int][]time.Time{}
	for i, z := range diffZones {
		loc, err := time.LoadLocation(z)
		if err != nil {
			t.Fatal(err)
		}
		locs[i] = loc
		for _, y := range []int{2026, 2027, 2040} {
			near[i] = append(near[i], transitionsIn(loc, y)...)
		}
	}
	specs, queries := 4000, 12
	if testing.Short() {
		specs = 500
	}
	counts := map[string]int{}
	examples := map[string]string{}
	for range specs {
		spec := genCommonSpec(r)
		ours, err := batuta.ParseSchedule(spec)
		if err != nil {
			t.Fatalf("batuta rejects %q, which is in the common syntax: %v", spec, err)
		}
		theirs, err := parseRobfig(spec)
		if err != nil {
			t.Fatalf("robfig rejects %q, which is in the common syntax: %v", spec, err)
		}
		for q := range queries {
			zi := r.IntN(len(locs))
			var from time.Time
			switch {
			case q%3 == 0 && len(near[zi]) > 0: // close to a DST transition
				tr := near[zi][r.IntN(len(near[zi]))]
				from = tr.Add(time.Duration(r.Int64N(int64(72*time.Hour))) - 36*time.Hour)
			default: // anywhere from 1970 to 2100
				from = time.Unix(r.Int64N(4102444800), r.Int64N(1e9))
			}
			if r.IntN(2) == 0 {
				from = from.Truncate(time.Second)
			}
			from = from.In(locs[zi])
			a, b := ours.Next(from), theirs.Next(from)
			class, err := classify(evalLocation(spec, locs[zi]), from, a, b)
			if err != nil {
				t.Fatalf("spec %q from %s (%s): %v", spec, from, from.Location(), err)
			}
			counts[class]++
			if _, ok := examples[class]; !ok && class != agree {
				examples[class] = fmt.Sprintf("%q from %s: batuta %s, robfig %s", spec, from, a, b)
			}
		}
	}
	var classes []string
	for c := range counts {
		classes = append(classes, c)
	}
	sort.Strings(classes)
	for _, c := range classes {
		name := c
		if name == agree {
			name = "agree"
		}
		t.Logf("%-70s %6d  %s", name, counts[c], examples[c])
	}
}

// TestDifferentialKnownBugs pins one example of each class of disagreement,
// with robfig's exact (wrong) answer.
func TestDifferentialKnownBugs(t *testing.T) {
	t.Parallel()
	cases := []struct {
		spec, zone, from   string
		batuta, robfigNext string
		class              string
	}{
		// 02:30 does not exist on 2026-03-29 in Madrid: cron runs it right
		// after the gap; robfig skips the day.
		{"30 2 * * *", "Europe/Madrid", "2026-03-28T12:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", classDST},
		// 01:30 happens twice on 2026-11-01 in New York: cron runs it once;
		// robfig runs it again at the second occurrence.
		{"30 1 * * *", "America/New_York", "2026-11-01T01:40:00-04:00", "2026-11-02T01:30:00-05:00", "2026-11-01T01:30:00-05:00", classDST},
		// Lord Howe moves 30 minutes: robfig's hour stepping lands on :30.
		{"0 2 * * *", "Australia/Lord_Howe", "2026-10-03T12:00:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-05T02:00:00+11:00", classDST},
		// No February 29 between 2097 and 2104: robfig gives up after 5 years.
		{"0 0 29 2 *", "UTC", "2097-01-01T00:00:00Z", "2104-02-29T00:00:00Z", "", classHorizon},
	}
	for _, tc := range cases {
		t.Run(tc.spec+" "+tc.zone, func(t *testing.T) {
			t.Parallel()
			loc, err := time.LoadLocation(tc.zone)
			if err != nil {
				t.Fatal(err)
			}
			from, err := time.Parse(time.RFC3339, tc.from)
			if err != nil {
				t.Fatal(err)
			}
			from = from.In(loc)
			ours := batuta.MustParseSchedule(tc.spec)
			theirs, err := parseRobfig(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			a, b := ours.Next(from), theirs.Next(from)
			format := func(t time.Time) string {
				if t.IsZero() {
					return ""
				}
				return t.In(loc).Format(time.RFC3339)
			}
			if format(a) != tc.batuta || format(b) != tc.robfigNext {
				t.Fatalf("batuta %s (want %s), robfig %s (want %s)", format(a), tc.batuta, format(b), tc.robfigNext)
			}
			class, err := classify(loc, from, a, b)
			if err != nil || class != tc.class {
				t.Fatalf("classified %q, %v; want %q", class, err, tc.class)
			}
		})
	}
}

// FuzzDifferential compares the two parsers on arbitrary specs: when both
// accept a spec (outside "@every"), their Next must agree or differ in a
// classified way. Run it with:
//
//	go test ./cron -run '^$' -fuzz FuzzDifferential
func FuzzDifferential(f *testing.F) {
	for _, s := range []string{
		"* * * * *", "*/15 * * * *", "0 9 * * MON-FRI", "30 2 * * *", "0 0 29 2 *", "5 4 * * sun",
		"0 0 1,15 * 1", "0 0 ? * MON", "*/20 */15 * * * *", "1/10 * * * * *", "@daily", "@weekly",
		"CRON_TZ=Europe/Madrid 0 9 * * *", "TZ=America/New_York 30 1 * * *", "TZ=Australia/Lord_Howe 0 2 * * *",
		"0 0 */10 * MON", "0 12 1 jan,JUL *", "0 0 13 * FRI",
	} {
		f.Add(s, int64(1774749600), uint8(1))
	}
	locs := make([]*time.Location, len(diffZones))
	for i, z := range diffZones {
		locs[i], _ = time.LoadLocation(z)
	}
	f.Fuzz(func(t *testing.T, spec string, sec int64, zone uint8) {
		if strings.Contains(strings.ToLower(spec), "@every") {
			return
		}
		ours, err := batuta.ParseSchedule(spec)
		if err != nil {
			return
		}
		theirs, err := parseRobfig(spec)
		if err != nil {
			return
		}
		sec %= 4102444800 // 1970-2100 (and as far before 1970)
		loc := locs[int(zone)%len(locs)]
		from := time.Unix(sec, 0).In(loc)
		a, b := ours.Next(from), theirs.Next(from)
		if _, err := classify(evalLocation(spec, loc), from, a, b); err != nil {
			t.Fatalf("spec %q from %s: %v", spec, from, err)
		}
	})
}

var benchSpecs = []string{
	"* * * * *",
	"*/15 * * * *",
	"0 9 * * MON-FRI",
	"0 0 1 1 *",
	"0 0 13 * FRI",
	"0 0 29 2 *",
	"CRON_TZ=Europe/Madrid 30 2 * * *",
	"CRON_TZ=America/New_York 0 9 * * MON-FRI",
}

// BenchmarkNext times Next of batuta and robfig/cron on the same specs from
// the same 256 start times (spread over 2026-2030).
func BenchmarkNext(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	var starts [256]time.Time
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range starts {
		starts[i] = base.Add(time.Duration(r.Int64N(int64(4 * 365 * 24 * time.Hour))))
	}
	for _, spec := range benchSpecs {
		ours := batuta.MustParseSchedule(spec)
		theirs, err := parseRobfig(spec)
		if err != nil {
			b.Fatal(err)
		}
		for _, impl := range []struct {
			name string
			s    interface{ Next(time.Time) time.Time }
		}{{"batuta", ours}, {"robfig", theirs}} {
			// key=value names let benchstat put the two side by side:
			// benchstat -col /impl bench.txt
			b.Run("spec="+spec+"/impl="+impl.name, func(b *testing.B) {
				b.ReportAllocs()
				var sink time.Time
				for i := 0; b.Loop(); i++ {
					sink = impl.s.Next(starts[i&255])
				}
				_ = sink
			})
		}
	}
}
