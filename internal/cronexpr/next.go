package cronexpr

import (
	"math"
	"math/bits"
	"time"
)

// Times outside ±2^50 seconds (about ±35 million years) have no activation.
const maxAbsUnix = 1 << 50

// maxShift bounds a change of UTC offset, to skip a zone lookup when a
// candidate is far from the start of its zone period.
const maxShift = 48 * 3600

// maxPeriods bounds the zone periods one Next call walks through. A schedule
// that is not Never matches within one 400-year Gregorian cycle; zones change
// offset at most a few times a year.
const maxPeriods = 4000

// cronie's thresholds for offset changes (cron.c, the main loop's wake-up
// classification; man page cron(8), "Daylight Saving Time and other time
// changes"). cronie counts minutes: after a jump forward of s minutes its
// timeDiff is s+1, "small" up to 5, "medium" up to 180, and "large" beyond,
// a clock correction; after a jump back it is 1-s, "negative" down to -180.
const (
	// A jump forward shorter than this catches up every job, wildcard
	// or not (cronie's "small" case runs both kinds for each minute).
	smallJump = 5 * 60
	// A jump forward this long or longer is a correction: no job
	// catches up (cronie's "large" case).
	largeJump = 180 * 60
	// A jump back this long or shorter runs fixed-time jobs only once
	// (cronie's "negative" case); longer ones run them again.
	largeBack = 181 * 60
)

// catchesUp reports whether matching times skipped by a jump forward of
// shift seconds fire right after the jump.
func (e *Expr) catchesUp(shift int) bool {
	return shift < smallJump || !e.wild && shift < largeJump
}

// firesOnce reports whether a wall time repeated by a jump back of shift
// seconds fires only at its first occurrence.
func (e *Expr) firesOnce(shift int) bool { return !e.wild && shift <= largeBack }

// Next returns the first activation strictly after t, in the spec's time
// zone if it named one and in t's location otherwise, or the zero time if
// there is none. Activations have whole-second precision, except "@every"
// and the catch-up activations after a jump forward (below).
//
// Activations are the instants at which the wall clock of the location reads
// a matching time, with cronie's rules where the UTC offset changes
// (daylight saving time, or any other change of offset). They depend on
// whether the spec is a wildcard job (Wildcard: its minute or hour field
// starts with '*') or a fixed-time job (all others):
//
//   - Jump forward by less than 3 hours: every matching time of a
//     fixed-time job that the jump skips fires once, right after the jump.
//     The k-th skipped time, s seconds after the start of the gap, fires
//     s+1 nanoseconds after the instant of the jump, so that each has its
//     own instant, in wall-clock order, after a match at the instant of the
//     jump itself. Wildcard jobs follow the new wall clock and do not catch
//     up, except across jumps shorter than 5 minutes, where they catch up
//     too.
//   - Jump back by up to 181 minutes: a matching time of a fixed-time job
//     that occurs twice fires only at its first occurrence; wildcard jobs
//     fire at both.
//   - Larger jumps are corrections of the clock: every job follows the new
//     wall clock (skipped times do not fire, repeated ones fire twice).
//
// "@every d" ignores wall clocks: its activations are the instants that are
// a whole multiple of d after the Unix epoch (1970-01-01T00:00:00Z), as in
// Temporal's interval schedules, so every process (and every system anchored
// the same way) computes the same ticks.
func (e *Expr) Next(t time.Time) time.Time {
	if e.never {
		return time.Time{}
	}
	loc := e.loc
	if loc == nil {
		loc = t.Location()
	}
	if e.every > 0 {
		n := t.Add(e.every - sinceEpochMod(t, e.every))
		if !n.After(t) {
			return time.Time{}
		}
		return n.In(loc)
	}
	u := t.Unix()
	if u >= maxAbsUnix || u <= -maxAbsUnix {
		return time.Time{}
	}
	c := u + 1 // earliest acceptable whole second
	// The wall-clock search is monotonic: a search from w in [lastW, lastNW]
	// finds lastNW again, which saves repeating it across zone periods.
	lastW, lastNW := int64(math.MaxInt64), int64(0)
	next := func(w int64) (int64, bool) {
		if w >= lastW && w <= lastNW {
			return lastNW, true
		}
		nw, ok := e.nextWall(w)
		if ok {
			lastW, lastNW = w, nw
		}
		return nw, ok
	}
	for iter := range maxPeriods {
		off, su, endU := period(loc, c)
		if iter == 0 && su == u {
			// t lies within the second after an offset change: catch-up
			// activations of a jump forward may remain after t.
			if prev := offset(loc, u-1); prev < off && e.catchesUp(off-prev) {
				g0, g1 := u+int64(prev), u+int64(off)
				if from := g0 + int64(t.Nanosecond()); from < g1 {
					if gw, ok := e.nextWall(from); ok && gw < g1 {
						return time.Unix(u, 1+gw-g0).In(loc)
					}
				}
			}
		}
		w := c + int64(off)
		nw, ok := next(w)
		if !ok {
			return time.Time{}
		}
		if su == c || iter > 0 {
			// c may be the instant of an offset change (later periods
			// are entered at their start).
			if prev := offset(loc, c-1); prev < off && e.catchesUp(off-prev) {
				if nw == w { // a match at the instant of the jump comes first
					return time.Unix(c, 0).In(loc)
				}
				g0 := c + int64(prev)
				if gw, ok := e.nextWall(g0); ok && gw < w {
					return time.Unix(c, 1+gw-g0).In(loc)
				}
			}
		}
		if i := nw - int64(off); i < endU {
			if !e.wild && su != math.MinInt64 && nw-su-int64(off) < maxShift {
				// A wall time repeated by a jump back at su fires only at
				// its first occurrence, in the previous zone period.
				if prev := offset(loc, su-1); prev > off && nw < su+int64(prev) && e.firesOnce(prev-off) {
					c = su + int64(prev-off)
					continue
				}
			}
			return time.Unix(i, 0).In(loc)
		}
		// The candidate lies beyond the end of this zone period: go on
		// from its end (where a jump forward may catch up).
		c = endU
	}
	return time.Time{}
}

