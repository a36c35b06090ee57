package batuta_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// TestQueueTriggerFlowHeaders: batuta-delay and batuta-priority set the
// run's start time and priority; a malformed value dead-letters the
// message as malformed, with the reason.
func TestQueueTriggerFlowHeaders(t *testing.T) {
	t.Parallel()
	ctx := waitCtx(t)
	q := newQueue(t, batuta.MemoryQueueConfig{})
	dead := make(chan batuta.DeadLetter, 4)
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, Logger: quiet,
		DeadLetter: batuta.DeadLetterFunc(func(_ context.Context, dl batuta.DeadLetter) error { dead <- dl; return nil })})
	require.NoError(t, err)
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	require.NoError(t, o.Bind("w", trig))
	start(t, o)

	sent := time.Now()
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "m1", Time: sent, Headers: map[string]string{
		batuta.HeaderDelay: "250ms", batuta.HeaderPriority: "4"}}))
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "bad", Headers: map[string]string{batuta.HeaderStartAt: "tomorrow"}}))

	select {
	case dl := <-dead:
		require.Equal(t, "bad", dl.Event.ID)
		require.Equal(t, batuta.DeadLetterMalformed, dl.Reason)
		require.Contains(t, dl.Error, `header batuta-start-at: "tomorrow" is not an RFC 3339 time`)
	case <-ctx.Done():
		t.Fatal("the malformed message was not dead-lettered")
	}
	var r *batuta.Run
	require.Eventually(t, func() bool {
		r, err = o.Store().FindRun(ctx, "w", "m1")
		return err == nil
	}, 10*time.Second, time.Millisecond)
	require.Equal(t, 4, r.Priority)
	require.True(t, r.StartAt.Equal(sent.Add(250*time.Millisecond)), "start at %v, sent %v", r.StartAt, sent)
	r, err = o.Wait(ctx, r.ID)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.False(t, r.Task("a").Attempts[0].StartedAt.Before(sent.Add(250*time.Millisecond)))
	_, err = o.Store().FindRun(ctx, "w", "bad")
	require.ErrorIs(t, err, batuta.ErrRunNotFound)
}

// TestBindSubmitWith: a trigger's events get the options SubmitWith
// computes from them (a start time from the row, say).
func TestBindSubmitWith(t *testing.T) {
	t.Parallel()
	ctx := waitCtx(t)
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	sendAt := time.Now().Add(time.Hour)
	fired := make(chan error, 1)
	trig := batuta.TriggerFunc(func(ctx context.Context, fire batuta.FireFunc) error {
		fired <- fire(ctx, batuta.Event{ID: "row-1", Data: []byte(sendAt.Format(time.RFC3339Nano))})
		<-ctx.Done()
		return nil
	})
	require.NoError(t, o.Bind("w", trig, batuta.SubmitWith(func(ev batuta.Event) ([]batuta.SubmitOption, error) {
		at, err := time.Parse(time.RFC3339Nano, string(ev.Data))
		return []batuta.SubmitOption{batuta.StartAt(at), batuta.WithPriority(2)}, err
	})))
	start(t, o)
	require.NoError(t, <-fired)
	r, err := o.Store().FindRun(ctx, "w", "row-1")
	require.NoError(t, err)
	require.True(t, r.StartAt.Equal(sendAt))
	require.Equal(t, 2, r.Priority)
	require.Equal(t, batuta.RunPending, r.State)
}

