package batuta

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var cronQuiet = slog.New(slog.DiscardHandler)

// mon10 is Monday 2026-03-02 10:00 UTC; tests start half a minute later.
var mon10 = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)

func at(hhmm string) time.Time {
	d, err := time.ParseDuration(hhmm)
	if err != nil {
		panic(err)
	}
	return mon10.Truncate(24 * time.Hour).Add(d)
}

type cronHarness struct {
	clock *cronClock
	runs  *fakeRuns
	trig  *CronTrigger
}

// startCron runs a cron trigger against a fake clock set to start and a
// fake Runs whose last recorded tick is last, until the test ends.
func startCron(t *testing.T, cfg CronConfig, start, last time.Time) *cronHarness {
	t.Helper()
	clock := newCronClock(start)
	runs := newFakeRuns(clock)
	runs.last = last
	if cfg.Name == "" {
		cfg.Name = "report"
	}
	cfg.Logger = cronQuiet
	trig, err := NewCron(cfg)
	require.NoError(t, err)
	runCron(t, func(ctx context.Context) error { return trig.RunTracking(ctx, runs) })
	return &cronHarness{clock: clock, runs: runs, trig: trig}
}

// runCron runs f in a goroutine until the test ends, then checks that it
// returned context.Canceled promptly.
func runCron(t *testing.T, f func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.ErrorIs(t, err, context.Canceled)
		case <-time.After(5 * time.Second):
			t.Error("the cron trigger did not return within 5s of cancel")
		}
	})
}

// waitTimerAt waits until the trigger armed a timer for exactly when, which
// shows that it handled everything due before.
func (h *cronHarness) waitTimerAt(t *testing.T, when time.Time) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, d := range h.clock.deadlines() {
			if d.Equal(when) {
				return true
			}
		}
		return false
	}, 5*time.Second, time.Millisecond, "no timer for %s; pending %v", when, h.clock.deadlines())
}

func TestCronFiresEachTickWithStableEventIDs(t *testing.T) {
	t.Parallel()
	h := startCron(t, CronConfig{Spec: "* * * * *", Data: []byte(`{"k":1}`)}, at("10h0m30s"), time.Time{})

	require.Equal(t, at("10h1m"), h.clock.fireNext(t))
	h.runs.waitTicks(t, at("10h1m"))
	h.runs.waitRecorded(t, at("10h1m"))
	h.runs.finishRun(1) // else the default overlap policy skips 10:02
	require.Equal(t, at("10h2m"), h.clock.fireNext(t))
	h.runs.waitTicks(t, at("10h1m"), at("10h2m"))

	ev := h.runs.fired[0]
	require.Equal(t, "cron/report/2026-03-02T10:01:00Z", ev.ID)
	require.Equal(t, CronEventID("report", at("10h1m")), ev.ID)
	require.Equal(t, "cron/report", ev.Source)
	require.Equal(t, CronEventType, ev.Type)
	require.True(t, ev.Time.Equal(at("10h1m")))
	require.JSONEq(t, `{"k":1}`, string(ev.Data))
	require.Equal(t, map[string]string{CronMetaSchedule: "report", CronMetaTick: "2026-03-02T10:01:00Z"}, ev.Metadata)
}

func TestCronEventIDUsesUTCAndNanoseconds(t *testing.T) {
	t.Parallel()
	madrid := mustLoad(t, "Europe/Madrid")
	tick := time.Date(2026, 7, 1, 9, 0, 0, 500, madrid)
	require.Equal(t, "cron/daily-report/2026-07-01T07:00:00.0000005Z", CronEventID("daily-report", tick))
}

