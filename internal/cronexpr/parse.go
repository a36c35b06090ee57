// Package cronexpr parses cron expressions and computes their activations.
//
// It is the engine behind batuta.ParseSchedule; the user-facing contract
// (syntax, time zones, daylight-saving rules) is documented there and in
// docs/cron.md. The package has no dependencies beyond the standard library.
//
// An Expr is immutable after Parse and safe for concurrent use. Parsing
// precomputes bitsets for every field and a table of the matching days of
// each (month, weekday of the 1st, leap year) combination, so Next neither
// allocates nor calls time.Date.
package cronexpr

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// MaxSpecLen is the longest spec Parse accepts, in bytes.
const MaxSpecLen = 1024

// MinEvery is the shortest interval "@every" accepts.
const MinEvery = time.Millisecond

// Field names used in errors.
const (
	FieldSpec       = "spec"
	FieldTimeZone   = "time zone"
	FieldDescriptor = "descriptor"
	FieldEvery      = "@every"
	FieldSecond     = "second"
	FieldMinute     = "minute"
	FieldHour       = "hour"
	FieldDayOfMonth = "day-of-month"
	FieldMonth      = "month"
	FieldDayOfWeek  = "day-of-week"
)

// Error describes why a spec was rejected: the field, the offending token
// and the reason.
type Error struct {
	Field  string
	Token  string
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %q: %s", e.Field, e.Token, e.Reason)
}

func errf(field, token, format string, args ...any) *Error {
	return &Error{Field: field, Token: token, Reason: fmt.Sprintf(format, args...)}
}

// Expr is a parsed cron expression.
type Expr struct {
	spec string
	loc  *time.Location // nil: the location of the time given to Next

	every time.Duration // > 0 for "@every"

	sec, min uint64 // bits 0-59
	hour     uint32 // bits 0-23
	month    uint16 // bits 1-12

	// days[i][w] is the set of matching days (bits 1-31) of month i+1
	// (i == 12: February of a leap year) whose 1st falls on weekday w.
	days [13][7]uint32

	wild      bool // a "wildcard job" in cronie's sense: the minute or the hour field starts with '*'
	never     bool // no date ever matches (e.g. "0 0 30 2 *")
	ambiguous bool // a numeric weekday with L or # under Unix numbering
}

// String returns the spec the Expr was parsed from.
func (e *Expr) String() string { return e.spec }

// Location returns the time zone named by the spec, or nil if the spec named
// none (Next then works in the location of its argument).
func (e *Expr) Location() *time.Location { return e.loc }

// Every returns the interval of an "@every" spec, or 0.
func (e *Expr) Every() time.Duration { return e.every }

// Wildcard reports whether the spec is a "wildcard job" in cronie's sense:
// its minute or its hour field starts with '*' ("*", "*/15", "*/2"...).
// This selects the daylight-saving rule Next applies (see Next).
func (e *Expr) Wildcard() bool { return e.wild }

// AmbiguousWeekdays reports whether the day-of-week field, read with Unix
// numbering (0 = Sunday), uses a number with L or # ("6L", "6#3"): Quartz,
// where these forms come from, numbers weekdays from 1 = Sunday, so the same
// text means the day before there. Names ("FRIL", "FRI#3") are unambiguous.
func (e *Expr) AmbiguousWeekdays() bool { return e.ambiguous }

// Never reports whether the expression can never fire (it names only dates
// that do not exist, like February 30).
func (e *Expr) Never() bool { return e.never }

type bounds struct {
	field    string
	min, max int
	star     [2]int // range of "*" (day-of-week: 0-6, although 7 is accepted)
	names    map[string]int
}

