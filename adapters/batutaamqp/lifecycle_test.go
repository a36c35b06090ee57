package batutaamqp

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

// receiveN receives exactly n deliveries.
func receiveN(t *testing.T, ctx context.Context, q *Queue, n int) []batuta.Delivery {
	t.Helper()
	var out []batuta.Delivery
	for len(out) < n {
		ds, err := q.Receive(ctx, n-len(out))
		require.NoError(t, err)
		out = append(out, ds...)
	}
	return out
}

func publishIDs(t *testing.T, ctx context.Context, q *Queue, prefix string, n int) {
	t.Helper()
	for i := range n {
		require.NoError(t, q.Publish(ctx, batuta.Message{ID: prefix + strconv.Itoa(i)}))
	}
}

// TestShutdownWaitsForSettlement: Shutdown stops intake at once, keeps Ack
// and Nack working for the deliveries already handed out, and returns once
// they are all settled; nothing is redelivered afterwards.
func TestShutdownWaitsForSettlement(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	cfg.Prefetch = 10
	q := openQueue(t, brokerURL(), cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	publishIDs(t, ctx, q, "s", 3)
	ds := receiveN(t, ctx, q, 3)

	shut := make(chan error, 1)
	go func() { shut <- q.Shutdown(ctx) }()
	require.Eventually(t, func() bool {
		_, err := q.Receive(ctx, 1)
		return errors.Is(err, batuta.ErrClosed)
	}, 10*time.Second, time.Millisecond, "Receive refuses once Shutdown began")
	require.ErrorIs(t, q.Publish(ctx, batuta.Message{}), batuta.ErrClosed)

	require.NoError(t, q.Ack(ctx, ds[0]))
	require.NoError(t, q.Nack(ctx, ds[1], time.Second)) // still works while draining
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a delivery still held", err)
	default:
	}
	require.NoError(t, q.Ack(ctx, ds[2]))
	require.NoError(t, <-shut)
	require.ErrorIs(t, q.Ack(ctx, ds[2]), batuta.ErrLeaseLost, "no second ack")

	// Only the nacked message comes back (after its delay), as attempt 2.
	other := openQueue(t, brokerURL(), cfg)
	got := receiveN(t, ctx, other, 1)
	require.Equal(t, "s1", got[0].ID)
	require.Equal(t, 2, got[0].Attempt)
	require.NoError(t, other.Ack(ctx, got[0]))
	require.Zero(t, queueDepth(t, admin, cfg.Queue))
}

// TestShutdownTimeoutRequeues: when ctx ends first, unsettled deliveries go
// back to the broker (redelivered to another consumer) and settling them
// afterwards fails without acking anything.
func TestShutdownTimeoutRequeues(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	q := openQueue(t, brokerURL(), cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	publishIDs(t, ctx, q, "t", 1)
	ds := receiveN(t, ctx, q, 1)

	sctx, scancel := context.WithCancel(ctx)
	scancel()
	require.ErrorIs(t, q.Shutdown(sctx), context.Canceled)
	require.ErrorIs(t, q.Ack(ctx, ds[0]), batuta.ErrClosed)
	require.NoError(t, q.Close(), "Close after Shutdown is harmless")

	other := openQueue(t, brokerURL(), cfg)
	got := receiveN(t, ctx, other, 1)
	require.Equal(t, "t0", got[0].ID)
	require.Equal(t, 2, got[0].Attempt)
	require.NoError(t, other.Ack(ctx, got[0]))
}

// TestNewReusesConnection: New works on the caller's connection, reopens
// its channels when one is closed under it, and leaves the connection open
// on Close.
func TestNewReusesConnection(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	conn, err := amqp.Dial(brokerURL())
	require.NoError(t, err)
	defer func() { _ = conn.Close() }()
	q, err := New(t.Context(), conn, cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, q.Close()) }()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	publishIDs(t, ctx, q, "n", 1)
	ds := receiveN(t, ctx, q, 1)
	// A channel-level failure: the broker closes the consuming channel.
	q.mu.Lock()
	s := q.sess
	q.mu.Unlock()
	require.NoError(t, s.cons.Close())
	waitReconnects(t, q, 1)
	require.ErrorIs(t, q.Ack(ctx, ds[0]), batuta.ErrLeaseLost)
	got := receiveN(t, ctx, q, 1)
	require.Equal(t, "n0", got[0].ID)
	require.Equal(t, 2, got[0].Attempt)
	require.NoError(t, q.Ack(ctx, got[0]))
	require.False(t, conn.IsClosed(), "the channels were reopened on the caller's connection")

	require.NoError(t, q.Close())
	require.False(t, conn.IsClosed(), "Close leaves the caller's connection open")
}

