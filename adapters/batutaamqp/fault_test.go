package batutaamqp

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/faultproxy"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

// startProxy starts a fault proxy in front of the broker and returns it
// with the broker URL rewritten to go through it.
func startProxy(t *testing.T) (*faultproxy.Proxy, string) {
	t.Helper()
	u, err := url.Parse(brokerURL())
	require.NoError(t, err)
	target := u.Host
	if u.Port() == "" {
		target += ":5672"
	}
	p, err := faultproxy.Start(target)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	u.Host = p.Addr()
	return p, u.String()
}

// waitReconnects waits until q has reconnected n times in all.
func waitReconnects(t *testing.T, q *Queue, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return q.reconnects.Load() >= n }, 30*time.Second, 5*time.Millisecond,
		"queue reconnected %d times, want %d", q.reconnects.Load(), n)
}

// publishN publishes n messages with IDs prefix-0 .. prefix-(n-1), from 16
// goroutines.
func publishN(t *testing.T, q *Queue, prefix string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var (
		wg   sync.WaitGroup
		next atomic.Int64
		errs = make(chan error, 16)
	)
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				msg := batuta.Message{ID: prefix + "-" + strconv.Itoa(i), Body: []byte(strconv.Itoa(i))}
				if err := q.Publish(ctx, msg); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// TestFaultCutTwiceWhileConsuming is the fault test: 10,000
// messages published, the consumer's connection cut twice (TCP reset)
// while it consumes. Every message is processed at least once, none is
// lost, and the duplicates are counted and reported. The stale receipts
// of the cut channels must neither panic nor ack anything on the new
// channels: a stray ack there would make the broker close the channel
// (PRECONDITION_FAILED, unknown delivery tag), which would show up as a
// third reconnection.
func TestFaultCutTwiceWhileConsuming(t *testing.T) {
	admin := adminConn(t)
	proxy, proxied := startProxy(t)
	cfg := testConfig(t, admin)
	cfg.Prefetch = 100
	const n = 10_000

	producer := openQueue(t, brokerURL(), cfg)
	publishN(t, producer, "fault", n)
	require.Equal(t, n, queueDepth(t, admin, cfg.Queue))

	consumer := openQueue(t, proxied, cfg)
	var (
		mu         sync.Mutex
		seen       = make(map[string]int, n)
		processed  atomic.Int64
		staleAcks  atomic.Int64
		redelivery atomic.Int64
		allSeen    = make(chan struct{})
		allOnce    sync.Once
	)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				ds, err := consumer.Receive(ctx, 50)
				if err != nil {
					return
				}
				for _, d := range ds {
					if d.Attempt > 1 {
						redelivery.Add(1)
					}
					mu.Lock()
					seen[d.ID]++
					distinct := len(seen)
					mu.Unlock()
					processed.Add(1)
					if distinct == n {
						allOnce.Do(func() { close(allSeen) })
					}
					if err := consumer.Ack(ctx, d); err != nil {
						if !errors.Is(err, batuta.ErrLeaseLost) {
							t.Errorf("Ack(%s): %v, want success or ErrLeaseLost", d.ID, err)
						}
						staleAcks.Add(1)
					}
				}
			}
		})
	}
	// Cut the connection twice while consuming, waiting for each
	// reconnection.
	for i, at := range []int64{n * 3 / 10, n * 65 / 100} {
		require.Eventually(t, func() bool { return processed.Load() >= at }, time.Minute, time.Millisecond)
		require.Positive(t, proxy.CutAll(), "cut %d found no live connection", i+1)
		waitReconnects(t, consumer, int64(i+1))
	}
	select {
	case <-allSeen:
	case <-ctx.Done():
		mu.Lock()
		got := len(seen)
		mu.Unlock()
		t.Fatalf("only %d of %d messages processed", got, n)
	}
	cancel()
	wg.Wait()
	require.NoError(t, consumer.Close())

	// Whatever is left in the queue was processed already (its ack was
	// lost with a cut channel) and would be processed again.
	left := drainIDs(t, admin, cfg.Queue)
	mu.Lock()
	defer mu.Unlock()
	for _, id := range left {
		if seen[id] == 0 {
			t.Fatalf("message %s left in the queue was never processed", id)
		}
	}
	require.Len(t, seen, n, "every message processed at least once")
	for i := range n {
		if seen["fault-"+strconv.Itoa(i)] == 0 {
			t.Fatalf("message fault-%d lost", i)
		}
	}
	dups := 0
	for _, c := range seen {
		dups += c - 1
	}
	require.EqualValues(t, 2, consumer.reconnects.Load(), "one reconnection per cut, no channel error from a stray ack")
	t.Logf("fault test: %d messages, 2 cuts, %d deliveries processed, %d duplicates processed, "+
		"%d redeliveries (Attempt > 1), %d stale acks refused, %d already-processed messages left in the queue (duplicates in waiting)",
		n, processed.Load(), dups, redelivery.Load(), staleAcks.Load(), len(left))
}

