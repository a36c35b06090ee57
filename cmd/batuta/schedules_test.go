package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSchedulesNextSpringForwardFixedTime(t *testing.T) {
	// docs/cron.md: Europe/Madrid and Paris, 29 Mar 2026, 02:00 CET -> 03:00
	// CEST: "30 2 * * *" fires at 03:00:00.000001801 CEST.
	r := cli(t, nil, "schedules", "next", "30 2 * * *", "--tz", "Europe/Paris", "--from", "2026-03-27T00:00:00Z", "-n", "4")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "Zone: Europe/Paris (from --tz)\n")
	require.Contains(t, r.stdout, "Kind: fixed-time: ")
	rows := tableRows(r.stdout[strings.Index(r.stdout, "FIRE TIME"):strings.Index(r.stdout, "Daylight")])
	require.Equal(t, []string{"FIRE TIME (Europe/Paris)", "UTC", "NOTE"}, rows[0])
	require.Equal(t, []string{"Fri 2026-03-27 02:30:00 CET", "2026-03-27T01:30:00Z"}, rows[1])
	require.Equal(t, []string{"Sat 2026-03-28 02:30:00 CET", "2026-03-28T01:30:00Z"}, rows[2])
	require.Equal(t, []string{"Sun 2026-03-29 03:00:00.000001801 CEST", "2026-03-29T01:00:00.000001801Z",
		"DST gap: 02:30:00 does not exist on this day; fired right after the jump"}, rows[3])
	require.Equal(t, []string{"Mon 2026-03-30 02:30:00 CEST", "2026-03-30T00:30:00Z"}, rows[4])
	require.Contains(t, r.stdout, "Sun 2026-03-29 03:00 CEST, +1h: 02:00:00 to 02:59:59 do not exist (clocks go from 02:00 CET to 03:00 CEST)\n"+
		"    02:30:00 is skipped: fires once right after the jump, at 03:00:00.000001801 CEST (2026-03-29T01:00:00.000001801Z UTC)\n")
	// The autumn transition, within the coming year, is explained too.
	require.Contains(t, r.stdout, "Sun 2026-10-25 02:00 CET, -1h: 02:00:00 to 02:59:59 happen twice (clocks go from 03:00 CEST back to 02:00 CET)\n"+
		"    02:30:00 fires once, at the first 02:30:00 (CEST)\n")
}