func TestCronMissedTicksAtStartup(t *testing.T) {
	t.Parallel()
	// Hourly schedule; the process was down from just after 05:00 until 09:30.
	cases := []struct {
		name   string
		policy MissedPolicy
		last   time.Time
		want   []time.Time // fired before the 10:00 tick
	}{
		{"skip", MissedPolicy{Action: MissedSkip, Window: 3 * time.Hour}, at("5h"), nil},
		{"run latest", MissedPolicy{Action: MissedRunLatest, Window: 3 * time.Hour}, at("5h"), []time.Time{at("9h")}},
		{"run all within the window", MissedPolicy{Action: MissedRunAll, Window: 3 * time.Hour}, at("5h"), []time.Time{at("7h"), at("8h"), at("9h")}},
		{"run all up to the cap", MissedPolicy{Action: MissedRunAll, Window: 3 * time.Hour, Max: 2}, at("5h"), []time.Time{at("8h"), at("9h")}},
		{"run all, default window of one hour", MissedPolicy{Action: MissedRunAll}, at("5h"), []time.Time{at("9h")}},
		{"run latest, tick older than the window", MissedPolicy{Action: MissedRunLatest, Window: 20 * time.Minute}, at("5h"), nil},
		{"run all, nothing missed", MissedPolicy{Action: MissedRunAll, Window: 3 * time.Hour}, at("9h"), nil},
		{"run all, first start ever", MissedPolicy{Action: MissedRunAll, Window: 3 * time.Hour}, time.Time{}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := startCron(t, CronConfig{Spec: "0 * * * *", Missed: tc.policy, Overlap: OverlapPolicy{Action: OverlapAllow}}, at("9h30m"), tc.last)
			h.waitTimerAt(t, at("10h")) // catch-up is done before the timer is armed
			h.runs.waitTicks(t, tc.want...)
			for _, ev := range h.runs.fired {
				require.Equal(t, "true", ev.Metadata[CronMetaCatchUp])
			}
			h.clock.Set(at("10h"))
			h.runs.waitTicks(t, append(tc.want, at("10h"))...)
			require.Empty(t, h.runs.fired[len(tc.want)].Metadata[CronMetaCatchUp])
		})
	}
}

func TestCronMissedTicksWhileBusy(t *testing.T) {
	t.Parallel()
	// Every minute; after the 10:01 tick the process stalls until 10:04:30.
	cases := []struct {
		name   string
		policy MissedPolicy
		want   []time.Time // fired after 10:01, before 10:05
	}{
		{"skip", MissedPolicy{Action: MissedSkip}, []time.Time{at("10h4m")}},
		{"run latest", MissedPolicy{Action: MissedRunLatest}, []time.Time{at("10h4m")}},
		{"run all", MissedPolicy{Action: MissedRunAll}, []time.Time{at("10h2m"), at("10h3m"), at("10h4m")}},
		{"run all up to the cap", MissedPolicy{Action: MissedRunAll, Max: 1}, []time.Time{at("10h3m"), at("10h4m")}},
		{"run all within the window", MissedPolicy{Action: MissedRunAll, Window: 2 * time.Minute}, []time.Time{at("10h3m"), at("10h4m")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := startCron(t, CronConfig{Spec: "* * * * *", Missed: tc.policy, Overlap: OverlapPolicy{Action: OverlapAllow}}, at("10h0m30s"), time.Time{})
			h.clock.fireNext(t)
			h.runs.waitTicks(t, at("10h1m"))
			h.waitTimerAt(t, at("10h2m"))
			h.clock.Set(at("10h4m30s"))
			want := append([]time.Time{at("10h1m")}, tc.want...)
			h.runs.waitTicks(t, want...)
			h.waitTimerAt(t, at("10h5m"))
			h.runs.waitTicks(t, want...) // and nothing else
			h.runs.waitRecorded(t, at("10h4m"))
		})
	}
}

func TestCronRetriesRefusedTicks(t *testing.T) {
	t.Parallel()
	h := startCron(t, CronConfig{Spec: "* * * * *"}, at("10h0m30s"), time.Time{})
	h.runs.mu.Lock()
	h.runs.failures = 2
	h.runs.mu.Unlock()
	h.clock.fireNext(t)
	h.waitTimerAt(t, at("10h1m").Add(100*time.Millisecond))
	h.clock.Set(at("10h1m").Add(100 * time.Millisecond))
	h.waitTimerAt(t, at("10h1m").Add(300*time.Millisecond))
	h.clock.Set(at("10h1m").Add(300 * time.Millisecond))
	h.runs.waitTicks(t, at("10h1m"))
	h.runs.mu.Lock()
	require.Equal(t, 3, h.runs.attempts)
	h.runs.mu.Unlock()
	h.runs.waitRecorded(t, at("10h1m"))
}