// sinceEpochMod returns the time elapsed since the last multiple of d
// counted from the Unix epoch, in [0, d): (t - epoch) mod d, computed in 128
// bits because t - epoch overflows a Duration beyond 292 years.
func sinceEpochMod(t time.Time, d time.Duration) time.Duration {
	sec := t.Unix() % int64(d) // |sec| < d, so sec*1e9 fits in 128 bits
	if sec < 0 {
		sec += int64(d)
	}
	hi, lo := bits.Mul64(uint64(sec), 1e9)
	lo, carry := bits.Add64(lo, uint64(t.Nanosecond()), 0)
	return time.Duration(bits.Rem64(hi+carry, lo, uint64(d)))
}

// offset returns the UTC offset of loc at the Unix time u.
func offset(loc *time.Location, u int64) int {
	_, off := time.Unix(u, 0).In(loc).Zone()
	return off
}

// period returns the UTC offset of loc at the Unix time c, the start of the
// zone period containing c (math.MinInt64 if unknown) and its end (the first
// instant after c at which the offset may differ; math.MaxInt64 if never).
//
// It trusts time.Time.ZoneBounds only as far as it can check it: beyond the
// last transition of its table, the time package computes zone periods from
// the TZ rule one year at a time and returns, on the last day of a leap year,
// an end that lies before c (Go's tzset assumes 365-day years). The end is
// then found by probing the offset one day ahead.
func period(loc *time.Location, c int64) (off int, start, end int64) {
	tc := time.Unix(c, 0).In(loc)
	_, off = tc.Zone()
	st, en := tc.ZoneBounds()
	start, end = math.MinInt64, math.MaxInt64
	if !st.IsZero() {
		if start = st.Unix(); start > c {
			start = math.MinInt64
		}
	}
	if !en.IsZero() {
		end = en.Unix()
	}
	if end <= c {
		lo, hi := c, c+86400
		if offset(loc, hi) == off {
			return off, start, hi
		}
		for hi-lo > 1 {
			mid := lo + (hi-lo)/2
			if offset(loc, mid) == off {
				lo = mid
			} else {
				hi = mid
			}
		}
		end = hi
	}
	return off, start, end
}

