package batuta_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// stuckBacklog is a trigger whose source answers only when ctx ends.
type stuckBacklog struct{ batuta.TriggerFunc }

func (stuckBacklog) Backlog(ctx context.Context) (batuta.Backlog, error) {
	<-ctx.Done()
	return batuta.Backlog{}, ctx.Err()
}

// TestBacklogThroughBindings: a queue trigger over a memory queue reports
// the queue's backlog through Bindings; a trigger that does not tell reads
// as ErrNoBacklog; a source that does not answer in time reads as the
// deadline, without holding up the others.
func TestBacklogThroughBindings(t *testing.T) {
	q := newQueue(t, batuta.MemoryQueueConfig{})
	ctx := waitCtx(t)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range 3 {
		require.NoError(t, q.Publish(ctx, batuta.Message{ID: "m" + string(rune('0'+i)), Time: t0.Add(time.Duration(i) * time.Minute)}))
	}
	held, err := q.Connect().Receive(ctx, 1)
	require.NoError(t, err)
	require.Len(t, held, 1)

	// Not running: the trigger must not consume what we count.
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "wf", Tasks: []batuta.Task{{Name: "t", Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil }}}}))
	require.NoError(t, o.Bind("wf", newTrigger(t, batuta.QueueTriggerConfig{Queue: q.Connect(), DeadLetter: batuta.DeadLetterQueue(newQueue(t, batuta.MemoryQueueConfig{}))})))
	noop := batuta.TriggerFunc(func(ctx context.Context, _ batuta.FireFunc) error { <-ctx.Done(); return nil })
	require.NoError(t, o.Bind("wf", noop))
	require.NoError(t, o.Bind("wf", stuckBacklog{noop}))

	bs := o.Bindings()
	require.Len(t, bs, 3)
	require.NotNil(t, bs[0].Backlog)
	assert.Nil(t, bs[1].Backlog)
	require.NotNil(t, bs[2].Backlog)

	rctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	rs := batuta.ReadBacklogs(rctx, bs)
	require.Len(t, rs, 3)
	require.NoError(t, rs[0].Err)
	assert.Equal(t, int64(2), rs[0].Pending)
	assert.Equal(t, int64(1), rs[0].InFlight)
	assert.True(t, rs[0].OldestKnown)
	assert.True(t, rs[0].Oldest.Equal(t0), "the oldest waiting message, in flight or not: %v", rs[0].Oldest)
	assert.Equal(t, time.Hour, rs[0].Lag(t0.Add(time.Hour)))
	require.ErrorIs(t, rs[1].Err, batuta.ErrNoBacklog)
	require.ErrorIs(t, rs[2].Err, context.DeadlineExceeded)

	_, err = bs[1].ReadBacklog(ctx)
	require.ErrorIs(t, err, batuta.ErrNoBacklog)
	// Settled: nothing waits.
	require.NoError(t, q.Ack(ctx, held[0]))
	for range 2 {
		ds, err := q.Receive(ctx, 1)
		require.NoError(t, err)
		require.NoError(t, q.Ack(ctx, ds[0]))
	}
	bl, err := bs[0].ReadBacklog(ctx)
	require.NoError(t, err)
	assert.Equal(t, batuta.Backlog{OldestKnown: true}, bl)
	assert.Zero(t, bl.Lag(time.Now()))
	assert.False(t, errors.Is(err, batuta.ErrNoBacklog))
}
