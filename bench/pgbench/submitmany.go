package main

import (
	"context"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/riverqueue/river"
)

// submitManyBatuta creates batches single-task runs of batch runs each with
// Orchestrator.SubmitMany (one call, one transaction per batch) on a fresh
// schema, no orchestrator running, and returns the runs per second of the
// calls alone (the batches' events built beforehand).
func (b *batutaSide) submitMany(ctx context.Context, batch, batches int) (float64, error) {
	if err := b.reset(ctx); err != nil {
		return 0, err
	}
	in, err := b.newInstance(ctx, 0, nil, noopWorkflow())
	if err != nil {
		return 0, err
	}
	defer in.store.Close()
	evs := make([]batuta.Event, batch)
	var el time.Duration
	for k := 0; k < batches; k++ {
		for i := range evs {
			evs[i] = batuta.Event{Data: []byte(`{"sent":1}`)}
		}
		t0 := time.Now()
		ids, err := in.orch.SubmitMany(ctx, "noop", evs)
		el += time.Since(t0)
		if err != nil {
			return 0, fmt.Errorf("SubmitMany: %w", err)
		}
		if len(ids) != batch {
			return 0, fmt.Errorf("SubmitMany returned %d IDs for %d events", len(ids), batch)
		}
	}
	var got int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM `+batutaSchema+`.runs`).Scan(&got); err != nil {
		return 0, err
	}
	if got != batch*batches {
		return 0, fmt.Errorf("%d runs in the table after submitting %d", got, batch*batches)
	}
	return float64(batch*batches) / el.Seconds(), nil
}

// submitMany inserts batches jobs of batch jobs each with Client.InsertMany
// on a fresh schema, the client not started, and returns the jobs per
// second of the calls alone.
func (r *riverSide) submitMany(ctx context.Context, batch, batches int) (float64, error) {
	if err := r.reset(ctx); err != nil {
		return 0, err
	}
	c, err := r.client(false, nil)
	if err != nil {
		return 0, err
	}
	params := make([]river.InsertManyParams, batch)
	var el time.Duration
	for k := 0; k < batches; k++ {
		for i := range params {
			params[i] = river.InsertManyParams{Args: noopArgs{Sent: 1}}
		}
		t0 := time.Now()
		res, err := c.InsertMany(ctx, params)
		el += time.Since(t0)
		if err != nil {
			return 0, fmt.Errorf("InsertMany: %w", err)
		}
		if len(res) != batch {
			return 0, fmt.Errorf("InsertMany returned %d jobs for %d", len(res), batch)
		}
	}
	var got int
	if err := r.pool.QueryRow(ctx, `SELECT count(*) FROM `+riverSchema+`.river_job`).Scan(&got); err != nil {
		return 0, err
	}
	if got != batch*batches {
		return 0, fmt.Errorf("%d jobs in the table after inserting %d", got, batch*batches)
	}
	return float64(batch*batches) / el.Seconds(), nil
}