// nextWall returns the first matching wall-clock time at or after w, both
// as seconds since 1970-01-01T00:00:00 of the wall clock, or false if there
// is none within 401 years.
func (e *Expr) nextWall(w int64) (int64, bool) {
	days := floorDiv(w, 86400)
	sod := int(w - days*86400)
	y, m, d := civil(days)
	h, mi, s := sod/3600, sod/60%60, sod%60
	ylim := y + 401

	var (
		mask   uint32
		maskY  int64 = math.MinInt64
		maskM  int
		months = uint32(e.month)
	)
	for {
		if months&(1<<m) == 0 {
			if above := months >> (m + 1) << (m + 1); above != 0 {
				m = bits.TrailingZeros32(above)
			} else {
				y++
				m = bits.TrailingZeros32(months)
			}
			d, h, mi, s = 1, 0, 0, 0
			if y > ylim {
				return 0, false
			}
		}
		if y != maskY || m != maskM {
			mask, maskY, maskM = e.dayMask(y, m), y, m
		}
		dm := mask & (^uint32(0) << d)
		if dm == 0 {
			if m++; m > 12 {
				m, y = 1, y+1
				if y > ylim {
					return 0, false
				}
			}
			d, h, mi, s = 1, 0, 0, 0
			continue
		}
		if nd := bits.TrailingZeros32(dm); nd != d {
			d, h, mi, s = nd, 0, 0, 0
		}
		hm := e.hour & (^uint32(0) << h)
		if hm == 0 {
			d, h, mi, s = d+1, 0, 0, 0
			continue
		}
		if nh := bits.TrailingZeros32(hm); nh != h {
			h, mi, s = nh, 0, 0
		}
		mm := e.min & (^uint64(0) << mi)
		if mm == 0 {
			h, mi, s = h+1, 0, 0
			continue
		}
		if nmi := bits.TrailingZeros64(mm); nmi != mi {
			mi, s = nmi, 0
		}
		sm := e.sec & (^uint64(0) << s)
		if sm == 0 {
			mi, s = mi+1, 0
			continue
		}
		s = bits.TrailingZeros64(sm)
		return daysFromCivil(y, m, d)*86400 + int64(h*3600+mi*60+s), true
	}
}

// dayMask returns the matching days of month m of year y.
func (e *Expr) dayMask(y int64, m int) uint32 {
	i := m - 1
	if m == 2 && isLeap(y) {
		i = 12
	}
	return e.days[i][weekday(daysFromCivil(y, m, 1))]
}

func isLeap(y int64) bool { return y%4 == 0 && (y%100 != 0 || y%400 == 0) }

// weekday returns the weekday (0 = Sunday) of a day counted from 1970-01-01.
func weekday(days int64) int {
	w := (days + 4) % 7 // 1970-01-01 was a Thursday
	if w < 0 {
		w += 7
	}
	return int(w)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// daysFromCivil returns the days since 1970-01-01 of a proleptic Gregorian
// date (H. Hinnant's algorithm).
func daysFromCivil(y int64, m, d int) int64 {
	if m <= 2 {
		y--
	}
	era := floorDiv(y, 400)
	yoe := y - era*400
	mp := (m + 9) % 12 // March = 0
	doy := int64((153*mp+2)/5 + d - 1)
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// civil is the inverse of daysFromCivil.
func civil(days int64) (y int64, m, d int) {
	z := days + 719468
	era := floorDiv(z, 146097)
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	y = yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d = int(doy - (153*mp+2)/5 + 1)
	if mp < 10 {
		m = int(mp + 3)
	} else {
		m = int(mp - 9)
	}
	if m <= 2 {
		y++
	}
	return y, m, d
}
