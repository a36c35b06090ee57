package batuta

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the DST tables must not depend on the machine's zoneinfo

	"github.com/stretchr/testify/require"
)

type nextCase struct {
	spec string
	zone string // location of from (and of the results, unless the spec names one)
	from string // RFC 3339
	want []string
}

// checkNext runs Next repeatedly from tc.from and compares the results,
// formatted in RFC 3339 with their offset, with tc.want ("" for the zero time).
func checkNext(t *testing.T, tc nextCase) {
	t.Helper()
	s, err := ParseSchedule(tc.spec)
	require.NoError(t, err)
	require.Equal(t, tc.spec, fmt.Sprint(s))
	loc := time.UTC
	if tc.zone != "" {
		loc = mustLoad(t, tc.zone)
	}
	from, err := time.Parse(time.RFC3339Nano, tc.from)
	require.NoError(t, err)
	cur := from.In(loc)
	var got []string
	for range tc.want {
		cur = s.Next(cur)
		if cur.IsZero() {
			got = append(got, "")
			break
		}
		got = append(got, cur.Format(time.RFC3339Nano))
	}
	require.Equal(t, tc.want, got, "%s from %s", tc.spec, tc.from)
}

func TestParseScheduleSyntax(t *testing.T) {
	t.Parallel()
	const mon = "2026-03-02T10:00:30Z" // a Monday
	cases := []nextCase{
		{spec: "* * * * *", from: mon, want: []string{"2026-03-02T10:01:00Z", "2026-03-02T10:02:00Z"}},
		{spec: "*/15 * * * *", from: mon, want: []string{"2026-03-02T10:15:00Z", "2026-03-02T10:30:00Z"}},
		{spec: "1-30/5 * * * *", from: mon, want: []string{"2026-03-02T10:01:00Z", "2026-03-02T10:06:00Z", "2026-03-02T10:11:00Z"}},
		{spec: "50/5 * * * *", from: mon, want: []string{"2026-03-02T10:50:00Z", "2026-03-02T10:55:00Z", "2026-03-02T11:50:00Z"}},
		{spec: "0,30 9-10 * * *", from: mon, want: []string{"2026-03-02T10:30:00Z", "2026-03-03T09:00:00Z", "2026-03-03T09:30:00Z"}},
		{spec: "*/20 */15 * * * *", from: mon, want: []string{"2026-03-02T10:00:40Z", "2026-03-02T10:15:00Z", "2026-03-02T10:15:20Z", "2026-03-02T10:15:40Z", "2026-03-02T10:30:00Z"}},
		{spec: "1/20 * * * * *", from: mon, want: []string{"2026-03-02T10:00:41Z", "2026-03-02T10:01:01Z"}},
		{spec: "0 9 * * MON-FRI", from: mon, want: []string{"2026-03-03T09:00:00Z", "2026-03-04T09:00:00Z", "2026-03-05T09:00:00Z", "2026-03-06T09:00:00Z", "2026-03-09T09:00:00Z"}},
		{spec: "0 9 * * mon-Fri/2", from: mon, want: []string{"2026-03-04T09:00:00Z", "2026-03-06T09:00:00Z", "2026-03-09T09:00:00Z"}},
		{spec: "0 0 * * 7", from: mon, want: []string{"2026-03-08T00:00:00Z", "2026-03-15T00:00:00Z"}},
		{spec: "0 0 * * 0", from: mon, want: []string{"2026-03-08T00:00:00Z", "2026-03-15T00:00:00Z"}},
		{spec: "0 0 * * 5-7", from: mon, want: []string{"2026-03-06T00:00:00Z", "2026-03-07T00:00:00Z", "2026-03-08T00:00:00Z", "2026-03-13T00:00:00Z"}},
		{spec: "0 12 1 JAN,jul *", from: mon, want: []string{"2026-07-01T12:00:00Z", "2027-01-01T12:00:00Z"}},
		{spec: "0 12 1 feb-APR/2 *", from: mon, want: []string{"2026-04-01T12:00:00Z", "2027-02-01T12:00:00Z"}},
		// Both day fields restricted: either matches.
		{spec: "0 0 13 * FRI", from: mon, want: []string{"2026-03-06T00:00:00Z", "2026-03-13T00:00:00Z", "2026-03-20T00:00:00Z"}},
		{spec: "0 0 1,15 * 1", from: mon, want: []string{"2026-03-09T00:00:00Z", "2026-03-15T00:00:00Z", "2026-03-16T00:00:00Z"}},
		{spec: "0 0 */10 * MON", from: mon, want: []string{"2026-03-09T00:00:00Z", "2026-03-11T00:00:00Z", "2026-03-16T00:00:00Z"}},
		// One restricted, the other "*" or "?": only the restricted one counts.
		{spec: "0 0 */10 * *", from: mon, want: []string{"2026-03-11T00:00:00Z", "2026-03-21T00:00:00Z", "2026-03-31T00:00:00Z", "2026-04-01T00:00:00Z"}},
		{spec: "0 0 ? * MON", from: mon, want: []string{"2026-03-09T00:00:00Z", "2026-03-16T00:00:00Z"}},
		{spec: "0 0 13 * ?", from: mon, want: []string{"2026-03-13T00:00:00Z", "2026-04-13T00:00:00Z"}},
		// Descriptors.
		{spec: "@hourly", from: mon, want: []string{"2026-03-02T11:00:00Z", "2026-03-02T12:00:00Z"}},
		{spec: "@daily", from: mon, want: []string{"2026-03-03T00:00:00Z"}},
		{spec: "@midnight", from: mon, want: []string{"2026-03-03T00:00:00Z"}},
		{spec: "@weekly", from: mon, want: []string{"2026-03-08T00:00:00Z", "2026-03-15T00:00:00Z"}},
		{spec: "@monthly", from: mon, want: []string{"2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z"}},
		{spec: "@yearly", from: mon, want: []string{"2027-01-01T00:00:00Z"}},
		{spec: "@annually", from: mon, want: []string{"2027-01-01T00:00:00Z"}},
		{spec: "@every 90s", from: mon, want: []string{"2026-03-02T10:01:30Z", "2026-03-02T10:03:00Z"}},
		{spec: "@every 1h30m", from: mon, want: []string{"2026-03-02T10:30:00Z", "2026-03-02T12:00:00Z"}},
		// "@every" is anchored on the Unix epoch (as Temporal's intervals):
		// intervals that do not divide a day show the difference from an
		// anchor at year 1 (which gave 11:00 and 10:04 here).
		{spec: "@every 7h", from: mon, want: []string{"2026-03-02T16:00:00Z", "2026-03-02T23:00:00Z"}},
		{spec: "@every 13m", from: mon, want: []string{"2026-03-02T10:11:00Z", "2026-03-02T10:24:00Z"}},
		{spec: "@every 7h", from: "1970-01-01T00:00:00Z", want: []string{"1970-01-01T07:00:00Z"}},
		{spec: "@every 7h", from: "1969-12-31T20:00:00Z", want: []string{"1970-01-01T00:00:00Z"}},
		{spec: "@every 1500ms", from: "1969-12-31T23:59:59.2Z", want: []string{"1970-01-01T00:00:00Z", "1970-01-01T00:00:01.5Z"}},
		{spec: "@every 8760h", from: "2400-06-01T00:00:00Z", want: []string{"2400-09-18T00:00:00Z"}},
		// Time zones: results in the spec's zone.
		{spec: "CRON_TZ=Europe/Madrid 0 9 * * *", from: mon, want: []string{"2026-03-03T09:00:00+01:00"}},
		{spec: "TZ=America/New_York 0 9 * * *", from: mon, want: []string{"2026-03-02T09:00:00-05:00"}},
		{spec: "  TZ=America/New_York \t 0  9 * * *  ", from: mon, want: []string{"2026-03-02T09:00:00-05:00"}},
		{spec: "0 9 * * *", zone: "Asia/Kolkata", from: mon, want: []string{"2026-03-03T09:00:00+05:30"}},
		// Quartz extensions.
		{spec: "0 12 15W * *", from: mon, want: []string{"2026-03-16T12:00:00Z", "2026-04-15T12:00:00Z"}},
		{spec: "0 12 1W * *", from: "2026-07-02T00:00:00Z", want: []string{"2026-08-03T12:00:00Z", "2026-09-01T12:00:00Z"}},
		{spec: "0 12 31W * *", from: "2026-05-01T00:00:00Z", want: []string{"2026-05-29T12:00:00Z", "2026-07-31T12:00:00Z"}},
		{spec: "0 12 LW * *", from: "2026-02-01T00:00:00Z", want: []string{"2026-02-27T12:00:00Z", "2026-03-31T12:00:00Z"}},
		// Quartz's L-nW: the weekday nearest to n days before the last day,
		// never crossing into another month (LW is L-0W).
		{spec: "0 12 L-1W * *", from: "2026-04-15T00:00:00Z", want: []string{"2026-04-29T12:00:00Z", "2026-05-29T12:00:00Z", "2026-06-29T12:00:00Z", "2026-07-30T12:00:00Z", "2026-08-31T12:00:00Z"}},
		{spec: "0 12 L-1W,L-1 * *", from: "2026-05-01T00:00:00Z", want: []string{"2026-05-29T12:00:00Z", "2026-05-30T12:00:00Z", "2026-06-29T12:00:00Z", "2026-07-30T12:00:00Z"}},
		{spec: "0 12 l-2w * *", from: "2026-11-01T00:00:00Z", want: []string{"2026-11-27T12:00:00Z", "2026-12-29T12:00:00Z"}},
		{spec: "0 12 L-2W * *", from: "2026-03-01T00:00:00Z", want: []string{"2026-03-30T12:00:00Z"}},
		{spec: "0 12 L-30W * *", from: "2026-07-15T00:00:00Z", want: []string{"2026-08-03T12:00:00Z", "2026-10-01T12:00:00Z"}},
		{spec: "0 12 L-0W * *", from: "2026-05-01T00:00:00Z", want: []string{"2026-05-29T12:00:00Z", "2026-06-30T12:00:00Z"}},
		{spec: "0 12 LW,L-1W,15 * *", from: "2026-05-16T00:00:00Z", want: []string{"2026-05-29T12:00:00Z", "2026-06-15T12:00:00Z", "2026-06-29T12:00:00Z", "2026-06-30T12:00:00Z"}},
		{spec: "0 12 L * *", from: mon, want: []string{"2026-03-31T12:00:00Z", "2026-04-30T12:00:00Z"}},
		{spec: "0 12 L-2 * *", from: mon, want: []string{"2026-03-29T12:00:00Z", "2026-04-28T12:00:00Z"}},
		{spec: "0 12 1,L * *", from: mon, want: []string{"2026-03-31T12:00:00Z", "2026-04-01T12:00:00Z"}},
		{spec: "0 12 * * 5L", from: mon, want: []string{"2026-03-27T12:00:00Z", "2026-04-24T12:00:00Z"}},
		{spec: "0 12 * * MON#2", from: mon, want: []string{"2026-03-09T12:00:00Z", "2026-04-13T12:00:00Z"}},
		{spec: "0 12 * * fri#5", from: mon, want: []string{"2026-05-29T12:00:00Z", "2026-07-31T12:00:00Z"}},
		// Strictly after, to the nanosecond.
		{spec: "* * * * * *", from: "2026-03-02T10:00:00Z", want: []string{"2026-03-02T10:00:01Z"}},
		{spec: "* * * * * *", from: "2026-03-02T10:00:00.999999999Z", want: []string{"2026-03-02T10:00:01Z"}},
	}
	for _, tc := range cases {
		t.Run(tc.spec, func(t *testing.T) {
			t.Parallel()
			checkNext(t, tc)
		})
	}
}

