package batutaredis_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/batuta-dev/batuta/internal/faultproxy"
	"github.com/stretchr/testify/require"
)

// TestFaultConnectionCutMidStream publishes 10,000 messages, consumes them
// through a TCP proxy with two consumers, and cuts every connection twice
// while they consume. Every message must be processed at least once and
// the stream must end empty; duplicates (deliveries whose ack was lost with
// the connection, taken over after the visibility timeout) are counted and
// reported.
func TestFaultConnectionCutMidStream(t *testing.T) {
	for _, tc := range []struct{ name, query string }{
		// go-redis retries a command whose connection failed (3 times by
		// default): a command that ran but whose reply was lost runs again.
		{"ClientRetries", ""},
		// No client retries: every cut surfaces as an error, and entries
		// read by a lost XREADGROUP reply stay pending until taken over.
		{"NoClientRetries", "?max_retries=-1"},
	} {
		t.Run(tc.name, func(t *testing.T) { testFaultCut(t, tc.query) })
	}
}

func testFaultCut(t *testing.T, query string) {
	admin := requireRedis(t)
	const (
		total     = 10_000
		consumers = 2
		workers   = 4 // receive loops per consumer
	)
	proxy, err := faultproxy.Start(admin.Options().Addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })

	cfg := batutaredis.Config{
		Stream:            uniqueStream(t, admin),
		VisibilityTimeout: time.Second,
		ClaimInterval:     200 * time.Millisecond,
		BlockTimeout:      200 * time.Millisecond,
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	// Publish straight to Redis, concurrently.
	pub, err := batutaredis.New(ctx, admin, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pub.Close() })
	var pwg sync.WaitGroup
	perr := make(chan error, 8)
	for p := range 8 {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for i := p; i < total; i += 8 {
				if err := pub.Publish(ctx, batuta.Message{ID: fmt.Sprintf("m-%05d", i), Body: []byte(`{}`)}); err != nil {
					perr <- err
					return
				}
			}
		}()
	}
	pwg.Wait()
	close(perr)
	require.NoError(t, <-perr)

	start := time.Now()
	// Consume through the proxy.
	proxyURL := "redis://" + proxy.Addr() + "/" + fmt.Sprint(admin.Options().DB) + query
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
	queues := make([]*batutaredis.Queue, consumers)
	for c := range consumers {
		q, err := batutaredis.Open(ctx, proxyURL, cfg)
		require.NoError(t, err)
		queues[c] = q
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for rctx.Err() == nil {
					ds, err := q.Receive(rctx, 50)
					if err != nil {
						if rctx.Err() == nil {
							errCount.Add(1)
							lastErr.Store(err.Error())
						}
						continue
					}
					for _, d := range ds {
						mu.Lock()
						seen[d.ID]++
						mu.Unlock()
						processed.Add(1)
						if err := q.Ack(rctx, d); err != nil && rctx.Err() == nil {
							errCount.Add(1)
							lastErr.Store(err.Error())
						}
					}
				}
			}()
		}
	}

	// Cut every connection twice, at about 20% and 60% of the messages.
	for _, at := range []int64{total / 5, total * 3 / 5} {
		require.Eventually(t, func() bool { return processed.Load() >= at }, 60*time.Second, time.Millisecond,
			"consumers stalled at %d processed", processed.Load())
		cut := proxy.CutAll()
		t.Logf("%v: cut %d connections after %d messages processed", time.Since(start).Round(time.Millisecond), cut, processed.Load())
		require.Positive(t, cut)
	}

	// Done when every message was seen and the stream holds nothing:
	// no entry left and nothing pending in the group.
	drained := func() bool {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n < total {
			return false
		}
		xlen, err := admin.XLen(ctx, cfg.Stream).Result()
		if err != nil || xlen != 0 {
			return false
		}
		p, err := admin.XPending(ctx, cfg.Stream, "batuta").Result()
		return err == nil && p.Count == 0
	}
	require.Eventually(t, drained, 60*time.Second, 20*time.Millisecond,
		"not drained: %d distinct of %d seen", func() int { mu.Lock(); defer mu.Unlock(); return len(seen) }(), total)
	t.Logf("%v: drained", time.Since(start).Round(time.Millisecond))
	stop()
	wg.Wait()
	for _, q := range queues {
		require.NoError(t, q.Close())
	}

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, total, "every message processed at least once")
	for i := range total {
		require.Positive(t, seen[fmt.Sprintf("m-%05d", i)], "message m-%05d lost", i)
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	msg, _ := lastErr.Load().(string)
	t.Logf("10,000 messages, 2 cuts: %d processed, %d distinct, %d duplicates (%.2f%%), %d transient errors (last: %s)",
		processed.Load(), len(seen), dups, 100*float64(dups)/total, errCount.Load(), msg)
	require.EqualValues(t, total+dups, processed.Load())
	require.False(t, strings.Contains(msg, "panic"))
	require.False(t, errors.Is(context.Cause(ctx), context.DeadlineExceeded))
}
