package batuta

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// aheadRuns is a fakeRuns that honours submit options (as the
// orchestrator's Runs does, so runs can be created ahead), records the
// StartAt each fire carried, and can be paused.
type aheadRuns struct {
	*fakeRuns
	durable bool

	amu      sync.Mutex
	startAts map[string]time.Time // event ID -> StartAt of its first accepted fire (zero: none)
	paused   bool
}

func (a *aheadRuns) firesWithOptions() {}

func (a *aheadRuns) Durable() bool { return a.durable }

func (a *aheadRuns) Fire(ctx context.Context, ev Event) (string, error) {
	var so submitOpts
	if opts, _ := ctx.Value(submitOptsKey{}).([]SubmitOption); len(opts) > 0 {
		var err error
		if so, err = resolveSubmitOptions(opts, a.clock.Now()); err != nil {
			return "", err
		}
	}
	id, err := a.fakeRuns.Fire(ctx, ev)
	if err == nil {
		a.amu.Lock()
		if _, ok := a.startAts[ev.ID]; !ok {
			a.startAts[ev.ID] = so.startAt
		}
		a.amu.Unlock()
	}
	return id, err
}

func (a *aheadRuns) startAt(tick time.Time) time.Time {
	a.amu.Lock()
	defer a.amu.Unlock()
	return a.startAts[CronEventID("report", tick)]
}

func (a *aheadRuns) pauseState(context.Context) (bool, <-chan struct{}, error) {
	a.amu.Lock()
	defer a.amu.Unlock()
	return a.paused, nil, nil
}

func (a *aheadRuns) pollInterval() time.Duration { return time.Hour }

func startAhead(t *testing.T, cfg CronConfig, durable bool) (*cronClock, *aheadRuns) {
	t.Helper()
	clock := newCronClock(at("10h0m30s"))
	runs := &aheadRuns{fakeRuns: newFakeRuns(clock), durable: durable, startAts: map[string]time.Time{}}
	cfg.Name, cfg.Logger = "report", cronQuiet
	if cfg.Spec == "" {
		cfg.Spec = "* * * * *"
	}
	trig, err := NewCron(cfg)
	require.NoError(t, err)
	runCron(t, func(ctx context.Context) error { return trig.RunTracking(ctx, runs) })
	return clock, runs
}

// TestCronAheadCreatesRunsBeforeTheirTicks: with Ahead, a tick's run is
// created lead before the tick (at most half the time since the previous
// tick), starting at the tick, and the tick is recorded then.
func TestCronAheadCreatesRunsBeforeTheirTicks(t *testing.T) {
	t.Parallel()
	clock, runs := startAhead(t, CronConfig{Ahead: 10 * time.Second}, false)
	require.Equal(t, at("10h0m50s"), clock.fireNext(t))
	runs.waitTicks(t, at("10h1m"))
	require.Equal(t, at("10h1m"), runs.startAt(at("10h1m")), "the run starts at its tick")
	runs.waitRecorded(t, at("10h1m"))
	runs.finishRun(1)
	require.Equal(t, at("10h1m50s"), clock.fireNext(t))
	runs.waitTicks(t, at("10h1m"), at("10h2m"))
	require.Equal(t, at("10h2m"), runs.startAt(at("10h2m")))

	// The lead is at most half the gap since the previous tick: 20s
	// asked, 30s with every-minute ticks.
	clock2, runs2 := startAhead(t, CronConfig{Ahead: 50 * time.Second, Overlap: OverlapPolicy{Action: OverlapAllow}}, false)
	require.Equal(t, at("10h0m45s"), clock2.fireNext(t)) // (10:01 - 10:00:30) / 2 before 10:01
	runs2.waitTicks(t, at("10h1m"))
	require.Equal(t, at("10h1m30s"), clock2.fireNext(t))
	runs2.waitTicks(t, at("10h1m"), at("10h2m"))
}

