package batuta_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// TestMemoryQueueConformance runs the Queue conformance suite, the one every
// broker adapter runs, on the in-memory queue.
func TestMemoryQueueConformance(t *testing.T) {
	batutatest.TestQueue(t, batutatest.QueueSuiteConfig{
		New: func(t *testing.T, opts batutatest.QueueOptions) batutatest.QueueFixture {
			q, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{VisibilityTimeout: opts.VisibilityTimeout})
			require.NoError(t, err)
			return batutatest.QueueFixture{Open: func(t *testing.T) batuta.Queue { return q.Connect() }}
		},
		Ordered: true,
	})
}

func TestMemoryQueueConfigValidation(t *testing.T) {
	t.Parallel()
	for field, cfg := range map[string]batuta.MemoryQueueConfig{
		"Capacity":          {Capacity: -1},
		"VisibilityTimeout": {VisibilityTimeout: -1},
		"MaxBodyBytes":      {MaxBodyBytes: -1},
	} {
		_, err := batuta.NewMemoryQueue(cfg)
		var ce *batuta.ConfigError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, field, ce.Field)
	}
}

func receiveWithin(t *testing.T, q batuta.Queue, max int) []batuta.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ds, err := q.Receive(ctx, max)
	require.NoError(t, err)
	return ds
}

func TestMemoryQueueBounded(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{Capacity: 2, MaxBodyBytes: 8})
	ctx := context.Background()
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "a"}))
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "b"}))

	// Full: Publish blocks until ctx ends, then reports busy.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	err := q.Publish(short, batuta.Message{ID: "c"})
	require.ErrorIs(t, err, batuta.ErrBusy)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// A blocked Publish proceeds once a message is acked (not when it is
	// merely received: in-flight messages count).
	done := make(chan error, 1)
	go func() { done <- q.Publish(ctx, batuta.Message{ID: "c"}) }()
	ds := receiveWithin(t, q, 1)
	require.Equal(t, 2, q.Len())
	require.NoError(t, q.Ack(ctx, ds[0]))
	require.NoError(t, <-done)
	require.Equal(t, 2, q.Len())

	// Oversized bodies are refused.
	err = q.Publish(ctx, batuta.Message{ID: "big", Body: []byte("123456789")})
	var pe *batuta.PayloadTooLargeError
	require.ErrorAs(t, err, &pe)
	require.Equal(t, 9, pe.Size)
	require.Equal(t, 8, pe.Limit)

	// A blocked Publish returns ErrClosed when its handle closes.
	go func() { done <- q.Publish(ctx, batuta.Message{ID: "d"}) }()
	require.NoError(t, q.Close())
	require.ErrorIs(t, <-done, batuta.ErrClosed)
}

func TestMemoryQueueStaleReceipt(t *testing.T) {
	t.Parallel()
	clock := batutatest.NewFakeClock(time.Now())
	q := newQueue(t, batuta.MemoryQueueConfig{VisibilityTimeout: time.Minute, Clock: clock})
	ctx := context.Background()
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "m", Body: []byte(`{"a":1}`)}))
	first := receiveWithin(t, q, 1)[0]
	require.Equal(t, 1, q.InFlight())

	// The visibility timeout passes on the fake clock: redelivered.
	clock.Advance(time.Minute)
	second := receiveWithin(t, q, 1)[0]
	require.Equal(t, "m", second.ID)
	require.Equal(t, 2, second.Attempt)

	// The first delivery is no longer held: its settlements are fenced.
	require.ErrorIs(t, q.Ack(ctx, first), batuta.ErrLeaseLost)
	require.ErrorIs(t, q.Nack(ctx, first, 0), batuta.ErrLeaseLost)
	require.NoError(t, q.Ack(ctx, second))
	require.ErrorIs(t, q.Ack(ctx, second), batuta.ErrLeaseLost, "double ack")
	require.Zero(t, q.Len())

	// A receipt from elsewhere is refused.
	require.Error(t, q.Ack(ctx, batuta.Delivery{Message: batuta.Message{ID: "x"}}))
}

func TestMemoryQueueNackDelayOnFakeClock(t *testing.T) {
	t.Parallel()
	clock := batutatest.NewFakeClock(time.Now())
	q := newQueue(t, batuta.MemoryQueueConfig{Clock: clock})
	ctx := context.Background()
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "m"}))
	d := receiveWithin(t, q, 1)[0]
	require.NoError(t, q.Nack(ctx, d, time.Hour))

	got := make(chan batuta.Delivery, 1)
	go func() {
		ds, err := q.Receive(ctx, 1)
		if err == nil {
			got <- ds[0]
		}
		close(got)
	}()
	// The waiting Receive set a timer for the delay; nothing before it.
	require.True(t, clock.WaitForTimers(1, 10*time.Second))
	clock.Advance(59 * time.Minute)
	select {
	case d := <-got:
		t.Fatalf("redelivered %q before its delay", d.ID)
	default:
	}
	clock.Advance(time.Minute)
	d = <-got
	require.Equal(t, "m", d.ID)
	require.Equal(t, 2, d.Attempt)
}

func TestMemoryQueueCopiesMessages(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	ctx := context.Background()
	body := []byte("abc")
	headers := map[string]string{"k": "v"}
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "m", Body: body, Headers: headers}))
	body[0] = 'X'
	headers["k"] = "changed"
	d := receiveWithin(t, q, 1)[0]
	require.Equal(t, "abc", string(d.Body))
	require.Equal(t, "v", d.Headers["k"])
	d.Body[0] = 'Y' // a consumer scribbling on its copy
	require.NoError(t, q.Nack(ctx, d, 0))
	d = receiveWithin(t, q, 1)[0]
	require.Equal(t, "abc", string(d.Body))
}