// TestCronPauseThroughOrchestrator: a cron schedule bound to a paused
// workflow records no tick while paused, and on Resume catches up by its
// missed-tick policy (run latest here), on a fake clock.
func TestCronPauseThroughOrchestrator(t *testing.T) {
	t.Parallel()
	ctx := waitCtx(t)
	t0 := time.Date(2026, 3, 2, 10, 0, 30, 0, time.UTC)
	clock := batutatest.NewFakeClock(t0)
	o, err := batuta.New(batuta.Config{Logger: quiet, Clock: clock})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "report", Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	trig, err := batuta.NewCron(batuta.CronConfig{Name: "report", Spec: "* * * * *", Logger: quiet,
		Missed: batuta.MissedPolicy{Action: batuta.MissedRunLatest}, Overlap: batuta.OverlapPolicy{Action: batuta.OverlapAllow}})
	require.NoError(t, err)
	require.NoError(t, o.Bind("report", trig))
	start(t, o)
	minute := func(m int) time.Time { return time.Date(2026, 3, 2, 10, m, 0, 0, time.UTC) }
	lastTick := func() time.Time {
		tk, err := o.Store().LastTick(ctx, "report")
		require.NoError(t, err)
		return tk
	}
	runOf := func(m int) error {
		_, err := o.Store().FindRun(ctx, "report", batuta.CronEventID("report", minute(m)))
		return err
	}

	waitTimerAt := func(at time.Time) {
		t.Helper()
		require.True(t, clock.WaitForTimers(1, 10*time.Second), "the trigger never armed a timer")
		clock.Set(at)
	}
	waitTimerAt(minute(1))
	require.Eventually(t, func() bool { return lastTick().Equal(minute(1)) }, 10*time.Second, time.Millisecond)
	require.NoError(t, runOf(1))

	require.NoError(t, o.Pause(ctx, "report"))
	waitTimerAt(minute(2))
	waitTimerAt(minute(5).Add(30 * time.Second))
	// The trigger waits for the resume (on its poll timer): nothing was
	// fired or recorded while paused.
	require.True(t, clock.WaitForTimers(1, 10*time.Second))
	require.Equal(t, minute(1), lastTick())
	for _, m := range []int{2, 3, 4, 5} {
		require.ErrorIs(t, runOf(m), batuta.ErrRunNotFound, "tick 10:0%d while paused", m)
	}
	// Resuming catches up the latest missed tick (10:05), then the
	// schedule goes on.
	require.NoError(t, o.Resume(ctx, "report"))
	require.Eventually(t, func() bool { return lastTick().Equal(minute(5)) }, 10*time.Second, time.Millisecond)
	require.NoError(t, runOf(5))
	for _, m := range []int{2, 3, 4} {
		require.ErrorIs(t, runOf(m), batuta.ErrRunNotFound, "tick 10:0%d", m)
	}
	r, err := o.Store().FindRun(ctx, "report", batuta.CronEventID("report", minute(5)))
	require.NoError(t, err)
	require.Equal(t, "true", r.Event.Metadata[batuta.CronMetaCatchUp])
}

// TestWithSubmitOptions: a custom trigger passes per-event options through
// the ctx it gives fire; SubmitWith's come after and win.
func TestWithSubmitOptions(t *testing.T) {
	t.Parallel()
	ctx := waitCtx(t)
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	later := time.Now().Add(time.Hour)
	fired := make(chan error, 2)
	trig := batuta.TriggerFunc(func(ctx context.Context, fire batuta.FireFunc) error {
		fired <- fire(batuta.WithSubmitOptions(ctx, batuta.StartAt(later), batuta.WithPriority(1)), batuta.Event{ID: "e1"})
		fired <- fire(batuta.WithSubmitOptions(ctx, batuta.WithPriority(1)), batuta.Event{ID: "e2"})
		<-ctx.Done()
		return nil
	})
	require.NoError(t, o.Bind("w", trig, batuta.SubmitWith(func(ev batuta.Event) ([]batuta.SubmitOption, error) {
		if ev.ID == "e2" {
			return []batuta.SubmitOption{batuta.WithPriority(9)}, nil
		}
		return nil, nil
	})))
	start(t, o)
	require.NoError(t, <-fired)
	require.NoError(t, <-fired)
	r1, err := o.Store().FindRun(ctx, "w", "e1")
	require.NoError(t, err)
	require.True(t, r1.StartAt.Equal(later))
	require.Equal(t, 1, r1.Priority)
	r2, err := o.Store().FindRun(ctx, "w", "e2")
	require.NoError(t, err)
	require.Equal(t, 9, r2.Priority, "SubmitWith wins")
}