var (
	secondBounds = bounds{field: FieldSecond, min: 0, max: 59, star: [2]int{0, 59}}
	minuteBounds = bounds{field: FieldMinute, min: 0, max: 59, star: [2]int{0, 59}}
	hourBounds   = bounds{field: FieldHour, min: 0, max: 23, star: [2]int{0, 23}}
	domBounds    = bounds{field: FieldDayOfMonth, min: 1, max: 31, star: [2]int{1, 31}}
	monthBounds  = bounds{field: FieldMonth, min: 1, max: 12, star: [2]int{1, 12}, names: map[string]int{
		"JAN": 1, "FEB": 2, "MAR": 3, "APR": 4, "MAY": 5, "JUN": 6,
		"JUL": 7, "AUG": 8, "SEP": 9, "OCT": 10, "NOV": 11, "DEC": 12,
	}}
	dowBounds = bounds{field: FieldDayOfWeek, min: 0, max: 7, star: [2]int{0, 6}, names: map[string]int{
		"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6,
	}}
	// Quartz numbers the days of the week from 1 = Sunday to 7 = Saturday.
	dowQuartzBounds = bounds{field: FieldDayOfWeek, min: 1, max: 7, star: [2]int{1, 7}, names: map[string]int{
		"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7,
	}}
)

// Options change how ParseWith reads a spec. The zero value is Parse's.
type Options struct {
	// QuartzWeekdays numbers the days of the week as Quartz does, 1
	// (Sunday) to 7 (Saturday), in every form of the day-of-week field
	// (values, ranges, steps, wL, w#k); 0 is then out of range. Names and
	// the descriptors (@weekly) are unaffected.
	QuartzWeekdays bool
}

// span is the number of distinct values of the field, the largest step.
func (b *bounds) span() int { return b.star[1] - b.star[0] + 1 }

var descriptors = map[string]string{
	"@yearly":   "0 0 0 1 1 *",
	"@annually": "0 0 0 1 1 *",
	"@monthly":  "0 0 0 1 * *",
	"@weekly":   "0 0 0 * * 0",
	"@daily":    "0 0 0 * * *",
	"@midnight": "0 0 0 * * *",
	"@hourly":   "0 0 * * * *",
}

// Parse parses a cron spec. See batuta.ParseSchedule for the syntax. Errors
// are *Error values.
func Parse(spec string) (*Expr, error) { return ParseWith(spec, Options{}) }

// ParseWith parses a cron spec with options.
func ParseWith(spec string, opts Options) (*Expr, error) {
	if len(spec) > MaxSpecLen {
		return nil, errf(FieldSpec, spec[:32]+"...", "longer than %d bytes", MaxSpecLen)
	}
	body := strings.TrimSpace(spec)
	if body == "" {
		return nil, errf(FieldSpec, spec, "empty spec")
	}
	e := &Expr{spec: spec}

	// Time zone prefix.
	for _, prefix := range [...]string{"CRON_TZ=", "TZ="} {
		if !strings.HasPrefix(body, prefix) {
			continue
		}
		rest := body[len(prefix):]
		i := strings.IndexAny(rest, " \t\n\r\v\f")
		if i < 0 {
			if rest == "" {
				return nil, errf(FieldTimeZone, body, "empty time zone name")
			}
			return nil, errf(FieldSpec, spec, "nothing after the time zone")
		}
		name := rest[:i]
		if name == "" {
			return nil, errf(FieldTimeZone, prefix, "empty time zone name")
		}
		loc, err := loadLocation(name)
		if err != nil {
			return nil, errf(FieldTimeZone, name, "unknown time zone")
		}
		e.loc = loc
		body = strings.TrimSpace(rest[i:])
		break
	}

	if strings.HasPrefix(body, "@") {
		if err := e.parseDescriptor(body); err != nil {
			return nil, err
		}
		return e, nil
	}
	if err := e.parseFields(body, opts.QuartzWeekdays); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *Expr) parseDescriptor(body string) error {
	fields := strings.Fields(body)
	name := strings.ToLower(fields[0])
	if name == "@every" {
		if len(fields) != 2 {
			return errf(FieldEvery, body, "want \"@every <duration>\", e.g. \"@every 1h30m\"")
		}
		d, err := time.ParseDuration(fields[1])
		if err != nil {
			return errf(FieldEvery, fields[1], "not a duration (e.g. 90s, 1h30m)")
		}
		if d < MinEvery {
			return errf(FieldEvery, fields[1], "interval must be at least %s", MinEvery)
		}
		e.every = d
		return nil
	}
	expansion, ok := descriptors[name]
	if !ok {
		return errf(FieldDescriptor, fields[0], "unknown descriptor (want @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>)")
	}
	if len(fields) != 1 {
		return errf(FieldDescriptor, body, "a descriptor takes no fields")
	}
	return e.parseFields(expansion, false)
}