func TestCronRefusedTickOvertakenByTheNext(t *testing.T) {
	t.Parallel()
	cases := []struct {
		action MissedAction
		want   []time.Time
	}{
		{MissedSkip, []time.Time{at("10h2m")}},
		{MissedRunLatest, []time.Time{at("10h2m")}},
		{MissedRunAll, []time.Time{at("10h1m"), at("10h2m")}},
	}
	for _, tc := range cases {
		t.Run(tc.action.String(), func(t *testing.T) {
			t.Parallel()
			h := startCron(t, CronConfig{Spec: "* * * * *", Missed: MissedPolicy{Action: tc.action}, Overlap: OverlapPolicy{Action: OverlapAllow}}, at("10h0m30s"), time.Time{})
			h.runs.mu.Lock()
			h.runs.failUntil = at("10h2m30s") // the store refuses everything until then
			h.runs.mu.Unlock()
			for now := h.clock.fireNext(t); now.Before(at("10h2m30s")); {
				now = h.clock.fireNext(t) // retry timers, doubling up to 10s
			}
			h.runs.waitTicks(t, tc.want...)
		})
	}
}

func TestCronOverlapPolicies(t *testing.T) {
	t.Parallel()
	// Every minute from 10:00:30; run-1 (the 10:01 tick) is still running
	// when the next ticks come due.
	t.Run("allow all", func(t *testing.T) {
		t.Parallel()
		h := startCron(t, CronConfig{Spec: "* * * * *", Overlap: OverlapPolicy{Action: OverlapAllow}}, at("10h0m30s"), time.Time{})
		h.clock.fireNext(t)
		h.runs.waitTicks(t, at("10h1m"))
		h.clock.fireNext(t)
		h.runs.waitTicks(t, at("10h1m"), at("10h2m"))
	})
	t.Run("skip", func(t *testing.T) {
		t.Parallel()
		h := startCron(t, CronConfig{Spec: "* * * * *", Overlap: OverlapPolicy{Action: OverlapSkip}}, at("10h0m30s"), time.Time{})
		h.clock.fireNext(t)
		h.runs.waitTicks(t, at("10h1m"))
		h.clock.fireNext(t)
		h.runs.waitRecorded(t, at("10h2m")) // handled: skipped
		h.waitTimerAt(t, at("10h3m"))
		h.runs.finishRun(1)
		h.clock.fireNext(t)
		h.runs.waitTicks(t, at("10h1m"), at("10h3m"))
	})
	t.Run("buffer one", func(t *testing.T) {
		t.Parallel()
		h := startCron(t, CronConfig{Spec: "* * * * *", Overlap: OverlapPolicy{Action: OverlapBufferOne}}, at("10h0m30s"), time.Time{})
		h.clock.fireNext(t)
		h.runs.waitTicks(t, at("10h1m"))
		h.clock.fireNext(t) // 10:02 buffered
		h.waitTimerAt(t, at("10h3m"))
		h.clock.fireNext(t) // 10:03 dropped: the buffer holds one
		h.waitTimerAt(t, at("10h4m"))
		h.runs.waitTicks(t, at("10h1m"))
		h.runs.finishRun(1) // 10:02 starts at once
		h.runs.waitTicks(t, at("10h1m"), at("10h2m"))
		h.runs.finishRun(2)
		h.clock.fireNext(t)
		h.runs.waitTicks(t, at("10h1m"), at("10h2m"), at("10h4m"))
	})
	t.Run("buffer all up to the cap", func(t *testing.T) {
		t.Parallel()
		h := startCron(t, CronConfig{Spec: "* * * * *", Overlap: OverlapPolicy{Action: OverlapBufferAll, Buffer: 2}}, at("10h0m30s"), time.Time{})
		h.clock.fireNext(t)
		h.runs.waitTicks(t, at("10h1m"))
		for _, next := range []string{"10h3m", "10h4m", "10h5m"} { // 10:02, 10:03 buffered; 10:04 dropped
			h.clock.fireNext(t)
			h.waitTimerAt(t, at(next))
		}
		h.runs.waitTicks(t, at("10h1m"))
		h.runs.finishRun(1)
		h.runs.waitTicks(t, at("10h1m"), at("10h2m"))
		h.runs.finishRun(2)
		h.runs.waitTicks(t, at("10h1m"), at("10h2m"), at("10h3m"))
		h.runs.finishRun(3)
		h.clock.fireNext(t)
		h.runs.waitTicks(t, at("10h1m"), at("10h2m"), at("10h3m"), at("10h5m"))
	})
	t.Run("cancel previous", func(t *testing.T) {
		t.Parallel()
		h := startCron(t, CronConfig{Spec: "* * * * *", Overlap: OverlapPolicy{Action: OverlapCancelPrevious}}, at("10h0m30s"), time.Time{})
		h.clock.fireNext(t)
		h.runs.waitTicks(t, at("10h1m"))
		h.clock.fireNext(t)
		h.runs.waitTicks(t, at("10h1m"), at("10h2m"))
		require.Equal(t, []string{"run-1"}, h.runs.canceledRuns())
		r, err := h.runs.Get(context.Background(), "run-1")
		require.NoError(t, err)
		require.Equal(t, RunCanceled, r.State)
		h.runs.finishRun(2) // finished in time: the next tick cancels nothing
		h.clock.fireNext(t)
		h.runs.waitTicks(t, at("10h1m"), at("10h2m"), at("10h3m"))
		require.Equal(t, []string{"run-1"}, h.runs.canceledRuns())
	})
}