func TestScheduleCalendarEdges(t *testing.T) {
	t.Parallel()
	cases := []nextCase{
		// Leap days.
		{spec: "0 0 29 2 *", from: "2026-03-02T00:00:00Z", want: []string{"2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"}},
		{spec: "0 0 29 2 *", from: "2096-03-01T00:00:00Z", want: []string{"2104-02-29T00:00:00Z"}}, // 2100 is not a leap year
		{spec: "0 0 29 2 *", from: "2399-03-01T00:00:00Z", want: []string{"2400-02-29T00:00:00Z"}}, // 2400 is
		{spec: "0 0 * 2 *", from: "2028-02-27T12:00:00Z", want: []string{"2028-02-28T00:00:00Z", "2028-02-29T00:00:00Z", "2029-02-01T00:00:00Z"}},
		// L in February of common and leap years.
		{spec: "0 0 L 2 *", from: "2027-01-01T00:00:00Z", want: []string{"2027-02-28T00:00:00Z", "2028-02-29T00:00:00Z", "2029-02-28T00:00:00Z"}},
		{spec: "0 0 L 2 *", from: "2100-01-01T00:00:00Z", want: []string{"2100-02-28T00:00:00Z"}},
		{spec: "0 0 L-1 2 *", from: "2028-01-01T00:00:00Z", want: []string{"2028-02-28T00:00:00Z", "2029-02-27T00:00:00Z"}},
		// Dates that never exist never fire.
		{spec: "0 0 30 2 *", from: "2026-03-02T00:00:00Z", want: []string{""}},
		{spec: "0 0 31 2,4,6,9,11 *", from: "2026-03-02T00:00:00Z", want: []string{""}},
		{spec: "0 0 30,31 FEB *", from: "2028-01-01T00:00:00Z", want: []string{""}},
		{spec: "0 0 31 * *", from: "2026-03-02T00:00:00Z", want: []string{"2026-03-31T00:00:00Z", "2026-05-31T00:00:00Z", "2026-07-31T00:00:00Z"}},
		// A 5th Monday in February needs a leap year whose Feb 1 is a Monday.
		{spec: "0 0 * 2 MON#5", from: "2026-03-02T00:00:00Z", want: []string{"2044-02-29T00:00:00Z"}},
		// Year ends and far years.
		{spec: "59 23 31 12 *", from: "2026-12-31T23:59:00Z", want: []string{"2027-12-31T23:59:00Z"}},
		{spec: "0 0 1 1 *", from: "9998-06-01T00:00:00Z", want: []string{"9999-01-01T00:00:00Z", "10000-01-01T00:00:00Z"}},
	}
	for _, tc := range cases {
		t.Run(tc.spec+" from "+tc.from, func(t *testing.T) {
			t.Parallel()
			if strings.HasPrefix(tc.want[0], "10000") || strings.HasPrefix(tc.want[len(tc.want)-1], "10000") {
				// RFC 3339 cannot format year 10000; compare the year instead.
				s := MustParseSchedule(tc.spec)
				from, _ := time.Parse(time.RFC3339, tc.from)
				n := s.Next(s.Next(from))
				require.Equal(t, 10000, n.Year())
				return
			}
			checkNext(t, tc)
		})
	}
}

