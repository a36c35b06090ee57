package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// asynqSide runs the same workloads through asynq on the same Redis.
type asynqSide struct {
	opt       asynq.RedisClientOpt
	client    *asynq.Client
	inspector *asynq.Inspector
}

func newAsynq(ctx context.Context, url string) (*asynqSide, error) {
	ro, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opt := asynq.RedisClientOpt{Addr: ro.Addr, Username: ro.Username, Password: ro.Password, DB: ro.DB}
	return &asynqSide{opt: opt, client: asynq.NewClient(opt), inspector: asynq.NewInspector(opt)}, nil
}

func (s *asynqSide) name() string { return "asynq" }

func (s *asynqSide) close() {
	_ = s.client.Close()
	_ = s.inspector.Close()
}

// quietLogger drops asynq's logs.
type quietLogger struct{}

func (quietLogger) Debug(...any) {}
func (quietLogger) Info(...any)  {}
func (quietLogger) Warn(...any)  {}
func (quietLogger) Error(...any) {}
func (quietLogger) Fatal(...any) {}

func (s *asynqSide) serve(cfg asynq.Config, h func(*asynq.Task)) (*asynq.Server, error) {
	cfg.Logger = quietLogger{}
	srv := asynq.NewServer(s.opt, cfg)
	mux := asynq.NewServeMux()
	mux.HandleFunc("bench", func(ctx context.Context, t *asynq.Task) error {
		h(t)
		return nil
	})
	return srv, srv.Start(mux)
}

func (s *asynqSide) throughput(ctx context.Context, n, c int) (float64, error) {
	queue := "bench-" + randomName()
	defer func() { _ = s.inspector.DeleteQueue(queue, true) }()
	const publishers = 32
	var wg sync.WaitGroup
	errc := make(chan error, publishers)
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := p; i < n; i += publishers {
				if _, err := s.client.EnqueueContext(ctx, asynq.NewTask("bench", []byte(`{}`)), asynq.Queue(queue)); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return 0, fmt.Errorf("prefill: %w", err)
	}
	var (
		count atomic.Int64
		last  atomic.Int64
		done  = make(chan struct{})
		once  sync.Once
	)
	start := time.Now()
	srv, err := s.serve(asynq.Config{Concurrency: c, Queues: map[string]int{queue: 1}}, func(*asynq.Task) {
		if count.Add(1) == int64(n) {
			last.Store(time.Now().UnixNano())
			once.Do(func() { close(done) })
		}
	})
	if err != nil {
		return 0, err
	}
	defer srv.Shutdown()
	select {
	case <-done:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return float64(n) / time.Duration(last.Load()-start.UnixNano()).Seconds(), nil
}

func (s *asynqSide) latency(ctx context.Context, rate int, d time.Duration) ([]time.Duration, error) {
	queue := "bench-" + randomName()
	defer func() { _ = s.inspector.DeleteQueue(queue, true) }()
	total := int(float64(rate) * d.Seconds())
	var (
		mu   sync.Mutex
		lats = make([]time.Duration, 0, total)
		done = make(chan struct{})
		once sync.Once
	)
	// Server defaults, but for the queue name.
	srv, err := s.serve(asynq.Config{Queues: map[string]int{queue: 1}}, func(t *asynq.Task) {
		now := time.Now()
		sent, err := strconv.ParseInt(string(t.Payload()), 10, 64)
		if err != nil {
			return
		}
		mu.Lock()
		lats = append(lats, now.Sub(time.Unix(0, sent)))
		full := len(lats) == total
		mu.Unlock()
		if full {
			once.Do(func() { close(done) })
		}
	})
	if err != nil {
		return nil, err
	}
	defer srv.Shutdown()
	if err := openLoop(ctx, rate, total, func(i int) error {
		payload := strconv.FormatInt(time.Now().UnixNano(), 10)
		_, err := s.client.EnqueueContext(ctx, asynq.NewTask("bench", []byte(payload)), asynq.Queue(queue))
		return err
	}); err != nil {
		return nil, err
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		return nil, errors.New("not every task started within 60s of the last enqueue")
	}
	return lats, nil
}
