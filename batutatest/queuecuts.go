package batutatest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// QueueCuts is a broker queue's connection-cut scenario (TestQueueCuts):
// messages published straight to the broker, consumed through a TCP proxy
// whose connections are all cut twice.
type QueueCuts struct {
	// Publisher is a handle straight to the broker, on the test's fresh
	// queue. Required.
	Publisher batuta.Queue
	// Open opens a consumer handle on the same queue through the proxy.
	// Required.
	Open func(ctx context.Context) (batuta.Queue, error)
	// Cut cuts every proxied connection and returns how many it cut.
	// Required.
	Cut func() int
	// Drained reports whether the broker holds nothing of the queue any
	// more: no message left, nothing pending. Required.
	Drained func(ctx context.Context) bool
	// Messages is how many messages are published. Default 10,000.
	Messages int
	// Publishers publish concurrently. Default 16.
	Publishers int
	// Consumers are handles (connections), each with Workers receive
	// loops. Default 2 and 4.
	Consumers, Workers int
	// ErrorPause is how long a receive loop waits after an error (while
	// the client reconnects). Default none.
	ErrorPause time.Duration
	// AckTimeout bounds each Ack. Default none.
	AckTimeout time.Duration
}

// TestQueueCuts publishes the messages, consumes them with the consumers,
// and cuts every connection twice (at about 20% and 60% of the messages)
// while they consume. Every message must be processed at least once and
// the queue must end drained; duplicates (deliveries or acks lost with the
// connection, redelivered after the visibility timeout) are counted and
// logged, processed = messages + duplicates, and no error mentions a
// panic.
func TestQueueCuts(t *testing.T, s QueueCuts) {
	t.Helper()
	s = s.withDefaults()
	total := s.Messages
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	var pwg sync.WaitGroup
	perr := make(chan error, s.Publishers)
	for p := range s.Publishers {
		pwg.Go(func() {
			for i := p; i < total; i += s.Publishers {
				if err := s.Publisher.Publish(ctx, batuta.Message{ID: fmt.Sprintf("m-%05d", i), Body: []byte(`{}`)}); err != nil {
					perr <- err
					return
				}
			}
		})
	}
	pwg.Wait()
	close(perr)
	must(t, <-perr, "publish")

	start := time.Now()
	var (
		mu        sync.Mutex
		seen      = make(map[string]int, total)
		processed atomic.Int64
		errCount  atomic.Int64
		lastErr   atomic.Value
	)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	queues := make([]batuta.Queue, s.Consumers)
	for c := range s.Consumers {
		q, err := s.Open(ctx)
		must(t, err, "open a consumer")
		queues[c] = q
		for range s.Workers {
			wg.Go(func() { s.consume(rctx, q, &mu, seen, &processed, &errCount, &lastErr) })
		}
	}

	for _, at := range []int64{int64(total) / 5, int64(total) * 3 / 5} {
		Eventually(t, 60*time.Second, fmt.Sprintf("consumers reach %d processed", at), func() bool { return processed.Load() >= at })
		cut := s.Cut()
		t.Logf("%v: cut %d connections after %d messages processed", time.Since(start).Round(time.Millisecond), cut, processed.Load())
		if cut < 1 {
			t.Fatal("no connection to cut")
		}
	}

	Eventually(t, 60*time.Second, "every message seen and the queue drained", func() bool {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		return n >= total && s.Drained(ctx)
	})
	t.Logf("%v: drained", time.Since(start).Round(time.Millisecond))
	stop()
	wg.Wait()
	for _, q := range queues {
		must(t, q.Close(), "close a consumer")
	}

	mu.Lock()
	defer mu.Unlock()
	for i := range total {
		if seen[fmt.Sprintf("m-%05d", i)] == 0 {
			t.Fatalf("message m-%05d lost", i)
		}
	}
	if len(seen) != total {
		t.Fatalf("%d distinct messages processed, want %d", len(seen), total)
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	msg, _ := lastErr.Load().(string)
	t.Logf("%d messages, 2 cuts: %d processed, %d distinct, %d duplicates (%.2f%%), %d transient errors (last: %s)",
		total, processed.Load(), len(seen), dups, 100*float64(dups)/float64(total), errCount.Load(), msg)
	if processed.Load() != int64(total+dups) {
		t.Errorf("%d processed, want %d messages + %d duplicates", processed.Load(), total, dups)
	}
	if strings.Contains(msg, "panic") {
		t.Errorf("an error mentions a panic: %s", msg)
	}
}

func (s QueueCuts) withDefaults() QueueCuts {
	if s.Messages == 0 {
		s.Messages = 10_000
	}
	if s.Publishers == 0 {
		s.Publishers = 16
	}
	if s.Consumers == 0 {
		s.Consumers = 2
	}
	if s.Workers == 0 {
		s.Workers = 4
	}
	return s
}

// consume receives and acks until ctx ends, counting every delivery.
func (s QueueCuts) consume(ctx context.Context, q batuta.Queue, mu *sync.Mutex, seen map[string]int,
	processed, errCount *atomic.Int64, lastErr *atomic.Value) {
	fail := func(err error) {
		errCount.Add(1)
		lastErr.Store(err.Error())
	}
	for ctx.Err() == nil {
		ds, err := q.Receive(ctx, 50)
		if err != nil {
			if ctx.Err() == nil {
				fail(err)
				if s.ErrorPause > 0 {
					time.Sleep(s.ErrorPause) // back off while reconnecting
				}
			}
			continue
		}
		for _, d := range ds {
			mu.Lock()
			seen[d.ID]++
			mu.Unlock()
			processed.Add(1)
			actx, acancel := ctx, context.CancelFunc(func() {})
			if s.AckTimeout > 0 {
				actx, acancel = context.WithTimeout(ctx, s.AckTimeout)
			}
			if err := q.Ack(actx, d); err != nil && ctx.Err() == nil {
				fail(err)
			}
			acancel()
		}
	}
}