// TestScheduleDST checks cronie's rules (cron.c, the wake-up cases of the
// main loop; entry.c, MIN_STAR and HR_STAR): a fixed-time job runs each
// matching time skipped by a jump forward right after the jump (the k-th
// one, s seconds into the gap, at the jump + s+1 ns), and a repeated time
// once; a wildcard job (minute or hour field starting with '*') follows the
// new wall clock: no catch-up, and both copies of a repeated time.
func TestScheduleDST(t *testing.T) {
	t.Parallel()
	cases := []nextCase{
		// Europe/Madrid 2026: 02:00 CET -> 03:00 CEST on March 29; 03:00 CEST -> 02:00 CET on October 25.
		{spec: "30 2 * * *", zone: "Europe/Madrid", from: "2026-03-28T12:00:00+01:00", want: []string{"2026-03-29T03:00:00.000001801+02:00", "2026-03-30T02:30:00+02:00"}},
		{spec: "0 2 * * *", zone: "Europe/Madrid", from: "2026-03-28T12:00:00+01:00", want: []string{"2026-03-29T03:00:00.000000001+02:00", "2026-03-30T02:00:00+02:00"}},
		// Several skipped matches: one run each, right after the gap.
		{spec: "0,30 2 * * *", zone: "Europe/Madrid", from: "2026-03-28T12:00:00+01:00", want: []string{"2026-03-29T03:00:00.000000001+02:00", "2026-03-29T03:00:00.000001801+02:00", "2026-03-30T02:00:00+02:00"}},
		{spec: "0-59/30 2 * * *", zone: "Europe/Madrid", from: "2026-03-28T12:00:00+01:00", want: []string{"2026-03-29T03:00:00.000000001+02:00", "2026-03-29T03:00:00.000001801+02:00", "2026-03-30T02:00:00+02:00"}},
		{spec: "*/20 30 2 * * *", zone: "Europe/Madrid", from: "2026-03-28T12:00:00+01:00", want: []string{"2026-03-29T03:00:00.000001801+02:00", "2026-03-29T03:00:00.000001821+02:00", "2026-03-29T03:00:00.000001841+02:00", "2026-03-30T02:30:00+02:00"}},
		// A match at the jump itself, then the skipped one.
		{spec: "0 2,3 * * *", zone: "Europe/Madrid", from: "2026-03-28T12:00:00+01:00", want: []string{"2026-03-29T03:00:00+02:00", "2026-03-29T03:00:00.000000001+02:00", "2026-03-30T02:00:00+02:00"}},
		{spec: "0 0-23 * * *", zone: "Europe/Madrid", from: "2026-03-29T01:30:00+01:00", want: []string{"2026-03-29T03:00:00+02:00", "2026-03-29T03:00:00.000000001+02:00", "2026-03-29T04:00:00+02:00"}},
		// Started between the catch-up ticks, or on one.
		{spec: "0,30 2 * * *", zone: "Europe/Madrid", from: "2026-03-29T03:00:00+02:00", want: []string{"2026-03-29T03:00:00.000000001+02:00"}},
		{spec: "0,30 2 * * *", zone: "Europe/Madrid", from: "2026-03-29T03:00:00.000000001+02:00", want: []string{"2026-03-29T03:00:00.000001801+02:00", "2026-03-30T02:00:00+02:00"}},
		{spec: "0,30 2 * * *", zone: "Europe/Madrid", from: "2026-03-29T03:00:00.0000009+02:00", want: []string{"2026-03-29T03:00:00.000001801+02:00"}},
		{spec: "0,30 2 * * *", zone: "Europe/Madrid", from: "2026-03-29T03:00:00.5+02:00", want: []string{"2026-03-30T02:00:00+02:00"}},
		// Wildcard jobs (cronie's MIN_STAR or HR_STAR: the field starts with '*') are not caught up.
		{spec: "0 */2 * * *", zone: "Europe/Madrid", from: "2026-03-29T00:30:00+01:00", want: []string{"2026-03-29T04:00:00+02:00", "2026-03-29T06:00:00+02:00"}},
		{spec: "*/30 2 * * *", zone: "Europe/Madrid", from: "2026-03-28T12:00:00+01:00", want: []string{"2026-03-30T02:00:00+02:00", "2026-03-30T02:30:00+02:00"}},
		{spec: "*/30 * * * *", zone: "Europe/Madrid", from: "2026-03-29T01:00:00+01:00", want: []string{"2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"}},
		{spec: "0 9 * * *", zone: "Europe/Madrid", from: "2026-03-28T12:00:00+01:00", want: []string{"2026-03-29T09:00:00+02:00"}},
		// Fall back: a fixed-time job runs once, a wildcard job in both copies.
		{spec: "30 2 * * *", zone: "Europe/Madrid", from: "2026-10-24T12:00:00+02:00", want: []string{"2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"}},
		{spec: "30 2 * * *", zone: "Europe/Madrid", from: "2026-10-25T02:10:00+01:00", want: []string{"2026-10-26T02:30:00+01:00"}},
		{spec: "0 0-23 * * *", zone: "Europe/Madrid", from: "2026-10-25T01:30:00+02:00", want: []string{"2026-10-25T02:00:00+02:00", "2026-10-25T03:00:00+01:00"}},
		{spec: "0 * * * *", zone: "Europe/Madrid", from: "2026-10-25T01:30:00+02:00", want: []string{"2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"}},
		{spec: "*/20 * * * *", zone: "Europe/Madrid", from: "2026-10-25T02:30:00+02:00", want: []string{"2026-10-25T02:40:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T02:20:00+01:00"}},
		{spec: "*/30 2 * * *", zone: "Europe/Madrid", from: "2026-10-25T01:30:00+02:00", want: []string{"2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T02:30:00+01:00", "2026-10-26T02:00:00+01:00"}},
		{spec: "@every 1h", zone: "Europe/Madrid", from: "2026-03-29T00:30:00+01:00", want: []string{"2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00"}},
		{spec: "CRON_TZ=Europe/Madrid 30 2 * * *", zone: "America/New_York", from: "2026-03-28T12:00:00Z", want: []string{"2026-03-29T03:00:00.000001801+02:00"}},
		// America/New_York 2026: 02:00 EST -> 03:00 EDT on March 8; 02:00 EDT -> 01:00 EST on November 1.
		{spec: "30 2 * * *", zone: "America/New_York", from: "2026-03-07T12:00:00-05:00", want: []string{"2026-03-08T03:00:00.000001801-04:00", "2026-03-09T02:30:00-04:00"}},
		{spec: "0,15,30,45 2 * * *", zone: "America/New_York", from: "2026-03-07T12:00:00-05:00", want: []string{"2026-03-08T03:00:00.000000001-04:00", "2026-03-08T03:00:00.000000901-04:00", "2026-03-08T03:00:00.000001801-04:00", "2026-03-08T03:00:00.000002701-04:00", "2026-03-09T02:00:00-04:00"}},
		{spec: "0 9 * * *", zone: "America/New_York", from: "2026-03-07T10:00:00-05:00", want: []string{"2026-03-08T09:00:00-04:00"}},
		{spec: "30 1 * * *", zone: "America/New_York", from: "2026-10-31T12:00:00-04:00", want: []string{"2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"}},
		{spec: "30 1 * * *", zone: "America/New_York", from: "2026-11-01T01:10:00-05:00", want: []string{"2026-11-02T01:30:00-05:00"}},
		{spec: "*/30 1 * * *", zone: "America/New_York", from: "2026-10-31T12:00:00-04:00", want: []string{"2026-11-01T01:00:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T01:30:00-05:00", "2026-11-02T01:00:00-05:00"}},
		{spec: "15 * * * *", zone: "America/New_York", from: "2026-11-01T00:30:00-04:00", want: []string{"2026-11-01T01:15:00-04:00", "2026-11-01T01:15:00-05:00", "2026-11-01T02:15:00-05:00"}},
		{spec: "*/30 * * * *", zone: "America/New_York", from: "2026-03-08T01:00:00-05:00", want: []string{"2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00"}},
		// Europe/London 2026: 01:00 GMT -> 02:00 BST on March 29; 02:00 BST -> 01:00 GMT on October 25.
		{spec: "30 1 * * *", zone: "Europe/London", from: "2026-03-28T12:00:00Z", want: []string{"2026-03-29T02:00:00.000001801+01:00", "2026-03-30T01:30:00+01:00"}},
		{spec: "0,30 1 * * *", zone: "Europe/London", from: "2026-03-28T12:00:00Z", want: []string{"2026-03-29T02:00:00.000000001+01:00", "2026-03-29T02:00:00.000001801+01:00", "2026-03-30T01:00:00+01:00"}},
		{spec: "30 1 * * *", zone: "Europe/London", from: "2026-10-24T12:00:00+01:00", want: []string{"2026-10-25T01:30:00+01:00", "2026-10-26T01:30:00Z"}},
		{spec: "30 * * * *", zone: "Europe/London", from: "2026-10-25T00:45:00+01:00", want: []string{"2026-10-25T01:30:00+01:00", "2026-10-25T01:30:00Z", "2026-10-25T02:30:00Z"}},
		// Australia/Lord_Howe, a 30-minute shift: 02:00 -> 02:30 (+11:00) on October 4 2026;
		// 02:00 (+11:00) -> 01:30 (+10:30) on April 5 2026.
		{spec: "0 2 * * *", zone: "Australia/Lord_Howe", from: "2026-10-03T12:00:00+10:30", want: []string{"2026-10-04T02:30:00.000000001+11:00", "2026-10-05T02:00:00+11:00"}},
		{spec: "15 2 * * *", zone: "Australia/Lord_Howe", from: "2026-10-03T12:00:00+10:30", want: []string{"2026-10-04T02:30:00.000000901+11:00", "2026-10-05T02:15:00+11:00"}},
		{spec: "0,15,30 2 * * *", zone: "Australia/Lord_Howe", from: "2026-10-03T12:00:00+10:30", want: []string{"2026-10-04T02:30:00+11:00", "2026-10-04T02:30:00.000000001+11:00", "2026-10-04T02:30:00.000000901+11:00", "2026-10-05T02:00:00+11:00"}},
		{spec: "45 2 * * *", zone: "Australia/Lord_Howe", from: "2026-10-03T12:00:00+10:30", want: []string{"2026-10-04T02:45:00+11:00"}},
		{spec: "*/15 2 * * *", zone: "Australia/Lord_Howe", from: "2026-10-04T01:50:00+10:30", want: []string{"2026-10-04T02:30:00+11:00", "2026-10-04T02:45:00+11:00", "2026-10-05T02:00:00+11:00"}},
		{spec: "45 1 * * *", zone: "Australia/Lord_Howe", from: "2026-04-04T12:00:00+11:00", want: []string{"2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"}},
		{spec: "*/15 1 * * *", zone: "Australia/Lord_Howe", from: "2026-04-05T01:20:00+11:00", want: []string{"2026-04-05T01:30:00+11:00", "2026-04-05T01:45:00+11:00", "2026-04-05T01:30:00+10:30", "2026-04-05T01:45:00+10:30", "2026-04-06T01:00:00+10:30"}},
		{spec: "*/15 * * * *", zone: "Australia/Lord_Howe", from: "2026-10-04T01:40:00+10:30", want: []string{"2026-10-04T01:45:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-04T02:45:00+11:00"}},
		{spec: "*/15 * * * *", zone: "Australia/Lord_Howe", from: "2026-04-05T01:40:00+11:00", want: []string{"2026-04-05T01:45:00+11:00", "2026-04-05T01:30:00+10:30", "2026-04-05T01:45:00+10:30", "2026-04-05T02:00:00+10:30"}},
		{spec: "0 * * * *", zone: "Australia/Lord_Howe", from: "2026-10-04T00:30:00+10:30", want: []string{"2026-10-04T01:00:00+10:30", "2026-10-04T03:00:00+11:00"}},
		{spec: "0 * * * *", zone: "Australia/Lord_Howe", from: "2026-04-05T00:30:00+11:00", want: []string{"2026-04-05T01:00:00+11:00", "2026-04-05T02:00:00+10:30"}},
		// Antarctica/Troll, a two-hour shift (01:00 +00 -> 03:00 +02 on March 29 2026): still caught up.
		{spec: "30 1,2 * * *", zone: "Antarctica/Troll", from: "2026-03-28T12:00:00Z", want: []string{"2026-03-29T03:00:00.000001801+02:00", "2026-03-29T03:00:00.000005401+02:00", "2026-03-30T01:30:00+02:00"}},
		// Pacific/Apia skipped December 30 2011 (+24 h): a jump of 3 hours or
		// more is a clock correction, nothing is caught up.
		{spec: "0 12 * * *", zone: "Pacific/Apia", from: "2011-12-29T20:00:00-10:00", want: []string{"2011-12-31T12:00:00+14:00"}},
		// Europe/Amsterdam moved from +01:19:32 to +01:20 (summer time) on
		// July 1 1937, at 00:00 local: a 28-second jump. Under 5 minutes
		// (cronie's "small" case) wildcard jobs catch up too.
		{spec: "0 * * * *", zone: "Europe/Amsterdam", from: "1937-06-30T22:00:00Z", want: []string{"1937-07-01T00:00:28.000000001+01:20", "1937-07-01T01:00:00+01:20"}},
		{spec: "0 0 * * *", zone: "Europe/Amsterdam", from: "1937-06-30T22:00:00Z", want: []string{"1937-07-01T00:00:28.000000001+01:20", "1937-07-02T00:00:00+01:20"}},
		{spec: "*/10 * * * * *", zone: "Europe/Amsterdam", from: "1937-06-30T22:40:15Z", want: []string{"1937-06-30T23:59:50+01:19", "1937-07-01T00:00:28.000000001+01:20", "1937-07-01T00:00:28.000000011+01:20", "1937-07-01T00:00:28.000000021+01:20", "1937-07-01T00:00:30+01:20"}},
		// Beyond the zone's transition table (rule-based years), on a leap year's last day.
		{spec: "0 0 * * *", zone: "Europe/Madrid", from: "2096-12-30T12:00:00+01:00", want: []string{"2096-12-31T00:00:00+01:00", "2097-01-01T00:00:00+01:00"}},
		{spec: "30 2 * * *", zone: "Europe/Madrid", from: "2096-03-24T12:00:00+01:00", want: []string{"2096-03-25T03:00:00.000001801+02:00"}},
	}
	for _, tc := range cases {
		t.Run(tc.zone+" "+tc.spec+" from "+tc.from, func(t *testing.T) {
			t.Parallel()
			checkNext(t, tc)
		})
	}
}

