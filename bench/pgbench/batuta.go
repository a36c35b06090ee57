package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/jackc/pgx/v5/pgxpool"
)

const batutaSchema = "pgbench_batuta"

// batutaSide runs the batuta half of each scenario.
type batutaSide struct {
	pool    *pgxpool.Pool
	workers int
}

// finishCounter counts finished runs through the RunFinished hook.
type finishCounter struct {
	batuta.NopHooks
	n      atomic.Int64
	target atomic.Int64
	done   chan struct{}
	once   sync.Once
}

func newFinishCounter(target int64) *finishCounter {
	f := &finishCounter{done: make(chan struct{})}
	f.target.Store(target)
	return f
}

func (f *finishCounter) RunFinished(context.Context, batuta.RunInfo) {
	if n := f.n.Add(1); n >= f.target.Load() && f.target.Load() > 0 {
		f.once.Do(func() { close(f.done) })
	}
}

func (b *batutaSide) reset(ctx context.Context) error {
	if _, err := b.pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+batutaSchema+` CASCADE`); err != nil {
		return err
	}
	b.pool.Reset() // statements prepared on the old tables
	return batutapg.MigrateSchema(ctx, b.pool, batutaSchema)
}

// instance is one orchestrator with its own Store.
type instance struct {
	store *batutapg.Store
	orch  *batuta.Orchestrator
}

// newInstance builds an orchestrator on the bench schema. workers 0 keeps
// batuta's default.
func (b *batutaSide) newInstance(ctx context.Context, workers int, hooks []batuta.Hooks, wfs ...*batuta.Workflow) (*instance, error) {
	st, err := batutapg.New(ctx, b.pool, batutapg.Config{Schema: batutaSchema, Logger: quietLogger()})
	if err != nil {
		return nil, err
	}
	o, err := batuta.New(batuta.Config{
		Store: st, Workers: workers, MaxInFlightRuns: -1, NoLogHooks: true, Hooks: hooks, Logger: quietLogger(),
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	for _, wf := range wfs {
		if err := o.Register(wf); err != nil {
			st.Close()
			return nil, err
		}
	}
	return &instance{store: st, orch: o}, nil
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func noopWorkflow() *batuta.Workflow {
	return &batuta.Workflow{Name: "noop", Tasks: []batuta.Task{{Name: "t", Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil }}}}
}

// diamondWorkflow is a -> (b, c, d) -> e.
func diamondWorkflow() *batuta.Workflow {
	f := func(context.Context, *batuta.Input) (any, error) { return nil, nil }
	return &batuta.Workflow{Name: "diamond", Tasks: []batuta.Task{
		{Name: "a", Run: f},
		{Name: "b", Deps: []string{"a"}, Run: f},
		{Name: "c", Deps: []string{"a"}, Run: f},
		{Name: "d", Deps: []string{"a"}, Run: f},
		{Name: "e", Deps: []string{"b", "c", "d"}, Run: f},
	}}
}

// submitAll submits n runs of wf from 32 goroutines.
func submitAll(ctx context.Context, o *batuta.Orchestrator, wf string, n int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 32)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				if _, err := o.Submit(ctx, wf, batuta.Event{}); err != nil {
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

// drain runs the instances until counter says every run finished, and
// returns how long that took from the start of Run.
func drain(ctx context.Context, insts []*instance, counter *finishCounter) (time.Duration, error) {
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	start := time.Now()
	for _, in := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = in.orch.Run(rctx)
		}()
	}
	var err error
	select {
	case <-counter.done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	el := time.Since(start)
	cancel()
	wg.Wait()
	for _, in := range insts {
		in.store.Close()
	}
	return el, err
}

// burnDown: n single-task runs submitted first, then drained. Returns
// runs/s of the drain and of the submit phase.
func (b *batutaSide) burnDown(ctx context.Context, n int) (drainRate, submitRate float64, err error) {
	return b.burnDownWorkflow(ctx, noopWorkflow(), n, 1, b.workers)
}

func (b *batutaSide) burnDownWorkflow(ctx context.Context, wf *batuta.Workflow, n, instances, workers int) (drainRate, submitRate float64, err error) {
	if err := b.reset(ctx); err != nil {
		return 0, 0, err
	}
	counter := newFinishCounter(int64(n))
	var insts []*instance
	for i := 0; i < instances; i++ {
		in, err := b.newInstance(ctx, workers, []batuta.Hooks{counter}, wf)
		if err != nil {
			return 0, 0, err
		}
		insts = append(insts, in)
	}
	t0 := time.Now()
	wc := walBytes(ctx, b.pool)
	if err := submitAll(ctx, insts[0].orch, wf.Name, n); err != nil {
		for _, in := range insts {
			in.store.Close()
		}
		return 0, 0, fmt.Errorf("submit: %w", err)
	}
	submitRate = float64(n) / time.Since(t0).Seconds()
	w0 := walBytes(ctx, b.pool)
	cpu := startCPU(ctx, b.pool)
	el, err := drain(ctx, insts, counter)
	if err != nil {
		return 0, 0, err
	}
	if showCost {
		self, srv := cpu.stop()
		fmt.Printf("    batuta: per run: WAL create %d B, drain %d B; drain CPU: client %s, server %s\n", (w0-wc)/int64(n), (walBytes(ctx, b.pool)-w0)/int64(n),
			self/time.Duration(n), srv/time.Duration(n))
	}
	return float64(n) / el.Seconds(), submitRate, nil
}

// sustained: producers submit and the orchestrator works at the same
// time for d; returns runs finished per second.
func (b *batutaSide) sustained(ctx context.Context, d time.Duration, producers int) (float64, error) {
	if err := b.reset(ctx); err != nil {
		return 0, err
	}
	counter := newFinishCounter(0)
	in, err := b.newInstance(ctx, b.workers, []batuta.Hooks{counter}, noopWorkflow())
	if err != nil {
		return 0, err
	}
	defer in.store.Close()
	rctx, cancel := context.WithCancel(ctx)
	pctx, stopProducers := context.WithTimeout(ctx, d)
	defer stopProducers()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = in.orch.Run(rctx)
	}()
	var pwg sync.WaitGroup
	for p := 0; p < producers; p++ {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for pctx.Err() == nil {
				_, _ = in.orch.SubmitBlocking(pctx, "noop", batuta.Event{})
			}
		}()
	}
	start := time.Now()
	<-pctx.Done()
	done := counter.n.Load()
	el := time.Since(start)
	pwg.Wait()
	cancel()
	wg.Wait()
	return float64(done) / el.Seconds(), nil
}

