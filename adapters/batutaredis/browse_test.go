package batutaredis_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/batuta-dev/batuta/batutatest"
	"github.com/stretchr/testify/require"
)

// TestTriggerDeadLetterBoxOnRedis: a queue trigger whose dead letters go
// to a Redis stream lists them, redrives one back to the source stream
// (where it is fired again, without the dead-letter headers) and deletes
// the other; each operation is idempotent.
func TestTriggerDeadLetterBoxOnRedis(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	src := open(t, batutaredis.Config{Stream: uniqueStream(t, admin)})
	dead := open(t, batutaredis.Config{Stream: uniqueStream(t, admin)})
	var down atomic.Bool
	down.Store(true)
	var mu sync.Mutex
	var fired []batuta.Event
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: src, DeadLetter: batuta.DeadLetterQueue(dead), MaxDeliveries: 1, RetryDelay: time.Millisecond,
	})
	require.NoError(t, err)
	box, ok := trig.DeadLetterBox()
	require.True(t, ok, "a DeadLetterQueue over a batutaredis Queue is browsable")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- trig.Run(ctx, func(_ context.Context, ev batuta.Event) error {
			if down.Load() {
				return errors.New("handler down")
			}
			mu.Lock()
			fired = append(fired, ev)
			mu.Unlock()
			return nil
		})
	}()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	require.NoError(t, src.Publish(t.Context(), batuta.Message{ID: "a", Body: []byte(`{"n":1}`), Headers: map[string]string{"k": "v"}}))
	require.NoError(t, src.Publish(t.Context(), batuta.Message{ID: "b", Body: []byte(`{"n":2}`)}))
	var items []batuta.DeadLetterItem
	require.Eventually(t, func() bool {
		items, err = box.DeadLetters(t.Context(), batuta.DeadLetterQuery{})
		return err == nil && len(items) == 2
	}, 10*time.Second, 5*time.Millisecond)
	byID := map[string]batuta.DeadLetterItem{}
	for _, it := range items {
		byID[it.Event.ID] = it
	}
	a := byID["a"]
	require.Equal(t, batuta.DeadLetterMaxDeliveries, a.Reason)
	require.Equal(t, "handler down", a.Error)
	require.Equal(t, map[string]string{"k": "v"}, a.Event.Metadata)
	page, err := box.DeadLetters(t.Context(), batuta.DeadLetterQuery{After: items[0].ID, Limit: 10})
	require.NoError(t, err)
	require.Len(t, page, 1)
	require.Equal(t, items[1].ID, page[0].ID)

	down.Store(false)
	n, err := box.Redrive(t.Context(), a.ID)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = box.Redrive(t.Context(), a.ID)
	require.NoError(t, err)
	require.Zero(t, n, "idempotent")
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(fired) == 1
	}, 10*time.Second, 5*time.Millisecond)
	mu.Lock()
	require.Equal(t, "a", fired[0].ID)
	require.Equal(t, "v", fired[0].Metadata["k"])
	_, has := fired[0].Metadata[batuta.HeaderDeadLetterReason]
	require.False(t, has, "no dead-letter headers on the redriven message")
	mu.Unlock()

	b := byID["b"]
	n, err = box.Delete(t.Context(), b.ID)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = box.Delete(t.Context(), b.ID)
	require.NoError(t, err)
	require.Zero(t, n, "idempotent")
	left, err := box.DeadLetters(t.Context(), batuta.DeadLetterQuery{})
	require.NoError(t, err)
	require.Empty(t, left)
	_, err = box.Delete(t.Context(), "not-an-entry")
	require.ErrorIs(t, err, batuta.ErrBadDeadLetterID)
}

// TestDeadLetterBoxConformance runs the shared dead-letter box suite over
// a Redis source stream and a Redis dead-letter stream.
func TestDeadLetterBoxConformance(t *testing.T) {
	t.Parallel()
	batutatest.TestQueueDeadLetterBox(t, batutatest.DeadLetterBoxSuite{
		New: func(t *testing.T) (batuta.Queue, batuta.DeadLetterHandler) {
			admin := requireRedis(t)
			src := open(t, batutaredis.Config{Stream: uniqueStream(t, admin)})
			dead := open(t, batutaredis.Config{Stream: uniqueStream(t, admin)})
			return src, batuta.DeadLetterQueue(dead)
		},
		BadID: "not-an-entry",
	})
}