func TestSchedulesNextFallBackWildcard(t *testing.T) {
	// docs/cron.md: America/New_York, 1 Nov 2026: "*/30 1 * * *" fires at
	// 01:00 and 01:30 EDT, then 01:00 and 01:30 EST.
	r := cli(t, nil, "schedules", "next", "CRON_TZ=America/New_York */30 1 * * *", "--from", "2026-11-01T04:00:00Z", "-n", "4", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	var rep scheduleReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	require.Equal(t, "America/New_York", rep.Zone)
	require.Equal(t, "spec", rep.ZoneFrom)
	require.Equal(t, "wildcard", rep.Kind)
	var utc, notes []string
	for _, f := range rep.Fires {
		utc, notes = append(utc, f.UTC), append(notes, f.Note)
	}
	require.Equal(t, []string{"2026-11-01T05:00:00Z", "2026-11-01T05:30:00Z", "2026-11-01T06:00:00Z", "2026-11-01T06:30:00Z"}, utc)
	require.Equal(t, []string{
		"DST overlap: the first of two 01:00:00", "DST overlap: the first of two 01:30:00",
		"DST overlap: the second of two 01:00:00", "DST overlap: the second of two 01:30:00",
	}, notes)
	require.Equal(t, "overlap", rep.Transitions[0].Kind)
	require.Equal(t, "-1h", rep.Transitions[0].Shift)
	require.Equal(t, []string{"01:00:00 fires twice: 01:00 EDT and 01:00 EST", "01:30:00 fires twice: 01:30 EDT and 01:30 EST"}, rep.Transitions[0].Effects)
	// Spring 2027: nothing matches 02:xx at hour 1.
	require.Equal(t, "gap", rep.Transitions[1].Kind)
	require.Equal(t, []string{"the spec matches no time in this range: unaffected"}, rep.Transitions[1].Effects)
}

func TestSchedulesNextWildcardGapAndHalfHourZone(t *testing.T) {
	// A wildcard spec does not catch up skipped times.
	r := cli(t, nil, "schedules", "next", "CRON_TZ=Europe/Madrid */30 2 * * *", "--from", "2026-03-28T12:00:00Z", "-n", "1", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	var rep scheduleReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	require.Equal(t, "2026-03-30T00:00:00Z", rep.Fires[0].UTC, "02:00 CEST on the 30th: nothing on the 29th")
	require.Equal(t, []string{
		"02:00:00 is skipped and does not fire (the schedule follows the new wall clock)",
		"02:30:00 is skipped and does not fire (the schedule follows the new wall clock)",
	}, rep.Transitions[0].Effects)

	// Lord Howe's 30-minute jump: 02:00 and 02:15 fire just after 02:30.
	r = cli(t, nil, "schedules", "next", "CRON_TZ=Australia/Lord_Howe 0,15,30 2 * * *", "--from", "2026-10-03T00:00:00Z", "-n", "3", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	rep = scheduleReport{}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	require.Equal(t, "+30m", rep.Transitions[0].Shift)
	var utc []string
	for _, f := range rep.Fires {
		utc = append(utc, f.UTC)
	}
	require.Equal(t, []string{"2026-10-03T15:30:00Z", "2026-10-03T15:30:00.000000001Z", "2026-10-03T15:30:00.000000901Z"}, utc)
}

func TestSchedulesNextOtherSpecs(t *testing.T) {
	r := cli(t, nil, "schedules", "next", "@every 90m", "--from", "2026-03-01T00:00:00Z", "-n", "2")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "Kind: every: @every counts elapsed time")
	require.NotContains(t, r.stdout, "Daylight")

	r = cli(t, nil, "schedules", "next", "0 0 30 2 *", "--tz", "UTC")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "it never fires")
	require.Contains(t, r.stdout, "no fire time")

	r = cli(t, nil, "schedules", "next", "0 12 ? * 6L", "--tz", "UTC", "--from", "2026-03-01T00:00:00Z", "-n", "1")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "Warning: a weekday number is used with L or #")
	require.Contains(t, r.stdout, "Sat 2026-03-28 12:00:00 UTC")
	require.Contains(t, r.stdout, "No UTC offset change in UTC in the coming year.")
	r = cli(t, nil, "schedules", "next", "0 12 ? * 6L", "--quartz", "--tz", "UTC", "--from", "2026-03-01T00:00:00Z", "-n", "1")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "Fri 2026-03-27 12:00:00 UTC")

	r = cli(t, nil, "schedules", "next", "CRON_TZ=Asia/Tokyo 0 9 * * *", "--tz", "Europe/Paris", "-n", "1")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "--tz Europe/Paris is ignored")

	// Bad input: usage errors that name the problem.
	r = cli(t, nil, "schedules", "next", "61 * * * *")
	require.Equal(t, exitUsage, r.code)
	require.Contains(t, r.stderr, `batuta: invalid schedule "61 * * * *": minute "61": 61 is out of range 0-59`)
	require.NotContains(t, r.stderr, "batuta: batuta:")
	r = cli(t, nil, "schedules", "next", "0 * * * *", "--tz", "Mars/Olympus")
	require.Equal(t, exitUsage, r.code)
	require.Contains(t, r.stderr, `--tz "Mars/Olympus": unknown time zone`)
	r = cli(t, nil, "schedules", "next", "0 * * * *", "--from", "tomorrow")
	require.Equal(t, exitUsage, r.code)
	r = cli(t, nil, "schedules", "next", "0 * * * *", "-n", "0")
	require.Equal(t, exitUsage, r.code)
}