// TestCronCancelPreviousStartsOnlyTheLatest: under OverlapCancelPrevious,
// when several ticks are due at once, only the latest one starts a run; the
// others are dropped rather than started and canceled one after the other.
func TestCronCancelPreviousStartsOnlyTheLatest(t *testing.T) {
	t.Parallel()
	cancelPrev := OverlapPolicy{Action: OverlapCancelPrevious}
	runAll := MissedPolicy{Action: MissedRunAll}
	t.Run("catch-up after downtime", func(t *testing.T) {
		t.Parallel()
		// Down from 09:55 to 10:00:30: 09:56 ... 10:00 were missed.
		h := startCron(t, CronConfig{Spec: "* * * * *", Missed: runAll, Overlap: cancelPrev}, at("10h0m30s"), at("9h55m"))
		h.runs.waitRecorded(t, at("10h0m"))
		h.waitTimerAt(t, at("10h1m"))
		h.runs.waitTicks(t, at("10h0m"))
		h.runs.mu.Lock()
		defer h.runs.mu.Unlock()
		require.Equal(t, []string{"run-1"}, h.runs.order, "runs created")
		require.Empty(t, h.runs.canceled)
		require.Equal(t, 1, h.runs.attempts)
		require.Equal(t, []time.Time{at("9h56m"), at("9h57m"), at("9h58m"), at("9h59m"), at("10h0m")}, h.runs.recorded, "every tick handled")
	})
	t.Run("busy with a run still going", func(t *testing.T) {
		t.Parallel()
		h := startCron(t, CronConfig{Spec: "* * * * *", Missed: runAll, Overlap: cancelPrev}, at("10h0m30s"), time.Time{})
		h.clock.fireNext(t)
		h.runs.waitTicks(t, at("10h1m")) // run-1 goes on
		h.waitTimerAt(t, at("10h2m"))
		h.clock.Set(at("10h4m30s")) // woken late: 10:02, 10:03 and 10:04 are due
		h.runs.waitTicks(t, at("10h1m"), at("10h4m"))
		h.waitTimerAt(t, at("10h5m"))
		h.runs.mu.Lock()
		defer h.runs.mu.Unlock()
		require.Equal(t, []string{"run-1", "run-2"}, h.runs.order, "runs created")
		require.Equal(t, []string{"run-1"}, h.runs.canceled)
		require.Equal(t, 2, h.runs.attempts)
	})
}

