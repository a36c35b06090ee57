package batutapg

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// getCounter counts GetRun calls on a Store; WatchRun and the rest are the
// Store's own.
type getCounter struct {
	*Store
	gets atomic.Int64
}

func (g *getCounter) GetRun(ctx context.Context, id string) (*batuta.Run, error) {
	g.gets.Add(1)
	return g.Store.GetRun(ctx, id)
}

// TestWaitOnForeignRunByNotification: an orchestrator waits on a run that an
// orchestrator on another Store (another instance) runs and finishes. The
// end of the run comes through LISTEN/NOTIFY, so Wait returns with one read
// before waiting and one after, although its poll interval is an hour. The
// task is held until the waiting Store watches the run, or until Wait has
// read the run three times (polling, as before run ends were published).
func TestWaitOnForeignRunByNotification(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	pool := storeTestPool(t, 6)
	a := newTestStore(t, pool, Config{Logger: quiet()})
	pool2 := storeTestPool(t, 6)
	b, err := New(ctx, pool2, Config{Schema: a.Schema(), Logger: quiet()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	require.Eventually(t, b.Listening, 10*time.Second, 5*time.Millisecond)
	cb := &getCounter{Store: b}

	release := make(chan struct{})
	runner, err := batuta.New(batuta.Config{Store: a, Logger: quiet(), NoLogHooks: true})
	require.NoError(t, err)
	require.NoError(t, runner.Register(&batuta.Workflow{Name: "wf", Tasks: []batuta.Task{{Name: "t", Run: func(ctx context.Context, _ *batuta.Input) (any, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return "ok", nil
	}}}}))
	waiter, err := batuta.New(batuta.Config{Store: cb, Logger: quiet(), NoLogHooks: true, PollInterval: time.Hour})
	require.NoError(t, err)

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = runner.Run(runCtx) }()
	defer func() { stop(); <-done }()

	id, err := runner.Submit(ctx, "wf", batuta.Event{})
	require.NoError(t, err)
	type result struct {
		r   *batuta.Run
		err error
	}
	res := make(chan result, 1)
	go func() {
		r, err := waiter.Wait(ctx, id)
		res <- result{r, err}
	}()
	for b.watch.Watching() == 0 && cb.gets.Load() < 3 {
		select {
		case <-ctx.Done():
			t.Fatal("Wait neither watched the run nor polled")
		case <-time.After(time.Millisecond):
		}
	}
	close(release)
	select {
	case r := <-res:
		require.NoError(t, r.err)
		require.Equal(t, batuta.RunSucceeded, r.r.State)
	case <-ctx.Done():
		t.Fatal("Wait did not return after the run finished elsewhere")
	}
	require.LessOrEqual(t, cb.gets.Load(), int64(2), "Wait polled instead of waiting for the notification")
}

// TestRunEndsPublished: the ends of runs completed or canceled through one
// Store reach another Store's watchers, including many runs in one
// completion batch (several notifications).
func TestRunEndsPublished(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	pool := storeTestPool(t, 6)
	a := newTestStore(t, pool, Config{Logger: quiet()})
	pool2 := storeTestPool(t, 4)
	b, err := New(ctx, pool2, Config{Schema: a.Schema(), Logger: quiet()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	require.Eventually(t, b.Listening, 10*time.Second, 5*time.Millisecond)

	const n = donePerNotify + 50
	ids := make([]string, n)
	var chans []<-chan struct{}
	for i := range ids {
		id, _, err := a.CreateRun(ctx, newRunFor("wf", "e"+newRunID(), time.Now()))
		require.NoError(t, err)
		ids[i] = id
		ch, stop, ok := b.WatchRun(id)
		require.True(t, ok)
		t.Cleanup(stop)
		chans = append(chans, ch)
	}
	canceled := ids[n-1]
	claims, err := a.ClaimTasks(ctx, batuta.ClaimParams{Owner: "n1", Limit: n - 1, Workflows: []string{"wf"}, Now: time.Now(), LeaseUntil: time.Now().Add(time.Minute)})
	require.NoError(t, err)
	var comps []batuta.Completion
	for _, c := range claims {
		if c.RunID == canceled {
			continue
		}
		comps = append(comps, batuta.Completion{ClaimRef: c.Ref(), Attempt: c.Attempt, Outcome: batuta.OutcomeSucceeded, StartedAt: time.Now(), FinishedAt: time.Now()})
	}
	_, err = a.CompleteTasks(ctx, comps)
	require.NoError(t, err)
	_, err = a.CancelRun(ctx, canceled, "stop", time.Now())
	require.NoError(t, err)
	finished := map[string]bool{canceled: true}
	for _, c := range comps {
		finished[c.RunID] = true
	}
	for i, ch := range chans {
		if !finished[ids[i]] {
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("the end of run %s was not published", ids[i])
		}
	}
}

// TestRecordTickCombined: concurrent RecordTick calls (many schedules, and
// one schedule with several ticks) share statements; each schedule ends with
// its latest tick, and a tick not later than the stored one is refused.
func TestRecordTickCombined(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	s := newTestStore(t, storeTestPool(t, 6), Config{Logger: quiet()})
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	const schedules, ticks = 50, 4
	errs := make(chan error, schedules*ticks)
	for i := 0; i < schedules; i++ {
		for k := 0; k < ticks; k++ {
			go func() {
				_, err := s.RecordTick(ctx, fmt.Sprintf("s%02d", i), base.Add(time.Duration(k)*time.Second))
				errs <- err
			}()
		}
	}
	for i := 0; i < schedules*ticks; i++ {
		require.NoError(t, <-errs)
	}
	for i := 0; i < schedules; i++ {
		last, err := s.LastTick(ctx, fmt.Sprintf("s%02d", i))
		require.NoError(t, err)
		require.True(t, last.Equal(base.Add((ticks-1)*time.Second)), "schedule %d: %v", i, last)
	}
	ok, err := s.RecordTick(ctx, "s00", base)
	require.NoError(t, err)
	require.False(t, ok, "an older tick is not recorded")
	ok, err = s.RecordTick(ctx, "s00", base.Add(time.Hour))
	require.NoError(t, err)
	require.True(t, ok)
}
