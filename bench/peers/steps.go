package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/dbos-inc/dbos-transact-golang/dbos"
	"github.com/jackc/pgx/v5/pgxpool"
)

// stepCount is the length of the steps scenario's workflow.
const stepCount = 5

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func randomSuffix() string { return strings.ToLower(rand.Text()[:10]) }

// chain returns a workflow of steps tasks, each depending on the one
// before, each noting its run on c (the run's index is the event subject).
func chain(name string, steps int, c func() *clock) *batuta.Workflow {
	wf := &batuta.Workflow{Name: name}
	for k := range steps {
		t := batuta.Task{
			Name: "s" + strconv.Itoa(k+1),
			Run: func(_ context.Context, in *batuta.Input) (any, error) {
				i, _ := strconv.Atoi(in.Event().Subject)
				c().step(i, k)
				return nil, nil
			},
		}
		if k > 0 {
			t.Deps = []string{"s" + strconv.Itoa(k)}
		}
		wf.Tasks = append(wf.Tasks, t)
	}
	return wf
}

// dropSchema drops a bench schema, even after ctx ended (an interrupted
// round cleans up too).
func dropSchema(ctx context.Context, dsn, schema string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	p, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return
	}
	defer p.Close()
	_, _ = p.Exec(ctx, `DROP SCHEMA IF EXISTS `+schema+` CASCADE`)
}

// batutaSteps: one orchestrator with default settings on a batutapg store
// in a fresh schema.
func batutaSteps(ctx context.Context, o options) (*clock, error) {
	runs := int(float64(o.rate) * o.dur.Seconds())
	c := newClock(runs, stepCount)
	schema := "peers_batuta_" + randomSuffix()
	defer dropSchema(ctx, o.dsn, schema)
	pool, err := pgxpool.New(ctx, o.dsn)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	if err := batutapg.MigrateSchema(ctx, pool, schema); err != nil {
		return nil, err
	}
	st, err := batutapg.New(ctx, pool, batutapg.Config{Schema: schema, Logger: quiet()})
	if err != nil {
		return nil, err
	}
	defer func() { _ = st.Close() }()
	cfg := batuta.Config{Store: st, Logger: quiet()}
	var calls *storeCalls
	if o.calls {
		calls = &storeCalls{}
		cfg.Hooks = []batuta.Hooks{calls}
		defer calls.print()
	}
	orch, err := batuta.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := orch.Register(chain("steps", stepCount, func() *clock { return c })); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- orch.Run(rctx) }()
	if err := c.openLoop(ctx, o.rate, func(i int) error {
		_, err := orch.Submit(ctx, "steps", batuta.Event{Subject: strconv.Itoa(i)})
		return err
	}); err != nil {
		return nil, err
	}
	ok := c.wait(ctx, time.Minute)
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("runs not finished within a minute of the last submit (%d left)", c.left.Load())
	}
	return c, nil
}

// dbosSteps: DBOS Transact with default settings, its system database in
// a fresh schema; each run is a workflow of five RunAsStep calls, started
// with RunWorkflow.
func dbosSteps(ctx context.Context, o options) (*clock, error) {
	runs := int(float64(o.rate) * o.dur.Seconds())
	c := newClock(runs, stepCount)
	schema := "peers_dbos_" + randomSuffix()
	defer dropSchema(ctx, o.dsn, schema)
	dctx, err := dbos.NewContext(ctx, dbos.Config{
		AppName:        "batuta-peers",
		DatabaseURL:    o.dsn,
		DatabaseSchema: schema,
		Logger:         quiet(),
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = dbos.Shutdown(dctx, 10*time.Second) }()
	wf := func(ctx dbos.Context, i int) (int, error) {
		for k := range stepCount {
			if _, err := dbos.RunAsStep(ctx, func(context.Context) (int, error) {
				c.step(i, k)
				return k, nil
			}, dbos.WithStepName("s"+strconv.Itoa(k+1))); err != nil {
				return 0, err
			}
		}
		return i, nil
	}
	dbos.RegisterWorkflow(dctx, wf, dbos.WithWorkflowName("steps"))
	if err := dbos.Launch(dctx); err != nil {
		return nil, err
	}
	if err := c.openLoop(ctx, o.rate, func(i int) error {
		_, err := dbos.RunWorkflow(dctx, wf, i)
		return err
	}); err != nil {
		return nil, err
	}
	if !c.wait(ctx, time.Minute) {
		return nil, fmt.Errorf("runs not finished within a minute of the last submit (%d left)", c.left.Load())
	}
	return c, nil
}