func (e *Expr) parseFields(body string, quartz bool) error {
	fields := strings.Fields(body)
	switch len(fields) {
	case 5:
		fields = append([]string{"0"}, fields...)
	case 6:
	default:
		return errf(FieldSpec, body, "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with leading seconds), got %d", len(fields))
	}
	var err error
	if e.sec, _, err = parseField(fields[0], &secondBounds); err != nil {
		return err
	}
	if e.min, _, err = parseField(fields[1], &minuteBounds); err != nil {
		return err
	}
	var h uint64
	if h, _, err = parseField(fields[2], &hourBounds); err != nil {
		return err
	}
	e.hour = uint32(h)
	// cronie (entry.c) sets MIN_STAR or HR_STAR when the field's first
	// character is '*'; cron.c treats such entries as wildcard jobs.
	e.wild = fields[1][0] == '*' || fields[2][0] == '*'
	dom, err := parseDOM(fields[3])
	if err != nil {
		return err
	}
	var m uint64
	if m, _, err = parseField(fields[4], &monthBounds); err != nil {
		return err
	}
	e.month = uint16(m)
	dow, err := parseDOW(fields[5], quartz)
	if err != nil {
		return err
	}
	e.ambiguous = !quartz && dow.numericSpecial
	e.buildDays(dom, dow)
	return nil
}

// domSpec is the parsed day-of-month field.
type domSpec struct {
	star    bool   // unrestricted ("*", "?")
	plain   uint32 // bits 1-31
	lastOff uint32 // bit n: "L-n" (n days before the last day; "L" is n=0)
	lastWD  uint32 // bit n: "L-nW", the weekday nearest L-n ("LW" is n=0)
	nearWD  uint32 // bit n: "nW", the weekday nearest day n
}

// dowSpec is the parsed day-of-week field.
type dowSpec struct {
	star  bool
	plain uint8    // bits 0-6
	nth   [7]uint8 // nth[w] bit k: "w#k", the k-th weekday w of the month
	last  uint8    // bit w: "wL", the last weekday w of the month

	numericSpecial bool // a number (not a name) with L or #
}

func parseDOM(field string) (domSpec, error) {
	var s domSpec
	items, err := splitList(field, FieldDayOfMonth)
	if err != nil {
		return s, err
	}
	var rest []string
	for _, item := range items {
		up := strings.ToUpper(item)
		switch {
		case up == "L":
			s.lastOff |= 1
		case up == "LW":
			s.lastWD |= 1
		case strings.HasPrefix(up, "L-"):
			num, w := up[2:], strings.HasSuffix(up, "W")
			if w {
				num = num[:len(num)-1]
			}
			n, ok := atoi(num)
			if !ok || n > 30 {
				return s, errf(FieldDayOfMonth, item, "want L-n or L-nW with n between 0 and 30")
			}
			if w {
				s.lastWD |= 1 << n
			} else {
				s.lastOff |= 1 << n
			}
		case len(up) > 1 && strings.HasSuffix(up, "W"):
			n, ok := atoi(up[:len(up)-1])
			if !ok || n < 1 || n > 31 {
				return s, errf(FieldDayOfMonth, item, "want nW with n between 1 and 31")
			}
			s.nearWD |= 1 << n
		default:
			rest = append(rest, item)
		}
	}
	if len(rest) > 0 {
		bits, star, err := parseItems(rest, field, &domBounds)
		if err != nil {
			return s, err
		}
		s.plain, s.star = uint32(bits), star
	}
	return s, nil
}

