package batutanats_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutanats"
	"github.com/batuta-dev/batuta/internal/faultproxy"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
)

// TestFaultConnectionCutMidStream publishes 10,000 messages, consumes them
// through a TCP proxy with two consumers (connections), and cuts every
// connection twice while they consume. Every message must be processed at
// least once and the stream must end empty; duplicates (messages whose
// delivery or ack was lost with the connection, redelivered after AckWait)
// are counted and reported.
func TestFaultConnectionCutMidStream(t *testing.T) {
	js := requireNATS(t)
	const (
		total     = 10_000
		consumers = 2
		workers   = 4 // receive loops per consumer
	)
	target := strings.TrimPrefix(natsURL(), "nats://")
	proxy, err := faultproxy.Start(target)
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })

	cfg := batutanats.Config{
		Stream:   uniqueStream(t, js),
		AckWait:  time.Second,
		PollWait: 200 * time.Millisecond,
		ConnectOptions: []nats.Option{
			nats.ReconnectWait(20 * time.Millisecond),
			nats.IgnoreDiscoveredServers(),
		},
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	// Publish straight to the server, concurrently.
	pub, err := batutanats.New(ctx, js, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pub.Close() })
	var pwg sync.WaitGroup
	perr := make(chan error, 16)
	for p := range 16 {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for i := p; i < total; i += 16 {
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
	queues := make([]*batutanats.Queue, consumers)
	for c := range consumers {
		q, err := batutanats.Open(ctx, "nats://"+proxy.Addr(), cfg)
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
							time.Sleep(10 * time.Millisecond) // back off while reconnecting
						}
						continue
					}
					for _, d := range ds {
						mu.Lock()
						seen[d.ID]++
						mu.Unlock()
						processed.Add(1)
						actx, acancel := context.WithTimeout(rctx, 2*time.Second)
						if err := q.Ack(actx, d); err != nil && rctx.Err() == nil {
							errCount.Add(1)
							lastErr.Store(err.Error())
						}
						acancel()
					}
				}
			}()
		}
	}

	for _, at := range []int64{total / 5, total * 3 / 5} {
		require.Eventually(t, func() bool { return processed.Load() >= at }, 60*time.Second, time.Millisecond,
			"consumers stalled at %d processed", processed.Load())
		cut := proxy.CutAll()
		t.Logf("%v: cut %d connections after %d messages processed", time.Since(start).Round(time.Millisecond), cut, processed.Load())
		require.Positive(t, cut)
	}

	// Done when every message was seen and the stream is empty (work-queue
	// retention removes acked messages) with nothing pending.
	stream, err := js.Stream(ctx, cfg.Stream)
	require.NoError(t, err)
	drained := func() bool {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n < total {
			return false
		}
		info, err := stream.Info(ctx)
		if err != nil || info.State.Msgs != 0 {
			return false
		}
		ci, err := js.Consumer(ctx, cfg.Stream, "batuta")
		if err != nil {
			return false
		}
		cinfo, err := ci.Info(ctx)
		return err == nil && cinfo.NumAckPending == 0 && cinfo.NumPending == 0
	}
	require.Eventually(t, drained, 60*time.Second, 20*time.Millisecond, "not drained")
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
	require.Positive(t, proxy.Cuts())
}