// TestCronAheadDefaults: the default lead applies to a durable store under
// an orchestrator's Runs; with the in-memory store (not durable), or with
// Ahead negative, the tick fires at its time.
func TestCronAheadDefaults(t *testing.T) {
	t.Parallel()
	clock, runs := startAhead(t, CronConfig{}, true)
	require.Equal(t, at("10h1m").Add(-DefaultCronAhead), clock.fireNext(t))
	runs.waitTicks(t, at("10h1m"))
	require.Equal(t, at("10h1m"), runs.startAt(at("10h1m")))

	for _, c := range []struct {
		name    string
		ahead   time.Duration
		durable bool
	}{{"in-memory", 0, false}, {"off", -1, true}} {
		clock, runs := startAhead(t, CronConfig{Ahead: c.ahead}, c.durable)
		require.Equal(t, at("10h1m"), clock.fireNext(t), c.name)
		runs.waitTicks(t, at("10h1m"))
		require.True(t, runs.startAt(at("10h1m")).IsZero(), "%s: a run fired at its tick has no StartAt", c.name)
	}
}

// TestCronAheadOnlyWhenNothingStandsInTheWay: a tick whose previous run is
// unfinished at the lead time (overlap skip) or whose workflow is paused is
// not created ahead; the overlap policy decides at the tick, as without
// Ahead. OverlapAllow creates it ahead anyway.
func TestCronAheadOnlyWhenNothingStandsInTheWay(t *testing.T) {
	t.Parallel()
	t.Run("skip", func(t *testing.T) {
		t.Parallel()
		clock, runs := startAhead(t, CronConfig{Ahead: 10 * time.Second}, false)
		require.Equal(t, at("10h0m50s"), clock.fireNext(t))
		runs.waitTicks(t, at("10h1m"))
		require.Equal(t, at("10h1m50s"), clock.fireNext(t)) // run 1 still going: not ahead
		require.Equal(t, at("10h2m"), clock.fireNext(t))    // at the tick: skipped
		runs.waitRecorded(t, at("10h2m"))
		require.Equal(t, []time.Time{at("10h1m")}, runs.ticks())
		runs.finishRun(1)
		require.Equal(t, at("10h2m50s"), clock.fireNext(t))
		runs.waitTicks(t, at("10h1m"), at("10h3m"))
		require.Equal(t, at("10h3m"), runs.startAt(at("10h3m")))
	})
	t.Run("allow", func(t *testing.T) {
		t.Parallel()
		clock, runs := startAhead(t, CronConfig{Ahead: 10 * time.Second, Overlap: OverlapPolicy{Action: OverlapAllow}}, false)
		require.Equal(t, at("10h0m50s"), clock.fireNext(t))
		runs.waitTicks(t, at("10h1m"))
		require.Equal(t, at("10h1m50s"), clock.fireNext(t))
		runs.waitTicks(t, at("10h1m"), at("10h2m"))
	})
	t.Run("paused", func(t *testing.T) {
		t.Parallel()
		clock, runs := startAhead(t, CronConfig{Ahead: 10 * time.Second, Overlap: OverlapPolicy{Action: OverlapAllow}}, false)
		runs.amu.Lock()
		runs.paused = true
		runs.amu.Unlock()
		require.Equal(t, at("10h0m50s"), clock.fireNext(t))
		require.Equal(t, at("10h1m"), clock.fireNext(t)) // not ahead: at the tick, the pause holds it
		require.Equal(t, at("10h1m").Add(time.Hour), clock.waitTimer(t), "waiting for the resume")
		require.Empty(t, runs.ticks())
	})
}

// TestCronAheadRefusesJitter: Jitter delays a fire, Ahead advances it.
func TestCronAheadRefusesJitter(t *testing.T) {
	t.Parallel()
	_, err := NewCron(CronConfig{Name: "x", Spec: "* * * * *", Jitter: time.Second, Ahead: time.Second})
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.ErrorContains(t, err, "CronConfig.Ahead")
}
