package main

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
	"github.com/batuta-dev/batuta/adapters/batutanats"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// batutaSide runs the queue trigger over one broker adapter.
type batutaSide struct {
	label string
	// open returns a queue handle on a fresh queue named name (default
	// adapter settings) and a func that deletes the queue.
	open func(ctx context.Context, name string) (batuta.Queue, func(), error)
	free func()
	// receiveMax is QueueTriggerConfig.ReceiveMax at concurrency > 1.
	receiveMax int
}

func (s *batutaSide) name() string { return s.label }
func (s *batutaSide) close()       { s.free() }

func newBatutaRedis(ctx context.Context, url string, receiveMax int) (*batutaSide, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	admin := redis.NewClient(opts)
	if err := admin.Ping(ctx).Err(); err != nil {
		_ = admin.Close()
		return nil, err
	}
	return &batutaSide{
		label:      "batuta-redis",
		receiveMax: receiveMax,
		open: func(ctx context.Context, name string) (batuta.Queue, func(), error) {
			q, err := batutaredis.Open(ctx, url, batutaredis.Config{Stream: "bench:" + name})
			if err != nil {
				return nil, nil, err
			}
			return q, func() {
				_ = admin.Del(context.Background(), "bench:"+name, "{bench:"+name+"}:delayed", "bench:"+name+":dead").Err()
			}, nil
		},
		free: func() { _ = admin.Close() },
	}, nil
}

func newBatutaNATS(ctx context.Context, url string, receiveMax int) (*batutaSide, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &batutaSide{
		label:      "batuta-nats",
		receiveMax: receiveMax,
		open: func(ctx context.Context, name string) (batuta.Queue, func(), error) {
			stream := "bench_" + name
			q, err := batutanats.Open(ctx, url, batutanats.Config{Stream: stream})
			if err != nil {
				return nil, nil, err
			}
			return q, func() { _ = js.DeleteStream(context.Background(), stream) }, nil
		},
		free: nc.Close,
	}, nil
}

func randomName() string { return strings.ToLower(rand.Text()[:12]) }

// publishAll publishes n messages with 32 publishers.
func publishAll(ctx context.Context, q batuta.Queue, prefix string, n int) error {
	const publishers = 32
	var wg sync.WaitGroup
	errc := make(chan error, publishers)
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := p; i < n; i += publishers {
				if err := q.Publish(ctx, batuta.Message{ID: fmt.Sprintf("%s-%d", prefix, i), Body: []byte(`{}`)}); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// runTrigger runs an orchestrator with one no-op workflow fed by a queue
// trigger over q until stop is closed. task is called at each task start.
// ocfg and tcfg are completed with the store, workflow and queue.
func runTrigger(ctx context.Context, q batuta.Queue, ocfg batuta.Config, tcfg batuta.QueueTriggerConfig,
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

func (s *batutaSide) throughput(ctx context.Context, n, c int) (float64, error) {
	name := randomName()
	q, cleanup, err := s.open(ctx, name)
	if err != nil {
		return 0, err
	}
	defer cleanup()
	defer q.Close()
	if err := publishAll(ctx, q, name, n); err != nil {
		return 0, fmt.Errorf("prefill: %w", err)
	}
	receivers, receiveMax := 1, 1
	if c > 1 {
		receiveMax = min(max(s.receiveMax, 1), c)
		receivers = (c + receiveMax - 1) / receiveMax
	}
	var (
		count   atomic.Int64
		start   time.Time
		last    atomic.Int64 // unix nanos of the n-th task start
		stop    = make(chan struct{})
		stopped sync.Once
	)
	err = runTrigger(ctx, q,
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

func (s *batutaSide) latency(ctx context.Context, rate int, d time.Duration) ([]time.Duration, error) {
	name := randomName()
	q, cleanup, err := s.open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	defer q.Close()
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
		errc <- runTrigger(ctx, q, batuta.Config{}, batuta.QueueTriggerConfig{}, task, func() {}, stop)
	}()
	// Warm up: one message through the whole path before measuring.
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
	if err := openLoop(ctx, rate, total, func(i int) error {
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

// openLoop calls publish total times at rate per second on a fixed
// schedule, each call in its own goroutine so a slow call does not delay
// the next (open loop).
func openLoop(ctx context.Context, rate, total int, publish func(i int) error) error {
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := publish(i); err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		}()
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	return nil
}
