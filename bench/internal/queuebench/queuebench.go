// Package queuebench is the harness of the queue benchmarks (bench/queues
// for Redis and NATS, bench/amqpbench for RabbitMQ): the same two scenarios
// over any batuta.Queue, so their figures compare.
//
//	throughput  n messages published while no consumer runs, then drained
//	            through the queue trigger into a one-task no-op workflow
//	            at concurrency c (orchestrator Workers c, in-memory store):
//	            messages/s from consumer start to the last task start
//	latency     open-loop publishing at rate/s for a duration, default
//	            settings everywhere (adapter, trigger, orchestrator):
//	            publish-to-task-start latencies
package queuebench

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
)

// Open returns a handle on a fresh, empty queue and a func that deletes
// the queue once the handle is closed.
type Open func(ctx context.Context) (batuta.Queue, func(), error)

// RandomName returns a fresh lower-case queue name suffix.
func RandomName() string { return strings.ToLower(rand.Text()[:12]) }

// Split returns the non-empty, trimmed comma-separated fields of s.
func Split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// PublishAll publishes n messages (IDs prefix-<i>) with 32 publishers.
func PublishAll(ctx context.Context, q batuta.Queue, prefix string, n int) error {
	const publishers = 32
	var wg sync.WaitGroup
	errc := make(chan error, publishers)
	for p := range publishers {
		wg.Go(func() {
			for i := p; i < n; i += publishers {
				if err := q.Publish(ctx, batuta.Message{ID: fmt.Sprintf("%s-%d", prefix, i), Body: []byte(`{}`)}); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// RunTrigger runs an orchestrator with one no-op workflow fed by a queue
// trigger over q until stop is closed. task is called at each task start,
// started just before the orchestrator runs. ocfg and tcfg are completed
// with the workflow and the queue.
func RunTrigger(ctx context.Context, q batuta.Queue, ocfg batuta.Config, tcfg batuta.QueueTriggerConfig,
	task func(in *batuta.Input), started func(), stop <-chan struct{}) error {
	ocfg.Logger = slog.New(slog.DiscardHandler)
	o, err := batuta.New(ocfg)
	if err != nil {
		return err
	}
	wf := &batuta.Workflow{Name: "bench", Tasks: []batuta.Task{{
		Name: "noop",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			task(in)
			return nil, nil
		},
	}}}
	if err := o.Register(wf); err != nil {
		return err
	}
	tcfg.Queue = q
	tcfg.DeadLetter = batuta.DeadLetterFunc(func(ctx context.Context, dl batuta.DeadLetter) error {
		return fmt.Errorf("unexpected dead letter: %s %s", dl.Reason, dl.Error)
	})
	tcfg.Logger = slog.New(slog.DiscardHandler)
	t, err := batuta.NewQueueTrigger(tcfg)
	if err != nil {
		return err
	}
	if err := o.Bind("bench", t); err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	started()
	go func() { done <- o.Run(rctx) }()
	select {
	case <-stop:
	case <-ctx.Done():
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// Throughput publishes n messages to a fresh queue, then drains them at
// concurrency c with receivers × receiveMax deliveries held by the trigger,
// and returns messages per second of the drain.
func Throughput(ctx context.Context, open Open, n, c, receivers, receiveMax int) (float64, error) {
	q, cleanup, err := open(ctx)
	if err != nil {
		return 0, err
	}
	defer cleanup()
	defer func() { _ = q.Close() }()
	if err := PublishAll(ctx, q, RandomName(), n); err != nil {
		return 0, fmt.Errorf("prefill: %w", err)
	}
	var (
		count   atomic.Int64
		start   time.Time
		last    atomic.Int64 // unix nanos of the n-th task start
		stop    = make(chan struct{})
		stopped sync.Once
	)
	err = RunTrigger(ctx, q,
		batuta.Config{
			Store:           batuta.NewMemoryStore(batuta.MemoryStoreConfig{KeepFinished: 1000}),
			Workers:         c,
			MaxInFlightRuns: -1,
			NoLogHooks:      true,
		},
		batuta.QueueTriggerConfig{Receivers: receivers, ReceiveMax: receiveMax},
		func(*batuta.Input) {
			if count.Add(1) == int64(n) {
				last.Store(time.Now().UnixNano())
				stopped.Do(func() { close(stop) })
			}
		},
		func() { start = time.Now() },
		stop)
	if err != nil {
		return 0, err
	}
	elapsed := time.Duration(last.Load() - start.UnixNano())
	return float64(n) / elapsed.Seconds(), nil
}

// Latency publishes to a fresh queue at rate/s for d, open loop, with
// default settings, and returns the publish-to-task-start latencies. One
// message goes through the whole path first, unmeasured.
func Latency(ctx context.Context, open Open, rate int, d time.Duration) ([]time.Duration, error) {
	q, cleanup, err := open(ctx)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	defer func() { _ = q.Close() }()
	name := RandomName()
	total := int(float64(rate) * d.Seconds())
	var (
		mu      sync.Mutex
		lats    = make([]time.Duration, 0, total)
		warm    = make(chan struct{})
		warmed  sync.Once
		stop    = make(chan struct{})
		stopped sync.Once
	)
	task := func(in *batuta.Input) {
		now := time.Now()
		var sent int64
		if err := json.Unmarshal(in.Event().Data, &sent); err != nil || sent == 0 {
			warmed.Do(func() { close(warm) })
			return
		}
		mu.Lock()
		lats = append(lats, now.Sub(time.Unix(0, sent)))
		full := len(lats) == total
		mu.Unlock()
		if full {
			stopped.Do(func() { close(stop) })
		}
	}
	errc := make(chan error, 1)
	go func() {
		// Default settings: orchestrator, trigger and adapter defaults.
		errc <- RunTrigger(ctx, q, batuta.Config{}, batuta.QueueTriggerConfig{}, task, func() {}, stop)
	}()
	if err := q.Publish(ctx, batuta.Message{ID: name + "-warm", Body: []byte(`0`)}); err != nil {
		return nil, err
	}
	select {
	case <-warm:
	case err := <-errc:
		return nil, fmt.Errorf("trigger stopped during warm-up: %w", err)
	case <-time.After(30 * time.Second):
		return nil, errors.New("warm-up message not processed within 30s")
	}
	if err := OpenLoop(ctx, rate, total, func(i int) error {
		sent := time.Now()
		return q.Publish(ctx, batuta.Message{ID: fmt.Sprintf("%s-%d", name, i), Body: fmt.Appendf(nil, "%d", sent.UnixNano())})
	}); err != nil {
		return nil, err
	}
	select {
	case <-stop:
	case <-time.After(60 * time.Second):
		mu.Lock()
		got := len(lats)
		mu.Unlock()
		return nil, fmt.Errorf("only %d of %d messages processed within 60s of the last publish", got, total)
	}
	if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
		return nil, err
	}
	return lats, nil
}

// OpenLoop calls publish total times at rate per second on a fixed
// schedule, each call in its own goroutine so a slow call does not delay
// the next (open loop).
func OpenLoop(ctx context.Context, rate, total int, publish func(i int) error) error {
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for i := range total {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				wg.Wait()
				return ctx.Err()
			}
		}
		wg.Go(func() {
			if err := publish(i); err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	return nil
}