// drainIDs removes every message from a queue (no consumer may be left on
// it) and returns their IDs.
func drainIDs(t *testing.T, admin *amqp.Connection, queue string) []string {
	t.Helper()
	ch, err := admin.Channel()
	require.NoError(t, err)
	defer func() { _ = ch.Close() }()
	var ids []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		require.NoError(t, err)
		if st.Messages == 0 {
			return ids
		}
		require.True(t, time.Now().Before(deadline), "queue %s not drained: %d left", queue, st.Messages)
		// Consume exactly the messages counted, without acks.
		tag := "drain-" + uniqueName()
		deliveries, err := ch.Consume(queue, tag, true, false, false, false, nil)
		require.NoError(t, err)
		for range st.Messages {
			d := <-deliveries
			ids = append(ids, d.MessageId)
		}
		require.NoError(t, ch.Cancel(tag, false))
		for d := range deliveries { // requeued after the count, raced the cancel
			ids = append(ids, d.MessageId)
		}
	}
}

// TestFaultPublishAcrossCuts: Publish rides over connection cuts: every
// call that returned nil stored its message (once or, after a lost
// confirmation, twice).
func TestFaultPublishAcrossCuts(t *testing.T) {
	admin := adminConn(t)
	proxy, proxied := startProxy(t)
	cfg := testConfig(t, admin)
	const n = 2000
	producer := openQueue(t, proxied, cfg)
	var (
		published atomic.Int64
		next      atomic.Int64
		wg        sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for range 8 {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= n {
					return
				}
				if err := producer.Publish(ctx, batuta.Message{ID: fmt.Sprintf("pub-%d", i)}); err != nil {
					t.Errorf("Publish %d: %v", i, err)
					return
				}
				published.Add(1)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for i, at := range []int64{n / 4, n / 2} {
		require.Eventually(t, func() bool { return published.Load() >= at }, time.Minute, time.Millisecond)
		proxy.CutAll()
		waitReconnects(t, producer, int64(i+1))
	}
	<-done
	ids := drainIDs(t, admin, cfg.Queue)
	got := make(map[string]int, n)
	for _, id := range ids {
		got[id]++
	}
	for i := range n {
		if got[fmt.Sprintf("pub-%d", i)] == 0 {
			t.Fatalf("message pub-%d published (nil error) but not stored", i)
		}
	}
	t.Logf("publish across 2 cuts: %d published, %d stored (%d duplicates)", n, len(ids), len(ids)-len(got))
}

// TestStaleReceiptAfterReconnect: a delivery received before a cut cannot
// be settled after it (ErrLeaseLost, nothing sent on the new channel); the
// broker redelivers the message with its Attempt incremented.
func TestStaleReceiptAfterReconnect(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	proxy, proxied := startProxy(t)
	cfg := testConfig(t, admin)
	q := openQueue(t, proxied, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "stale"}))
	ds, err := q.Receive(ctx, 1)
	require.NoError(t, err)
	old := ds[0]
	require.Equal(t, 1, old.Attempt)

	proxy.CutAll()
	waitReconnects(t, q, 1)
	for _, settle := range []func() error{
		func() error { return q.Ack(ctx, old) },
		func() error { return q.Nack(ctx, old, 0) },
		func() error { return q.Nack(ctx, old, time.Second) },
	} {
		require.ErrorIs(t, settle(), batuta.ErrLeaseLost)
	}
	ds, err = q.Receive(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, "stale", ds[0].ID)
	require.Equal(t, 2, ds[0].Attempt)
	require.NoError(t, q.Ack(ctx, ds[0]))
	require.EqualValues(t, 1, q.reconnects.Load(), "no channel error after the stale settlements")
}
