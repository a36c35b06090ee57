package cronexpr

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// This file checks Next against a brute-force reference: random specs built
// together with an independent predicate on wall-clock times, and a Next that
// walks instants minute by minute, applying the documented daylight-saving
// rules literally.

type refSpec struct {
	spec               string
	min                [60]bool
	hour               [24]bool
	month              [13]bool
	domStar, dowStar   bool
	dom                [32]bool
	domLast, domLastWD bool
	domNear            []int
	dow                [7]bool
	dowNth             [][2]int // weekday, k
	dowLast            []int
	wild               bool // cronie's wildcard job: the minute or hour field starts with '*'
	hasSpecials        bool
}

func genList(r *rand.Rand, lo, hi int, set []bool, names []string) (string, bool) {
	switch r.IntN(6) {
	case 0, 1:
		for v := lo; v <= hi; v++ {
			set[v] = true
		}
		return "*", true
	case 2: // single
		v := lo + r.IntN(hi-lo+1)
		set[v] = true
		return valueTok(r, v, names), false
	case 3: // list
		n := 1 + r.IntN(4)
		var parts []string
		for range n {
			v := lo + r.IntN(hi-lo+1)
			set[v] = true
			parts = append(parts, valueTok(r, v, names))
		}
		return strings.Join(parts, ","), false
	case 4: // range
		a := lo + r.IntN(hi-lo+1)
		b := a + r.IntN(hi-a+1)
		for v := a; v <= b; v++ {
			set[v] = true
		}
		return valueTok(r, a, names) + "-" + valueTok(r, b, names), false
	default: // step
		step := 1 + r.IntN((hi-lo+1)/2+1)
		if r.IntN(2) == 0 {
			for v := lo; v <= hi; v += step {
				set[v] = true
			}
			return fmt.Sprintf("*/%d", step), step == 1
		}
		a := lo + r.IntN(hi-lo+1)
		b := a + r.IntN(hi-a+1)
		for v := a; v <= b; v += step {
			set[v] = true
		}
		return fmt.Sprintf("%s-%s/%d", valueTok(r, a, names), valueTok(r, b, names), step), false
	}
}

func valueTok(r *rand.Rand, v int, names []string) string {
	if v < len(names) && names[v] != "" && r.IntN(2) == 0 {
		if r.IntN(2) == 0 {
			return strings.ToLower(names[v])
		}
		return names[v]
	}
	return fmt.Sprint(v)
}

var (
	monthNames = []string{"", "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"}
	dowNames   = []string{"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"}
)

func genSpec(r *rand.Rand) *refSpec {
	s := &refSpec{}
	minTok, _ := genList(r, 0, 59, s.min[:], nil)
	hourTok, _ := genList(r, 0, 23, s.hour[:], nil)
	s.wild = minTok[0] == '*' || hourTok[0] == '*'
	// Day fields are mostly unrestricted so that specs fire often.
	domTok := "*"
	s.domStar = true
	if r.IntN(3) == 0 {
		var parts []string
		for range 1 + r.IntN(2) {
			switch r.IntN(5) {
			case 0:
				parts = append(parts, "L")
				s.domLast = true
				s.hasSpecials = true
			case 1:
				parts = append(parts, "LW")
				s.domLastWD = true
				s.hasSpecials = true
			case 2:
				n := 1 + r.IntN(31)
				parts = append(parts, fmt.Sprintf("%dW", n))
				s.domNear = append(s.domNear, n)
				s.hasSpecials = true
			default:
				tok, star := genList(r, 1, 31, s.dom[:], nil)
				if star {
					tok = "1-31"
				}
				parts = append(parts, tok)
			}
		}
		domTok = strings.Join(parts, ",")
		s.domStar = false
	}
	monthTok := "*"
	for m := 1; m <= 12; m++ {
		s.month[m] = true
	}
	if r.IntN(4) == 0 {
		s.month = [13]bool{}
		monthTok, _ = genList(r, 1, 12, s.month[:], monthNames)
	}
	dowTok := "*"
	s.dowStar = true
	if r.IntN(3) == 0 {
		var parts []string
		for range 1 + r.IntN(2) {
			switch r.IntN(4) {
			case 0:
				w, k := r.IntN(7), 1+r.IntN(5)
				parts = append(parts, fmt.Sprintf("%s#%d", valueTok(r, w, dowNames), k))
				s.dowNth = append(s.dowNth, [2]int{w, k})
				s.hasSpecials = true
			case 1:
				w := r.IntN(7)
				parts = append(parts, valueTok(r, w, dowNames)+"L")
				s.dowLast = append(s.dowLast, w)
				s.hasSpecials = true
			default:
				var set [8]bool
				tok, star := genList(r, 0, 7, set[:], dowNames)
				if star {
					tok = "0-6"
				}
				for w := range 8 {
					if set[w] {
						s.dow[w%7] = true
					}
				}
				parts = append(parts, tok)
			}
		}
		dowTok = strings.Join(parts, ",")
		s.dowStar = false
	}
	s.spec = strings.Join([]string{minTok, hourTok, domTok, monthTok, dowTok}, " ")
	return s
}