// latency: open-loop submits at rate per second for d, with default
// settings; returns submit-to-task-start latencies.
func (b *batutaSide) latency(ctx context.Context, rate int, d time.Duration) ([]time.Duration, error) {
	if err := b.reset(ctx); err != nil {
		return nil, err
	}
	n := int(float64(rate) * d.Seconds())
	counter := newFinishCounter(int64(n))
	var mu sync.Mutex
	lat := make([]time.Duration, 0, n)
	wf := &batuta.Workflow{Name: "lat", Tasks: []batuta.Task{{Name: "t", Run: func(_ context.Context, in *batuta.Input) (any, error) {
		now := time.Now()
		data := in.Event().Data
		if len(data) == 8 {
			sent := time.Unix(0, int64(binary.BigEndian.Uint64(data)))
			mu.Lock()
			lat = append(lat, now.Sub(sent))
			mu.Unlock()
		}
		return nil, nil
	}}}}
	st, err := batutapg.New(ctx, b.pool, batutapg.Config{Schema: batutaSchema, Logger: quietLogger()})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	o, err := batuta.New(batuta.Config{Store: st, NoLogHooks: true, Hooks: []batuta.Hooks{counter}, Logger: quietLogger()})
	if err != nil {
		return nil, err
	}
	if err := o.Register(wf); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = o.Run(rctx)
	}()
	defer func() {
		cancel()
		wg.Wait()
	}()
	time.Sleep(500 * time.Millisecond) // let the listener connect and the workers start
	err = openLoop(ctx, rate, n, func(ctx context.Context, sent time.Time) error {
		var data [8]byte
		binary.BigEndian.PutUint64(data[:], uint64(sent.UnixNano()))
		_, err := o.Submit(ctx, "lat", batuta.Event{Data: data[:]})
		return err
	})
	if err != nil {
		return nil, err
	}
	select {
	case <-counter.done:
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("batuta latency: only %d of %d runs finished", counter.n.Load(), n)
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]time.Duration(nil), lat...), nil
}

// openLoop calls submit n times at rate per second on a fixed schedule,
// each call in its own goroutine so a slow call does not delay the next.
func openLoop(ctx context.Context, rate, n int, submit func(context.Context, time.Time) error) error {
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	var wg sync.WaitGroup
	var firstErr error
	var mu sync.Mutex
	for i := 0; i < n; i++ {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := submit(ctx, time.Now()); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return firstErr
}