// TestNewWithoutRedial: once the caller's connection closes, a Queue from
// New without Redial fails every call with a clear error; with Redial it
// carries on over a new connection.
func TestNewWithoutRedial(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	conn, err := amqp.Dial(brokerURL())
	require.NoError(t, err)
	q, err := New(ctx, conn, cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, q.Close()) }()
	require.NoError(t, conn.Close())
	err = q.Publish(ctx, batuta.Message{})
	require.ErrorContains(t, err, "Config.Redial is nil")
	_, err = q.Receive(ctx, 1)
	require.ErrorContains(t, err, "Config.Redial is nil")

	conn2, err := amqp.Dial(brokerURL())
	require.NoError(t, err)
	cfg.Redial = func(ctx context.Context) (*amqp.Connection, error) { return amqp.Dial(brokerURL()) }
	q2, err := New(ctx, conn2, cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, q2.Close()) }()
	require.NoError(t, conn2.Close())
	waitReconnects(t, q2, 1)
	publishIDs(t, ctx, q2, "r", 1)
	got := receiveN(t, ctx, q2, 1)
	require.Equal(t, "r0", got[0].ID)
	require.NoError(t, q2.Ack(ctx, got[0]))
}

// TestPublishToDeletedQueue: a message the broker cannot route (the queue
// was deleted under the adapter) is an error, not a silent loss.
func TestPublishToDeletedQueue(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	q := openQueue(t, brokerURL(), cfg)
	ch, err := admin.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDelete(cfg.Queue, false, false, false)
	require.NoError(t, err)
	require.NoError(t, ch.Close())
	err = q.Publish(t.Context(), batuta.Message{ID: "lost?"})
	require.ErrorIs(t, err, ErrQueueNotFound)
	require.ErrorContains(t, err, "unroutable")
}

// TestSettlementErrors: a delivery is settled once; the visibility timer
// takes it back from a slow holder; foreign receipts are refused.
func TestSettlementErrors(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	cfg.VisibilityTimeout = 100 * time.Millisecond
	q := openQueue(t, brokerURL(), cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	publishIDs(t, ctx, q, "e", 2)
	ds := receiveN(t, ctx, q, 1)
	require.NoError(t, q.Ack(ctx, ds[0]))
	require.ErrorIs(t, q.Ack(ctx, ds[0]), batuta.ErrLeaseLost)
	require.ErrorIs(t, q.Nack(ctx, ds[0], 0), batuta.ErrLeaseLost)
	require.ErrorContains(t, q.Ack(ctx, batuta.Delivery{Message: batuta.Message{ID: "x"}}), "not received from this Queue")

	slow := receiveN(t, ctx, q, 1)[0]
	again := receiveN(t, ctx, q, 1)[0] // after the visibility timeout
	require.Equal(t, slow.ID, again.ID)
	require.Equal(t, 2, again.Attempt)
	err := q.Ack(ctx, slow)
	require.ErrorIs(t, err, batuta.ErrLeaseLost)
	require.ErrorContains(t, err, "visibility timeout")
	require.NoError(t, q.Ack(ctx, again))
	_, err = q.Receive(ctx, 0)
	require.ErrorIs(t, err, batuta.ErrInvalidConfig)
}

// TestDeadLetters: the queue trigger dead-letters a poison message through
// q.DeadLetters() into the dead-letter queue, with the reason headers; and
// the broker's delivery limit dead-letters a message whose consumers keep
// dying on it without settling it.
func TestDeadLetters(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	cfg.DeliveryLimit = 2
	q := openQueue(t, brokerURL(), cfg)
	dlq := openQueue(t, brokerURL(), Config{Queue: cfg.Queue + ".dead", Passive: true, Logger: quietLogger()})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "poison", Body: []byte(`"p"`), Headers: map[string]string{"type": "order.created"}}))
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: q, DeadLetter: q.DeadLetters(), MaxDeliveries: 2, RetryDelay: 10 * time.Millisecond, Logger: quietLogger(),
	})
	require.NoError(t, err)
	tctx, tcancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- trig.Run(tctx, func(context.Context, batuta.Event) error { return errors.New("boom") })
	}()
	dead := receiveN(t, ctx, dlq, 1)[0]
	tcancel()
	require.NoError(t, <-runErr)
	require.Equal(t, "poison", dead.ID)
	require.Equal(t, 1, dead.Attempt, "a dead letter starts afresh in the dead-letter queue")
	require.Equal(t, []byte(`"p"`), dead.Body)
	require.Equal(t, string(batuta.DeadLetterMaxDeliveries), dead.Headers[batuta.HeaderDeadLetterReason])
	require.Equal(t, "2", dead.Headers[batuta.HeaderDeadLetterAttempts])
	require.Equal(t, "boom", dead.Headers[batuta.HeaderDeadLetterError])
	require.Equal(t, "order.created", dead.Headers["type"])
	require.NoError(t, dlq.Ack(ctx, dead))

	// Broker-side backstop: consumers that close without settling.
	require.NoError(t, q.Close())
	require.NoError(t, q.Close(), "a second Close is harmless")
	opener := Config{Queue: cfg.Queue, DeliveryLimit: 2, Logger: quietLogger(), VisibilityTimeout: -1}
	pub := openQueue(t, brokerURL(), opener)
	require.NoError(t, pub.Publish(ctx, batuta.Message{ID: "crash-loop"}))
	for want := 1; want <= 3; want++ {
		c := openQueue(t, brokerURL(), opener)
		d := receiveN(t, ctx, c, 1)[0]
		require.Equal(t, "crash-loop", d.ID)
		require.Equal(t, want, d.Attempt)
		require.NoError(t, c.Close()) // "crash": unsettled
	}
	dead = receiveN(t, ctx, dlq, 1)[0]
	require.Equal(t, "crash-loop", dead.ID)
	require.NoError(t, dlq.Ack(ctx, dead))
	require.Zero(t, queueDepth(t, admin, cfg.Queue))
}