func TestCronJitterDelaysFiringButNotTheTick(t *testing.T) {
	t.Parallel()
	h := startCron(t, CronConfig{Spec: "* * * * *", Jitter: 10 * time.Second}, at("10h0m30s"), time.Time{})
	seen := map[time.Duration]bool{}
	var want []time.Time
	for i := 1; i <= 8; i++ {
		tick := at("10h0m").Add(time.Duration(i) * time.Minute)
		deadline := h.clock.waitTimer(t)
		require.False(t, deadline.Before(tick), "fires before its tick")
		require.Less(t, deadline.Sub(tick), 10*time.Second)
		seen[deadline.Sub(tick)] = true
		h.clock.Set(deadline)
		want = append(want, tick)
		h.runs.waitTicks(t, want...)
		h.runs.finishRun(i)
	}
	require.Greater(t, len(seen), 1, "jitter is not random")
}

func TestCronDSTThroughTheTrigger(t *testing.T) {
	t.Parallel()
	madrid := mustLoad(t, "Europe/Madrid")
	cases := []struct {
		name  string
		start time.Time
		want  []string // event IDs
	}{
		{"spring forward: 02:30 fires once, right after 03:00 CEST", time.Date(2026, 3, 28, 12, 0, 0, 0, madrid),
			[]string{"cron/backup/2026-03-29T01:00:00.000001801Z", "cron/backup/2026-03-30T00:30:00Z"}},
		{"fall back: 02:30 fires once, at its first occurrence", time.Date(2026, 10, 24, 12, 0, 0, 0, madrid),
			[]string{"cron/backup/2026-10-25T00:30:00Z", "cron/backup/2026-10-26T01:30:00Z"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := startCron(t, CronConfig{Name: "backup", Spec: "30 2 * * *"}, tc.start, time.Time{})
			for i := range tc.want {
				h.clock.fireNext(t)
				require.Eventually(t, func() bool { return len(h.runs.ticks()) == i+1 }, 5*time.Second, time.Millisecond)
				h.runs.finishRun(i + 1)
			}
			var ids []string
			for _, ev := range h.runs.fired {
				ids = append(ids, ev.ID)
			}
			require.Equal(t, tc.want, ids)
		})
	}
}

// TestCronDSTCatchUpBurst: a fixed-time schedule whose matching times 02:00
// and 02:30 both fall in Madrid's spring-forward gap runs once for each,
// right after the gap (cronie's rule), even when the trigger wakes a little
// late and finds both due: the catch-up ticks are due together, on time, and
// the default MissedSkip does not drop the first as missed.
func TestCronDSTCatchUpBurst(t *testing.T) {
	t.Parallel()
	madrid := mustLoad(t, "Europe/Madrid")
	jump := time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC) // 02:00 CET -> 03:00 CEST
	for _, late := range []time.Duration{0, 3 * time.Second} {
		t.Run(late.String(), func(t *testing.T) {
			t.Parallel()
			h := startCron(t, CronConfig{Name: "backup", Spec: "0,30 2 * * *", Overlap: OverlapPolicy{Action: OverlapAllow}},
				time.Date(2026, 3, 28, 12, 0, 0, 0, madrid), time.Time{})
			deadline := h.clock.waitTimer(t)
			require.True(t, deadline.Equal(jump.Add(time.Nanosecond)), "first deadline %s", deadline)
			h.clock.Set(jump.Add(time.Nanosecond + late))
			if late == 0 { // on time: the second tick gets its own timer
				h.clock.fireNext(t)
			}
			h.runs.waitTicks(t, jump.Add(time.Nanosecond), jump.Add(1801*time.Nanosecond))
			h.runs.mu.Lock()
			var ids []string
			for _, ev := range h.runs.fired {
				ids = append(ids, ev.ID)
				require.Empty(t, ev.Metadata[CronMetaCatchUp], "an on-time tick")
			}
			h.runs.mu.Unlock()
			require.Equal(t, []string{"cron/backup/2026-03-29T01:00:00.000000001Z", "cron/backup/2026-03-29T01:00:00.000001801Z"}, ids)
		})
	}
}

