package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

const riverSchema = "pgbench_river"

// riverSide runs the River half of each scenario.
type riverSide struct {
	pool    *pgxpool.Pool
	workers int
}

type noopArgs struct {
	Sent int64 `json:"sent,omitempty"`
}

func (noopArgs) Kind() string { return "noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
	onWork func(*river.Job[noopArgs])
}

func (w *noopWorker) Work(_ context.Context, job *river.Job[noopArgs]) error {
	if w.onWork != nil {
		w.onWork(job)
	}
	return nil
}

func (r *riverSide) reset(ctx context.Context) error {
	if _, err := r.pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+riverSchema+` CASCADE; CREATE SCHEMA `+riverSchema); err != nil {
		return err
	}
	r.pool.Reset() // statements prepared on the old tables
	m, err := rivermigrate.New(riverpgxv5.New(r.pool), &rivermigrate.Config{Schema: riverSchema, Logger: quietLogger()})
	if err != nil {
		return err
	}
	_, err = m.Migrate(ctx, rivermigrate.DirectionUp, nil)
	return err
}

// client returns a River client on the bench schema. tuned selects the
// settings of River's own benchmark (river bench: FetchCooldown 2ms,
// FetchPollInterval 20ms, r.workers workers); otherwise River's defaults
// with 100 workers (River has no default: MaxWorkers is required).
func (r *riverSide) client(tuned bool, onWork func(*river.Job[noopArgs])) (*river.Client[pgx.Tx], error) {
	ws := river.NewWorkers()
	river.AddWorker(ws, &noopWorker{onWork: onWork})
	cfg := &river.Config{
		Schema:  riverSchema,
		Logger:  quietLogger(),
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 100}},
		Workers: ws,
	}
	if tuned {
		cfg.FetchCooldown = 2 * time.Millisecond
		cfg.FetchPollInterval = 20 * time.Millisecond
		cfg.Queues[river.QueueDefault] = river.QueueConfig{MaxWorkers: r.workers}
	}
	return river.NewClient(riverpgxv5.New(r.pool), cfg)
}

// completions counts completed jobs from a subscription until n are seen.
func completions(c *river.Client[pgx.Tx], n int64) (done <-chan struct{}, count *atomic.Int64, stop func()) {
	events, cancel := c.SubscribeConfig(&river.SubscribeConfig{ChanSize: 1 << 20, Kinds: []river.EventKind{river.EventKindJobCompleted}})
	ch := make(chan struct{})
	count = new(atomic.Int64)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range events {
			if count.Add(1) == n {
				close(ch)
			}
		}
	}()
	return ch, count, func() { cancel(); wg.Wait() }
}

func (r *riverSide) burnDown(ctx context.Context, n int) (drainRate, insertRate float64, err error) {
	if err := r.reset(ctx); err != nil {
		return 0, 0, err
	}
	c, err := r.client(true, nil)
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	wc := walBytes(ctx, r.pool)
	const chunk = 10000
	params := make([]river.InsertManyParams, 0, chunk)
	for i := 0; i < n; i += chunk {
		params = params[:0]
		for k := i; k < min(n, i+chunk); k++ {
			params = append(params, river.InsertManyParams{Args: noopArgs{}})
		}
		if _, err := c.InsertMany(ctx, params); err != nil {
			return 0, 0, fmt.Errorf("river InsertMany: %w", err)
		}
	}
	insertRate = float64(n) / time.Since(t0).Seconds()
	done, _, stop := completions(c, int64(n))
	defer stop()
	w0 := walBytes(ctx, r.pool)
	cpu := startCPU(ctx, r.pool)
	start := time.Now()
	if err := c.Start(ctx); err != nil {
		return 0, 0, err
	}
	select {
	case <-done:
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	el := time.Since(start)
	if err := c.Stop(ctx); err != nil {
		return 0, 0, err
	}
	if showCost {
		self, srv := cpu.stop()
		fmt.Printf("    river:  per job: WAL insert %d B, drain %d B; drain CPU: client %s, server %s\n", (w0-wc)/int64(n), (walBytes(ctx, r.pool)-w0)/int64(n),
			self/time.Duration(n), srv/time.Duration(n))
	}
	return float64(n) / el.Seconds(), insertRate, nil
}

func (r *riverSide) sustained(ctx context.Context, d time.Duration, producers int) (float64, error) {
	if err := r.reset(ctx); err != nil {
		return 0, err
	}
	c, err := r.client(true, nil)
	if err != nil {
		return 0, err
	}
	_, count, stop := completions(c, -1)
	defer stop()
	if err := c.Start(ctx); err != nil {
		return 0, err
	}
	pctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pctx.Err() == nil {
				_, _ = c.Insert(pctx, noopArgs{}, nil)
			}
		}()
	}
	start := time.Now()
	<-pctx.Done()
	done := count.Load()
	el := time.Since(start)
	wg.Wait()
	if err := c.Stop(ctx); err != nil {
		return 0, err
	}
	return float64(done) / el.Seconds(), nil
}

func (r *riverSide) latency(ctx context.Context, rate int, d time.Duration) ([]time.Duration, error) {
	if err := r.reset(ctx); err != nil {
		return nil, err
	}
	n := int(float64(rate) * d.Seconds())
	var mu sync.Mutex
	lat := make([]time.Duration, 0, n)
	c, err := r.client(false, func(job *river.Job[noopArgs]) {
		now := time.Now()
		mu.Lock()
		lat = append(lat, now.Sub(time.Unix(0, job.Args.Sent)))
		mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	done, count, stop := completions(c, int64(n))
	defer stop()
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	defer func() { _ = c.Stop(context.WithoutCancel(ctx)) }()
	time.Sleep(500 * time.Millisecond) // let the client elect a leader and start its producer
	err = openLoop(ctx, rate, n, func(ctx context.Context, sent time.Time) error {
		_, err := c.Insert(ctx, noopArgs{Sent: sent.UnixNano()}, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("river latency: only %d of %d jobs completed", count.Load(), n)
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]time.Duration(nil), lat...), nil
}