// TestScheduleWeekdayNumbering: numeric weekdays with L and # keep the Unix
// meaning (0 = Sunday) by default; ScheduleOptions.QuartzWeekdays reads the
// whole day-of-week field with Quartz's numbers (1 = Sunday).
func TestScheduleWeekdayNumbering(t *testing.T) {
	t.Parallel()
	const from = "2026-03-01T00:00:00Z" // March 2026: Fridays 6, 13, 20, 27; Saturdays 7, 14, 21, 28
	unix := []nextCase{
		{spec: "0 12 * * 6L", from: from, want: []string{"2026-03-28T12:00:00Z"}}, // last Saturday
		{spec: "0 12 * * 6#3", from: from, want: []string{"2026-03-21T12:00:00Z"}},
		{spec: "0 12 * * 5L", from: from, want: []string{"2026-03-27T12:00:00Z"}}, // last Friday
		{spec: "0 12 * * FRIL", from: from, want: []string{"2026-03-27T12:00:00Z"}},
		{spec: "0 12 * * 7#1", from: from, want: []string{"2026-03-01T12:00:00Z"}},
	}
	for _, tc := range unix {
		checkNext(t, tc)
	}
	quartz := []struct {
		spec string
		want []string
	}{
		{"0 12 ? * 6L", []string{"2026-03-27T12:00:00Z", "2026-04-24T12:00:00Z"}}, // last Friday
		{"0 12 ? * 6#3", []string{"2026-03-20T12:00:00Z", "2026-04-17T12:00:00Z"}},
		{"0 12 ? * FRIL", []string{"2026-03-27T12:00:00Z"}},
		{"0 12 ? * 1", []string{"2026-03-01T12:00:00Z", "2026-03-08T12:00:00Z"}}, // Sunday
		{"0 12 ? * 7", []string{"2026-03-07T12:00:00Z"}},                         // Saturday
		{"0 12 ? * 2-6", []string{"2026-03-02T12:00:00Z", "2026-03-03T12:00:00Z", "2026-03-04T12:00:00Z", "2026-03-05T12:00:00Z", "2026-03-06T12:00:00Z", "2026-03-09T12:00:00Z"}},
		{"0 12 ? * */3", []string{"2026-03-01T12:00:00Z", "2026-03-04T12:00:00Z", "2026-03-07T12:00:00Z", "2026-03-08T12:00:00Z"}}, // 1,4,7: SUN, WED, SAT
		{"0 12 ? * 6/1", []string{"2026-03-06T12:00:00Z", "2026-03-07T12:00:00Z", "2026-03-13T12:00:00Z"}},                         // FRI-SAT
		{"0 12 ? * MON#1,7L", []string{"2026-03-02T12:00:00Z", "2026-03-28T12:00:00Z", "2026-04-06T12:00:00Z"}},
		{"@weekly", []string{"2026-03-08T00:00:00Z"}},
	}
	for _, tc := range quartz {
		s, err := ParseScheduleWith(tc.spec, ScheduleOptions{QuartzWeekdays: true})
		require.NoError(t, err, tc.spec)
		cur, err := time.Parse(time.RFC3339, from)
		require.NoError(t, err)
		var got []string
		for range tc.want {
			cur = s.Next(cur)
			got = append(got, cur.Format(time.RFC3339))
		}
		require.Equal(t, tc.want, got, tc.spec)
	}
	for _, spec := range []string{"0 12 ? * 0", "0 12 ? * 0L", "0 12 ? * 0#2", "0 12 ? * 8", "0 12 ? * 0-3"} {
		_, err := ParseScheduleWith(spec, ScheduleOptions{QuartzWeekdays: true})
		var se *ScheduleError
		require.ErrorAs(t, err, &se, spec)
		require.Equal(t, "day-of-week", se.Field, spec)
	}
}

