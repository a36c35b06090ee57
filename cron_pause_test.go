package batuta

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// pausableRuns is a fakeRuns whose workflow can be paused (pauseAware).
type pausableRuns struct {
	*fakeRuns
	pmu     sync.Mutex
	paused  bool
	resumed chan struct{}
	checks  int // pauseState calls
}

func (p *pausableRuns) pauseState(context.Context) (bool, <-chan struct{}, error) {
	p.pmu.Lock()
	defer p.pmu.Unlock()
	p.checks++
	return p.paused, p.resumed, nil
}

func (p *pausableRuns) pollInterval() time.Duration { return 10 * time.Second }

func (p *pausableRuns) setPaused(v bool) {
	p.pmu.Lock()
	defer p.pmu.Unlock()
	p.paused = v
	if !v {
		close(p.resumed)
		p.resumed = make(chan struct{})
	}
}

func (p *pausableRuns) pauseChecks() int {
	p.pmu.Lock()
	defer p.pmu.Unlock()
	return p.checks
}

// TestCronPausedWorkflow: ticks due while the workflow is paused are
// neither fired nor recorded; on resume the missed-tick policy applies to
// them, as after downtime, while the trigger keeps running.
func TestCronPausedWorkflow(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		policy MissedPolicy
		want   []time.Time // after 10:01, before the 10:06 on-time tick
	}{
		{"skip", MissedPolicy{Action: MissedSkip}, nil},
		{"run latest", MissedPolicy{Action: MissedRunLatest}, []time.Time{at("10h5m")}},
		{"run all", MissedPolicy{Action: MissedRunAll}, []time.Time{at("10h2m"), at("10h3m"), at("10h4m"), at("10h5m")}},
		{"run all within window", MissedPolicy{Action: MissedRunAll, Window: 150 * time.Second}, []time.Time{at("10h4m"), at("10h5m")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := newCronClock(at("10h0m30s"))
			runs := &pausableRuns{fakeRuns: newFakeRuns(clock), resumed: make(chan struct{})}
			trig, err := NewCron(CronConfig{Name: "report", Spec: "* * * * *", Logger: cronQuiet,
				Missed: tc.policy, Overlap: OverlapPolicy{Action: OverlapAllow}})
			require.NoError(t, err)
			runCron(t, func(ctx context.Context) error { return trig.RunTracking(ctx, runs) })

			require.Equal(t, at("10h1m"), clock.fireNext(t))
			runs.waitTicks(t, at("10h1m"))
			runs.waitRecorded(t, at("10h1m"))

			runs.setPaused(true)
			checks := runs.pauseChecks()
			clock.Set(at("10h2m"))
			// The 10:02 tick found the workflow paused: the trigger now
			// waits for the resume on its poll timer.
			require.Eventually(t, func() bool { return runs.pauseChecks() > checks }, 5*time.Second, time.Millisecond)
			clock.waitTimer(t)
			clock.Set(at("10h5m30s")) // ticks 10:03-10:05 pass while paused
			clock.waitTimer(t)
			require.Equal(t, []time.Time{at("10h1m")}, runs.ticks(), "no tick fires while paused")
			require.Equal(t, at("10h1m"), runs.lastTick(), "no tick is recorded while paused")

			runs.setPaused(false)
			want := append([]time.Time{at("10h1m")}, tc.want...)
			runs.waitTicks(t, want...)
			for _, ev := range runs.fired[1:] {
				require.Equal(t, "true", ev.Metadata[CronMetaCatchUp], "caught-up ticks are marked")
			}
			h := &cronHarness{clock: clock, runs: runs.fakeRuns, trig: trig}
			h.waitTimerAt(t, at("10h6m"))
			clock.Set(at("10h6m"))
			runs.waitTicks(t, append(want, at("10h6m"))...)
		})
	}
}