func daysIn(y int, m time.Month) int { return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day() }

func wd(y int, m time.Month, d int) time.Weekday {
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Weekday()
}

func (s *refSpec) dateMatches(y int, m time.Month, d int) bool {
	if !s.month[m] {
		return false
	}
	n := daysIn(y, m)
	domOK := s.domStar || s.dom[d]
	if s.domLast && d == n {
		domOK = true
	}
	if s.domLastWD {
		l := n
		for wd(y, m, l) == time.Saturday || wd(y, m, l) == time.Sunday {
			l--
		}
		domOK = domOK || d == l
	}
	for _, k := range s.domNear {
		if k > n {
			continue
		}
		target := k
		switch wd(y, m, k) {
		case time.Saturday:
			target = k - 1
			if k == 1 {
				target = 3
			}
		case time.Sunday:
			target = k + 1
			if k == n {
				target = k - 2
			}
		}
		domOK = domOK || d == target
	}
	w := int(wd(y, m, d))
	dowOK := s.dowStar || s.dow[w]
	for _, nk := range s.dowNth {
		dowOK = dowOK || (nk[0] == w && (d-1)/7+1 == nk[1])
	}
	for _, lw := range s.dowLast {
		dowOK = dowOK || (lw == w && d+7 > n)
	}
	switch {
	case s.domStar && s.dowStar:
		return true
	case s.domStar:
		return dowOK
	case s.dowStar:
		return domOK
	default:
		return domOK || dowOK
	}
}

// wallMatches tests a wall-clock time given as a time in UTC.
func (s *refSpec) wallMatches(w time.Time) bool {
	return w.Second() == 0 && s.min[w.Minute()] && s.hour[w.Hour()] && s.dateMatches(w.Year(), w.Month(), w.Day())
}

func wallOf(i time.Time, loc *time.Location) time.Time {
	l := i.In(loc)
	return time.Date(l.Year(), l.Month(), l.Day(), l.Hour(), l.Minute(), l.Second(), 0, time.UTC)
}

func offsetAt(i time.Time, loc *time.Location) time.Duration {
	_, off := i.In(loc).Zone()
	return time.Duration(off) * time.Second
}

// refNext is the reference: the first instant after t, walking whole minutes
// up to horizon, or zero. It applies cronie's rules literally: at each jump
// forward of less than 3 hours (5 minutes for wildcard jobs), the matching
// wall times of the gap fire right after it, the k-th one s seconds into the
// gap at the jump plus s+1 nanoseconds; a fixed-time job does not fire again
// at a wall time it already fired at up to 181 minutes earlier.
func (s *refSpec) refNext(t time.Time, loc *time.Location, horizon time.Duration) time.Time {
	i := t.Truncate(time.Minute)
	for end := t.Add(horizon); !i.After(end); i = i.Add(time.Minute) {
		off := offsetAt(i, loc)
		prevOff := offsetAt(i.Add(-time.Second), loc)
		w := wallOf(i, loc)
		match := s.wallMatches(w)
		if prevOff < off {
			shift := off - prevOff
			if shift < 5*time.Minute || !s.wild && shift < 3*time.Hour {
				if match && i.After(t) {
					return i
				}
				// i is a jump forward: wall times [i+prevOff, i+off) were skipped.
				g0 := i.UTC().Add(prevOff)
				for g := g0; g.Before(i.UTC().Add(off)); g = g.Add(time.Minute) {
					gw := time.Date(g.Year(), g.Month(), g.Day(), g.Hour(), g.Minute(), 0, 0, time.UTC)
					if at := i.Add(g.Sub(g0)/time.Second + 1); s.wallMatches(gw) && at.After(t) {
						return at
					}
				}
				continue
			}
		}
		if !match || !i.After(t) {
			continue
		}
		if s.wild {
			return i
		}
		repeated := false
		for k := 1; k <= 48 && !repeated; k++ {
			o := offsetAt(i.Add(-time.Duration(k)*time.Hour), loc)
			j := w.Add(-o) // the instant with wall time w under offset o
			if j.Before(i) && i.Sub(j) <= 181*time.Minute && offsetAt(j, loc) == o && wallOf(j, loc).Equal(w) {
				repeated = true
			}
		}
		if !repeated {
			return i
		}
	}
	return time.Time{}
}