// TestCronWarnsOfNumericWeekdaysWithLOrHash: "6L" means the last Saturday
// here and the last Friday in Quartz; NewCron says so in a warning, unless
// the spec uses names or CronConfig.QuartzWeekdays is set.
func TestCronWarnsOfNumericWeekdaysWithLOrHash(t *testing.T) {
	t.Parallel()
	cases := []struct {
		spec   string
		quartz bool
		warn   bool
	}{
		{"0 12 * * 6L", false, true},
		{"0 12 * * MON,6#3", false, true},
		{"0 12 * * SATL", false, false},
		{"0 12 * * 6", false, false},
		{"0 12 ? * 6L", true, false},
	}
	for _, tc := range cases {
		var buf syncBuffer
		trig, err := NewCron(CronConfig{Name: "w", Spec: tc.spec, QuartzWeekdays: tc.quartz, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
		require.NoError(t, err, tc.spec)
		require.Equal(t, tc.warn, strings.Contains(buf.String(), "level=WARN"), "%s: %s", tc.spec, buf.String())
		if tc.warn {
			require.Contains(t, buf.String(), "QuartzWeekdays")
		}
		if tc.quartz { // 6L is the last Friday: March 27 2026
			require.Equal(t, time.Date(2026, 3, 27, 12, 0, 0, 0, time.UTC), trig.Schedule().Next(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)))
		}
	}
	_, err := NewCron(CronConfig{Name: "w", Schedule: MustParseSchedule("@hourly"), QuartzWeekdays: true})
	var ce *ConfigError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "CronConfig.QuartzWeekdays", ce.Field)
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestCronTwoLoopsFireEachTickOnce(t *testing.T) {
	t.Parallel()
	clock := newCronClock(at("10h0m30s"))
	runs := newFakeRuns(clock)
	for range 2 { // two nodes running the same schedule
		trig, err := NewCron(CronConfig{Name: "shared", Spec: "* * * * *", Logger: cronQuiet})
		require.NoError(t, err)
		runCron(t, func(ctx context.Context) error { return trig.RunTracking(ctx, runs) })
	}
	for i := 1; i <= 3; i++ {
		require.Eventually(t, func() bool { return len(clock.deadlines()) == 2 }, 5*time.Second, time.Millisecond)
		clock.Set(clock.deadlines()[0])
		require.Eventually(t, func() bool {
			runs.mu.Lock()
			defer runs.mu.Unlock()
			return runs.attempts == 2*i
		}, 5*time.Second, time.Millisecond)
		require.Len(t, runs.ticks(), i)
		runs.finishRun(i)
	}
}

func TestCronRunWithoutTracking(t *testing.T) {
	t.Parallel()
	trig, err := NewCron(CronConfig{Name: "plain", Spec: "* * * * *", Logger: cronQuiet})
	require.NoError(t, err)
	err = trig.Run(context.Background(), func(context.Context, Event) error { return nil })
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.ErrorContains(t, err, "needs run tracking")

	clock := newCronClock(at("10h0m30s"))
	trig, err = NewCron(CronConfig{Name: "plain", Spec: "* * * * *", Overlap: OverlapPolicy{Action: OverlapAllow}, Clock: clock, Logger: cronQuiet})
	require.NoError(t, err)
	var mu sync.Mutex
	var ids []string
	runCron(t, func(ctx context.Context) error {
		return trig.Run(ctx, func(_ context.Context, ev Event) error {
			mu.Lock()
			defer mu.Unlock()
			ids = append(ids, ev.ID)
			return nil
		})
	})
	clock.fireNext(t)
	clock.fireNext(t)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ids) == 2
	}, 5*time.Second, time.Millisecond)
	require.Equal(t, []string{"cron/plain/2026-03-02T10:01:00Z", "cron/plain/2026-03-02T10:02:00Z"}, ids)
}

func TestCronScheduleWithoutFurtherTicksIdles(t *testing.T) {
	t.Parallel()
	logs := &logRecorder{}
	clock := newCronClock(at("10h0m30s"))
	runs := newFakeRuns(clock)
	trig, err := NewCron(CronConfig{Name: "feb30", Spec: "0 0 30 2 *", Logger: slog.New(logs)})
	require.NoError(t, err)
	runCron(t, func(ctx context.Context) error { return trig.RunTracking(ctx, runs) })
	require.Eventually(t, func() bool { return logs.has("batuta: cron schedule has no further activations") }, 5*time.Second, time.Millisecond)
	require.Empty(t, clock.deadlines())
	require.Empty(t, runs.ticks())
}

