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

// Next returns the first activation strictly after t, in the spec's time
// zone if it named one and in t's location otherwise, or the zero time if
// there is none. Activations have whole-second precision (except "@every").
//
// Activations are the instants at which the wall clock of the location reads
// a matching time, with these rules where the UTC offset changes (daylight
// saving time, or any other change of offset):
//
//   - If the hour field covers all 24 hours (FollowsWallClockEveryHour), the
//     wall clock is followed as it is: a matching time skipped by a jump
//     forward does not fire, a matching time that occurs twice after a jump
//     back fires twice. For a shift of a whole number of hours this keeps
//     the elapsed-time rhythm of the schedule exactly.
//   - Otherwise (fixed hours), a matching time skipped by a jump forward
//     fires once, at the instant of the jump (all such times of one jump
//     coalesce into that one activation), and a matching time that occurs
//     twice fires only at its first occurrence.
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
	c := u + 1 // earliest acceptable instant
	// The wall-clock search is monotonic: a search from w in [lastW, lastNW]
	// finds lastNW again, which saves repeating it across zone periods.
	lastW, lastNW := int64(math.MaxInt64), int64(0)
	for iter := range maxPeriods {
		off, su, endU := period(loc, c)
		if iter == 0 && su == c && !e.hourFull {
			// c is the instant of an offset change: if the clock jumped
			// forward, times skipped by the jump fire at c. (Later
			// periods are entered through the check at the bottom.)
			if prev := offset(loc, c-1); prev < off {
				if nw, ok := e.nextWall(c + int64(prev)); ok && nw < c+int64(off) {
					return time.Unix(c, 0).In(loc)
				}
			}
		}
		w := c + int64(off)
		nw := lastNW
		if w < lastW || w > lastNW {
			var ok bool
			if nw, ok = e.nextWall(w); !ok {
				return time.Time{}
			}
			lastW, lastNW = w, nw
		}
		if i := nw - int64(off); i < endU {
			if !e.hourFull && su != math.MinInt64 && nw-su-int64(off) < maxShift {
				// A wall time repeated by a jump back at su fires only at
				// its first occurrence, in the previous zone period.
				if prev := offset(loc, su-1); prev > off && nw < su+int64(prev) {
					c = su + int64(prev-off)
					continue
				}
			}
			return time.Unix(i, 0).In(loc)
		}
		// The candidate lies beyond the end of this zone period.
		if next := offset(loc, endU); !e.hourFull && next > off && nw < endU+int64(next) {
			// Skipped by a jump forward: fire once, right after the gap.
			return time.Unix(endU, 0).In(loc)
		}
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