// transitions returns the instants in [from, to) at which loc's offset changes.
func transitions(loc *time.Location, from, to time.Time) []time.Time {
	var out []time.Time
	for d := from; d.Before(to); d = d.Add(6 * time.Hour) {
		a, b := d, d.Add(6*time.Hour)
		if offsetAt(a, loc) == offsetAt(b, loc) {
			continue
		}
		for b.Sub(a) > time.Second {
			mid := a.Add(b.Sub(a) / 2).Truncate(time.Second)
			if offsetAt(mid, loc) == offsetAt(a, loc) {
				a = mid
			} else {
				b = mid
			}
		}
		out = append(out, b)
	}
	return out
}

func TestNextMatchesBruteForceAroundTransitions(t *testing.T) {
	t.Parallel()
	zones := []struct {
		name  string
		years []int
	}{
		{"Europe/Madrid", []int{2026, 2096, 2097}},
		{"America/New_York", []int{2026, 2027}},
		{"Australia/Lord_Howe", []int{2026, 2027}},
		{"America/Santiago", []int{2026}},    // transitions at midnight
		{"Pacific/Apia", []int{2011}},        // skipped a whole day
		{"America/St_Johns", []int{2026}},    // -3:30 / -2:30
		{"Asia/Kolkata", []int{2026}},        // no DST at all
		{"Antarctica/Troll", []int{2026}},    // a two-hour DST shift
		{"Europe/Dublin", []int{2026, 2040}}, // negative DST in the zone data
		{"Europe/London", []int{2026}},
	}
	queries := 300 // per zone; raise it to hunt for bugs
	if testing.Short() {
		queries = 100
	}
	for _, z := range zones {
		t.Run(z.name, func(t *testing.T) {
			t.Parallel()
			loc, err := time.LoadLocation(z.name)
			require.NoError(t, err)
			var trs []time.Time
			for _, y := range z.years {
				trs = append(trs, transitions(loc, time.Date(y, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(y+1, 1, 1, 0, 0, 0, 0, time.UTC))...)
			}
			if len(trs) == 0 {
				trs = []time.Time{time.Date(z.years[0], 6, 1, 0, 0, 0, 0, time.UTC)}
			}
			r := rand.New(rand.NewPCG(uint64(len(z.name)), 42))
			const horizon = 3 * 24 * time.Hour
			for q := range queries {
				s := genSpec(r)
				e, err := Parse(s.spec)
				require.NoError(t, err, s.spec)
				tr := trs[q%len(trs)]
				window := 60 * time.Hour
				if q%2 == 0 {
					window = 6 * time.Hour // close to the transition
				}
				from := tr.Add(time.Duration(r.Int64N(int64(window))) - window/2)
				switch q % 7 {
				case 1: // exactly at, or just before, the transition
					from = tr.Add(-time.Nanosecond)
				case 3:
					from = tr
				case 5:
					from = tr.Add(-time.Second)
				}
				if r.IntN(2) == 0 {
					from = from.Truncate(time.Minute)
				}
				from = from.In(loc)
				want := s.refNext(from, loc, horizon)
				got := e.Next(from)
				if want.IsZero() {
					require.True(t, got.IsZero() || got.After(from.Add(horizon)),
						"spec %q from %s: reference found nothing within %s, Next gave %s", s.spec, from, horizon, got)
					continue
				}
				require.True(t, want.Equal(got), "spec %q from %s (%s): want %s, got %s", s.spec, from, from.UTC(), want, got)
			}
		})
	}
}
