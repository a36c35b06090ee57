package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
	"github.com/cschleiden/go-workflows/backend"
	"github.com/cschleiden/go-workflows/backend/monoprocess"
	gwsqlite "github.com/cschleiden/go-workflows/backend/sqlite"
	"github.com/cschleiden/go-workflows/client"
	"github.com/cschleiden/go-workflows/worker"
	"github.com/cschleiden/go-workflows/workflow"
)

// removeDB removes an SQLite file and its WAL companions.
func removeDB(path string) {
	for _, p := range []string{path, path + "-wal", path + "-shm", path + "-journal"} {
		_ = os.Remove(p)
	}
}

// batutaSQLite: n runs submitted to a batutasqlite store (default
// settings), then drained by one orchestrator with default settings.
func batutaSQLite(ctx context.Context, o options) (float64, error) {
	path := filepath.Join(o.dir, "peers-batuta-"+randomSuffix()+".db")
	defer removeDB(path)
	st, err := batutasqlite.Open(ctx, path, batutasqlite.Config{Logger: quiet()})
	if err != nil {
		return 0, err
	}
	defer func() { _ = st.Close() }()
	c := newClock(o.n, o.steps)
	orch, err := batuta.New(batuta.Config{Store: st, Logger: quiet()})
	if err != nil {
		return 0, err
	}
	if err := orch.Register(chain("burn", o.steps, func() *clock { return c })); err != nil {
		return 0, err
	}
	if err := parallel(o.n, func(i int) error {
		_, err := orch.Submit(ctx, "burn", batuta.Event{Subject: strconv.Itoa(i)})
		return err
	}); err != nil {
		return 0, fmt.Errorf("submit: %w", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- orch.Run(rctx) }()
	ok := c.wait(ctx, 10*time.Minute)
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("not drained (%d runs left)", c.left.Load())
	}
	return float64(o.n) / time.Duration(c.last.Load()-start.UnixNano()).Seconds(), nil
}

// gwClock is the clock of the go-workflows round in progress (its
// registry takes plain functions).
var gwClock atomic.Pointer[clock]

// gwWorkflow runs steps activities one after another.
func gwWorkflow(ctx workflow.Context, i, steps int) error {
	for k := range steps {
		if _, err := workflow.ExecuteActivity[int](ctx, workflow.DefaultActivityOptions, gwStep, i, k).Get(ctx); err != nil {
			return err
		}
	}
	return nil
}

// gwStep is one step: it notes its run.
func gwStep(_ context.Context, i, k int) (int, error) {
	gwClock.Load().step(i, k)
	return k, nil
}

// goWorkflowsSQLite: n workflow instances created on go-workflows' SQLite
// backend (in-process, monoprocess mode), then drained by a worker with
// default options.
func goWorkflowsSQLite(ctx context.Context, o options) (float64, error) {
	path := filepath.Join(o.dir, "peers-gw-"+randomSuffix()+".db")
	defer removeDB(path)
	c := newClock(o.n, o.steps)
	gwClock.Store(c)
	b := monoprocess.NewMonoprocessBackend(gwsqlite.NewSqliteBackend(path,
		gwsqlite.WithBackendOptions(backend.WithLogger(quiet()))))
	defer func() { _ = b.Close() }()
	cl := client.New(b)
	if err := parallel(o.n, func(i int) error {
		_, err := cl.CreateWorkflowInstance(ctx, client.WorkflowInstanceOptions{InstanceID: "run-" + strconv.Itoa(i)}, gwWorkflow, i, o.steps)
		return err
	}); err != nil {
		return 0, fmt.Errorf("create instances: %w", err)
	}
	w := worker.New(b, nil)
	if err := w.RegisterWorkflow(gwWorkflow); err != nil {
		return 0, err
	}
	if err := w.RegisterActivity(gwStep); err != nil {
		return 0, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	if err := w.Start(wctx); err != nil {
		return 0, err
	}
	ok := c.wait(ctx, 10*time.Minute)
	cancel()
	_ = w.WaitForCompletion()
	if !ok {
		return 0, fmt.Errorf("not drained (%d runs left)", c.left.Load())
	}
	return float64(o.n) / time.Duration(c.last.Load()-start.UnixNano()).Seconds(), nil
}

// parallel calls f(0..n-1) from 32 goroutines and returns the first error.
func parallel(n int, f func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var first atomic.Value
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || first.Load() != nil {
					return
				}
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, ok := first.Load().(error); ok {
		return err
	}
	return nil
}