// logRecorder is a slog.Handler that keeps the messages it handles.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }
func (r *logRecorder) has(msg string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if m == msg {
			return true
		}
	}
	return false
}

func TestNewCronValidation(t *testing.T) {
	t.Parallel()
	every := ScheduleFunc(func(t time.Time) time.Time { return t.Add(time.Second) })
	cases := []struct {
		name  string
		cfg   CronConfig
		field string
	}{
		{"no name", CronConfig{Spec: "* * * * *"}, "CronConfig.Name"},
		{"slash in name", CronConfig{Name: "a/b", Spec: "* * * * *"}, "CronConfig.Name"},
		{"name starting with a dash", CronConfig{Name: "-a", Spec: "* * * * *"}, "CronConfig.Name"},
		{"long name", CronConfig{Name: string(make([]byte, 129)), Spec: "* * * * *"}, "CronConfig.Name"},
		{"no spec", CronConfig{Name: "a"}, "CronConfig.Spec"},
		{"spec and schedule", CronConfig{Name: "a", Spec: "* * * * *", Schedule: every}, "CronConfig.Spec"},
		{"bad missed action", CronConfig{Name: "a", Spec: "* * * * *", Missed: MissedPolicy{Action: 7}}, "CronConfig.Missed.Action"},
		{"negative window", CronConfig{Name: "a", Spec: "* * * * *", Missed: MissedPolicy{Window: -1}}, "CronConfig.Missed.Window"},
		{"negative max", CronConfig{Name: "a", Spec: "* * * * *", Missed: MissedPolicy{Max: -1}}, "CronConfig.Missed.Max"},
		{"bad overlap action", CronConfig{Name: "a", Spec: "* * * * *", Overlap: OverlapPolicy{Action: -1}}, "CronConfig.Overlap.Action"},
		{"negative buffer", CronConfig{Name: "a", Spec: "* * * * *", Overlap: OverlapPolicy{Buffer: -2}}, "CronConfig.Overlap.Buffer"},
		{"negative jitter", CronConfig{Name: "a", Spec: "* * * * *", Jitter: -time.Second}, "CronConfig.Jitter"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewCron(tc.cfg)
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.field, ce.Field)
			require.ErrorIs(t, err, ErrInvalidConfig)
			require.ErrorContains(t, err, "batuta: ")
		})
	}

	_, err := NewCron(CronConfig{Name: "a", Spec: "61 * * * *"})
	require.ErrorIs(t, err, ErrInvalidSchedule)
	var se *ScheduleError
	require.ErrorAs(t, err, &se)
	require.Equal(t, "minute", se.Field)
	require.ErrorContains(t, err, "CronConfig.Spec")

	trig, err := NewCron(CronConfig{Name: "custom.every-second_1", Schedule: every})
	require.NoError(t, err)
	require.Equal(t, "custom.every-second_1", trig.Name())
	require.NotNil(t, trig.Schedule())
}

func TestLatestTicks(t *testing.T) {
	t.Parallel()
	five := MustParseSchedule("*/5 * * * *")
	require.Equal(t, []time.Time{at("10h50m"), at("10h55m"), at("11h")}, latestTicks(five, at("10h"), at("11h"), 3))
	require.Len(t, latestTicks(five, at("10h"), at("11h"), 100), 12)
	require.Empty(t, latestTicks(five, at("10h"), at("10h4m"), 100))

	// A frequent schedule over a long window costs O(n log window).
	calls := 0
	secs := MustParseSchedule("@every 1s")
	counting := ScheduleFunc(func(t time.Time) time.Time { calls++; return secs.Next(t) })
	got := latestTicks(counting, at("10h").AddDate(-1, 0, 0), at("10h"), 2)
	require.Equal(t, []time.Time{at("10h").Add(-time.Second), at("10h")}, got)
	require.Less(t, calls, 300)

	never := ScheduleFunc(func(time.Time) time.Time { return time.Time{} })
	require.Empty(t, latestTicks(never, at("10h"), at("11h"), 3))
}

func mustLoad(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	require.NoError(t, err)
	return loc
}