func parseDOW(field string, quartz bool) (dowSpec, error) {
	var s dowSpec
	items, err := splitList(field, FieldDayOfWeek)
	if err != nil {
		return s, err
	}
	b, numbers := &dowBounds, "0-7"
	if quartz {
		b, numbers = &dowQuartzBounds, "1-7, 1 = Sunday"
	}
	var rest []string
	for _, item := range items {
		up := strings.ToUpper(item)
		if i := strings.IndexByte(up, '#'); i >= 0 {
			w, ok := dowValue(up[:i], quartz)
			k, okk := atoi(up[i+1:])
			if !ok || !okk || k < 1 || k > 5 {
				return s, errf(FieldDayOfWeek, item, "want w#k with w a weekday (%s, or SUN-SAT) and k between 1 and 5", numbers)
			}
			s.nth[w] |= 1 << k
			s.numericSpecial = s.numericSpecial || isDigit(up[0])
			continue
		}
		if up == "L" {
			return s, errf(FieldDayOfWeek, item, "L alone is ambiguous in day-of-week; write wL (e.g. FRIL) for the last weekday w of the month")
		}
		if len(up) > 1 && strings.HasSuffix(up, "L") {
			w, ok := dowValue(up[:len(up)-1], quartz)
			if !ok {
				return s, errf(FieldDayOfWeek, item, "want wL with w a weekday (%s, or SUN-SAT)", numbers)
			}
			s.last |= 1 << w
			s.numericSpecial = s.numericSpecial || isDigit(up[0])
			continue
		}
		rest = append(rest, item)
	}
	if len(rest) > 0 {
		bits, star, err := parseItems(rest, field, b)
		if err != nil {
			return s, err
		}
		if quartz {
			bits >>= 1 // 1-7 (Sunday first) to 0-6
		} else if bits&(1<<7) != 0 { // 7 is Sunday
			bits = bits&^(1<<7) | 1
		}
		s.plain, s.star = uint8(bits), star
	}
	return s, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// dowValue returns the weekday (0 = Sunday) named by tok, a name or a number
// (0-7 with Unix numbering, 1-7 with Quartz's).
func dowValue(tok string, quartz bool) (int, bool) {
	if v, ok := dowBounds.names[tok]; ok {
		return v, true
	}
	n, ok := atoi(tok)
	switch {
	case !ok || n > 7:
		return 0, false
	case quartz:
		return n - 1, n >= 1
	}
	return n % 7, true
}

func splitList(field, name string) ([]string, error) {
	items := strings.Split(field, ",")
	for _, item := range items {
		if item == "" {
			return nil, errf(name, field, "empty item in list")
		}
	}
	return items, nil
}

// parseField parses a plain field (no day specials).
func parseField(field string, b *bounds) (uint64, bool, error) {
	items, err := splitList(field, b.field)
	if err != nil {
		return 0, false, err
	}
	return parseItems(items, field, b)
}

// parseItems parses list items of the form *, ?, v, v-v, each with an
// optional /step. It reports whether some item was an unrestricted "*" or
// "?" (with no step, or step 1), the rule for the day fields.
func parseItems(items []string, field string, b *bounds) (uint64, bool, error) {
	var set uint64
	star := false
	for _, item := range items {
		rng, stepTok, hasStep := strings.Cut(item, "/")
		step := 1
		if hasStep {
			n, ok := atoi(stepTok)
			if !ok {
				return 0, false, errf(b.field, item, "step %q is not a number", stepTok)
			}
			if n < 1 || n > b.span() {
				return 0, false, errf(b.field, item, "step must be between 1 and %d", b.span())
			}
			step = n
		}
		var lo, hi int
		switch {
		case rng == "*":
			lo, hi = b.star[0], b.star[1]
			if step == 1 {
				star = true
			}
		case rng == "?":
			if b.field != FieldDayOfMonth && b.field != FieldDayOfWeek {
				return 0, false, errf(b.field, item, "? is only allowed in day-of-month and day-of-week")
			}
			if hasStep {
				return 0, false, errf(b.field, item, "? takes no step")
			}
			lo, hi = b.star[0], b.star[1]
			star = true
		default:
			loTok, hiTok, isRange := strings.Cut(rng, "-")
			var err error
			if lo, err = value(loTok, item, b); err != nil {
				return 0, false, err
			}
			hi = lo
			if isRange {
				if hi, err = value(hiTok, item, b); err != nil {
					return 0, false, err
				}
				if lo > hi {
					return 0, false, errf(b.field, item, "range start %d is after its end %d", lo, hi)
				}
			} else if hasStep {
				// "n/step" means "n-max/step", as in Quartz and robfig/cron.
				hi = b.star[1]
				if lo > hi {
					hi = lo
				}
			}
		}
		for v := lo; v <= hi; v += step {
			set |= 1 << v
		}
	}
	return set, star, nil
}

func value(tok, item string, b *bounds) (int, error) {
	if tok == "" {
		return 0, errf(b.field, item, "missing value")
	}
	if b.names != nil && len(tok) == 3 {
		if v, ok := b.names[strings.ToUpper(tok)]; ok {
			return v, nil
		}
	}
	n, ok := atoi(tok)
	if !ok {
		if b.names != nil {
			return 0, errf(b.field, item, "%q is neither a number nor a name", tok)
		}
		return 0, errf(b.field, item, "%q is not a number", tok)
	}
	if n < b.min || n > b.max {
		return 0, errf(b.field, item, "%d is out of range %d-%d", n, b.min, b.max)
	}
	return n, nil
}

// atoi parses a short unsigned decimal number (digits only, no sign).
func atoi(s string) (int, bool) {
	if s == "" || len(s) > 4 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

var monthDays = [13]int{0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}

// buildDays fills the day table and the never flag.
func (e *Expr) buildDays(dom domSpec, dow dowSpec) {
	e.never = true
	for i := 0; i < 13; i++ {
		var month, length int
		if i == 12 {
			month, length = 2, 29
		} else {
			month, length = i+1, monthDays[i+1]
		}
		for w1 := 0; w1 < 7; w1++ {
			d := daysOf(dom, dow, length, w1)
			e.days[i][w1] = d
			if d != 0 && e.month&(1<<month) != 0 {
				e.never = false
			}
		}
	}
}

// daysOf returns the matching days (bits 1..length) of a month of the given
// length whose 1st is weekday w1 (0 = Sunday).
func daysOf(dom domSpec, dow dowSpec, length, w1 int) uint32 {
	valid := uint32(1)<<(length+1) - 2
	weekday := func(d int) int { return (w1 + d - 1) % 7 }

	var dm uint32
	if dom.star {
		dm = valid
	} else {
		dm = dom.plain & valid
		for n := 0; n <= 30; n++ {
			if dom.lastOff&(1<<n) != 0 && length-n >= 1 {
				dm |= 1 << (length - n)
			}
		}
		// The weekday (Monday to Friday) nearest day n, never crossing
		// into another month, as in Quartz.
		nearest := func(n int) int {
			switch weekday(n) {
			case 6: // Saturday: Friday before, or Monday after the 1st
				if n == 1 {
					return 3
				}
				return n - 1
			case 0: // Sunday: Monday after, or Friday before the last day
				if n == length {
					return n - 2
				}
				return n + 1
			}
			return n
		}
		for n := 0; n <= 30; n++ {
			if dom.lastWD&(1<<n) != 0 && length-n >= 1 {
				dm |= 1 << nearest(length-n)
			}
		}
		for n := 1; n <= 31; n++ {
			if dom.nearWD&(1<<n) != 0 && n <= length {
				dm |= 1 << nearest(n)
			}
		}
	}

	var wm uint32
	if dow.star {
		wm = valid
	} else {
		for d := 1; d <= length; d++ {
			w := weekday(d)
			if dow.plain&(1<<w) != 0 {
				wm |= 1 << d
			}
			if dow.nth[w]&(1<<((d-1)/7+1)) != 0 {
				wm |= 1 << d
			}
			if dow.last&(1<<w) != 0 && d+7 > length {
				wm |= 1 << d
			}
		}
	}

	switch {
	case dom.star && dow.star:
		return valid
	case dom.star:
		return wm
	case dow.star:
		return dm
	default: // both restricted: either matching is enough
		return dm | wm
	}
}

// Location cache: time.LoadLocation reads the zoneinfo database each time.
var locCache sync.Map // string -> *time.Location

func loadLocation(name string) (*time.Location, error) {
	if l, ok := locCache.Load(name); ok {
		return l.(*time.Location), nil
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, err
	}
	locCache.Store(name, loc)
	return loc, nil
}