func TestParseScheduleRejects(t *testing.T) {
	t.Parallel()
	cases := []struct {
		spec, field, token string
	}{
		{"61 * * * *", "minute", "61"},
		{"* * *", "spec", "* * *"},
		{"*/0 * * * *", "minute", "*/0"},
		{"5-1 * * * *", "minute", "5-1"},
		{"CRON_TZ=Mars/Olympus_Mons * * * * *", "time zone", "Mars/Olympus_Mons"},
		{"CRON_TZ=../../etc/passwd * * * * *", "time zone", "../../etc/passwd"},
		{"TZ= * * * * *", "time zone", "TZ="},
		{"TZ=Europe/Madrid", "spec", "TZ=Europe/Madrid"},
		{"", "spec", ""},
		{"   ", "spec", "   "},
		{"\x00\xff\xfe", "spec", "\x00\xff\xfe"},
		{"\xff * * * *", "minute", "\xff"},
		{"* * * * * * *", "spec", "* * * * * * *"},
		{"60 * * * * *", "second", "60"},
		{"* 24 * * *", "hour", "24"},
		{"* * 0 * *", "day-of-month", "0"},
		{"* * 32 * *", "day-of-month", "32"},
		{"* * * 0 *", "month", "0"},
		{"* * * 13 *", "month", "13"},
		{"* * * FOO *", "month", "FOO"},
		{"* * * FEB-JAN *", "month", "FEB-JAN"},
		{"* * * * 8", "day-of-week", "8"},
		{"* * * * MONDAY", "day-of-week", "MONDAY"},
		{"* * * * SAT-MON", "day-of-week", "SAT-MON"},
		{"* * * * L", "day-of-week", "L"},
		{"* * * * MON#6", "day-of-week", "MON#6"},
		{"* * * * MON#0", "day-of-week", "MON#0"},
		{"* * 32W * *", "day-of-month", "32W"},
		{"* * L-31 * *", "day-of-month", "L-31"},
		{"* * L-31W * *", "day-of-month", "L-31W"},
		{"* * L-W * *", "day-of-month", "L-W"},
		{"* * L-1WW * *", "day-of-month", "L-1WW"},
		{"1,,2 * * * *", "minute", "1,,2"},
		{"1, * * * *", "minute", "1,"},
		{"1- * * * *", "minute", "1-"},
		{"-1 * * * *", "minute", "-1"},
		{"+1 * * * *", "minute", "+1"},
		{"1.5 * * * *", "minute", "1.5"},
		{"1-2-3 * * * *", "minute", "1-2-3"},
		{"*/ * * * *", "minute", "*/"},
		{"*/61 * * * *", "minute", "*/61"},
		{"*/-1 * * * *", "minute", "*/-1"},
		{"? * * * *", "minute", "?"},
		{"* * ?/2 * *", "day-of-month", "?/2"},
		{"@every", "@every", "@every"},
		{"@every 0s", "@every", "0s"},
		{"@every -5m", "@every", "-5m"},
		{"@every 500us", "@every", "500us"},
		{"@every banana", "@every", "banana"},
		{"@every 1h 2h", "@every", "@every 1h 2h"},
		{"@fortnightly", "descriptor", "@fortnightly"},
		{"@daily 5", "descriptor", "@daily 5"},
	}
	for _, tc := range cases {
		t.Run(tc.spec, func(t *testing.T) {
			t.Parallel()
			s, err := ParseSchedule(tc.spec)
			require.Nil(t, s)
			require.ErrorIs(t, err, ErrInvalidSchedule)
			var se *ScheduleError
			require.True(t, errors.As(err, &se), "%T", err)
			require.Equal(t, tc.spec, se.Spec)
			require.Equal(t, tc.field, se.Field)
			require.Equal(t, tc.token, se.Token)
			require.NotEmpty(t, se.Reason)
			require.True(t, strings.HasPrefix(err.Error(), "batuta: invalid schedule "), err.Error())
			require.Contains(t, err.Error(), fmt.Sprintf("%s %q", tc.field, tc.token))
		})
	}

	long := strings.Repeat("1,", 600) + "1 * * * *"
	_, err := ParseSchedule(long)
	var se *ScheduleError
	require.ErrorAs(t, err, &se)
	require.Equal(t, "spec", se.Field)
	require.Contains(t, se.Reason, "longer than 1024 bytes")

	require.Panics(t, func() { MustParseSchedule("61 * * * *") })
}

func TestScheduleLocationAndConcurrency(t *testing.T) {
	t.Parallel()
	s := MustParseSchedule("0 9 * * *")
	tokyo := mustLoad(t, "Asia/Tokyo")
	from := time.Date(2026, 3, 2, 10, 0, 0, 0, tokyo)
	n := s.Next(from)
	require.Equal(t, tokyo, n.Location())
	require.Equal(t, "2026-03-03T09:00:00+09:00", n.Format(time.RFC3339))

	// Next is safe for concurrent use (run with -race).
	done := make(chan time.Time)
	for range 8 {
		go func() { done <- s.Next(from) }()
	}
	for range 8 {
		require.True(t, n.Equal(<-done))
	}
}

func TestScheduleNextDoesNotAllocate(t *testing.T) {
	s := MustParseSchedule("CRON_TZ=Europe/Madrid 30 2 * * MON-FRI")
	from := time.Date(2026, 3, 27, 12, 0, 0, 0, time.UTC)
	allocs := testing.AllocsPerRun(100, func() { from = s.Next(from) })
	require.Zero(t, allocs)
}