// TestPrefetchFollowsDemand: with Prefetch 0 the prefetch starts at the
// first Receive's max and grows to what the caller holds plus asks for,
// keeping publish order across the consumer restart.
func TestPrefetchFollowsDemand(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	q := openQueue(t, brokerURL(), cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	const n = 30
	publishIDs(t, ctx, q, "p", n)
	prefetch := func() int {
		q.mu.Lock()
		defer q.mu.Unlock()
		q.sess.mu.Lock()
		defer q.sess.mu.Unlock()
		return q.sess.prefetch
	}
	var got []batuta.Delivery
	got = append(got, receiveN(t, ctx, q, 1)...)
	require.Equal(t, 2, prefetch())
	got = append(got, receiveN(t, ctx, q, 10)...) // holding 1, asking 10
	require.Equal(t, 22, prefetch())
	for _, d := range got {
		require.NoError(t, q.Ack(ctx, d))
	}
	got = append(got, receiveN(t, ctx, q, 5)...)
	require.Equal(t, 22, prefetch(), "0 held + 5 asked: no growth")
	got = append(got, receiveN(t, ctx, q, 12)...)
	require.Equal(t, 2*(5+12), prefetch(), "held 5 + asked 12")
	ids := map[string]bool{}
	for i, d := range got {
		require.Equal(t, 1, d.Attempt, "growing spends no delivery")
		ids[d.ID] = true
		if i >= 11 {
			require.NoError(t, q.Ack(ctx, d))
		}
	}
	require.Len(t, ids, 28)

	fixedCfg := testConfig(t, admin)
	fixedCfg.Prefetch = 5
	fixed := openQueue(t, brokerURL(), fixedCfg)
	publishIDs(t, ctx, fixed, "f", 10)
	held := receiveN(t, ctx, fixed, 1)
	held = append(held, receiveN(t, ctx, fixed, 4)...)
	fixed.mu.Lock()
	require.Equal(t, 5, fixed.sess.prefetch)
	fixed.mu.Unlock()
	sctx, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer scancel()
	_, err := fixed.Receive(sctx, 5)
	require.ErrorIs(t, err, context.DeadlineExceeded, "a fixed prefetch of 5 with 5 held gets nothing more")
	for _, d := range held {
		require.NoError(t, fixed.Ack(ctx, d))
	}
}
