package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// TestRetryFailedRunsThenTheySucceed is the README's operations story with
// a real orchestrator: a downstream is down, runs fail; the CLI lists the
// failures and retries them; the orchestrator runs them to success, each
// keeping its ID and its first (failed) attempt.
func TestRetryFailedRunsThenTheySucceed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ops.db")
	s := openSQLite(t, path)
	var down atomic.Bool
	down.Store(true)
	o, err := batuta.New(batuta.Config{Store: s, Logger: slog.New(slog.DiscardHandler), PollInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "orders", Tasks: []batuta.Task{
		{Name: "validate", Run: func(context.Context, *batuta.Input) (any, error) { return "ok", nil }},
		{Name: "charge", Deps: []string{"validate"}, Run: func(context.Context, *batuta.Input) (any, error) {
			if down.Load() {
				return nil, batuta.Permanent(errors.New("payments API: 503 Service Unavailable"))
			}
			return "receipt", nil
		}},
	}}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(runCtx) }()
	defer func() { stop(); require.NoError(t, <-done) }()

	var ids []string
	for _, ev := range []string{"o-1", "o-2", "o-3"} {
		id, err := o.Submit(ctx, "orders", batuta.Event{ID: ev})
		require.NoError(t, err)
		run, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunFailed, run.State)
		ids = append(ids, id)
	}
	dsn := []string{"--dsn", "sqlite:" + path}

	r := cli(t, nil, append([]string{"runs", "list", "--state", "failed", "--workflow", "orders", "--json"}, dsn...)...)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "payments API: 503 Service Unavailable")

	down.Store(false) // the API is back
	r = cli(t, nil, append([]string{"runs", "retry", "--state", "failed", "--workflow", "orders", "--wait", "--timeout", "50s"}, dsn...)...)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "retried 3 of 3 run(s)\nfinished: 3 succeeded\n")

	// --wait returned once they had finished: each succeeded.
	for _, id := range ids {
		run, err := s.GetRun(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, run.State, id)
		require.Equal(t, 1, run.Retries)
		require.Len(t, run.Task("charge").Attempts, 2, "the failed attempt is kept")
		require.Len(t, run.Task("validate").Attempts, 1, "validate kept its output and did not run again")
	}
	r = cli(t, nil, append([]string{"runs", "list", "--state", "failed"}, dsn...)...)
	require.Equal(t, exitOK, r.code)
	require.Equal(t, "no runs\n", r.stdout)
}

func TestRetryWaitReportsFailures(t *testing.T) {
	// --wait with runs that fail again: exit 1 (none succeeded), the final
	// states in the JSON summary.
	path := filepath.Join(t.TempDir(), "again.db")
	s := openSQLite(t, path)
	o, err := batuta.New(batuta.Config{Store: s, Logger: slog.New(slog.DiscardHandler), PollInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "flaky", Tasks: []batuta.Task{
		{Name: "call", Run: func(context.Context, *batuta.Input) (any, error) {
			return nil, batuta.Permanent(errors.New("still down"))
		}},
	}}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(runCtx) }()
	defer func() { stop(); require.NoError(t, <-done) }()
	id, err := o.Submit(ctx, "flaky", batuta.Event{ID: "x"})
	require.NoError(t, err)
	_, err = o.Wait(ctx, id)
	require.NoError(t, err)

	r := cli(t, nil, "runs", "retry", id, "--wait", "--json", "--timeout", "50s", "--dsn", "sqlite:"+path)
	require.Equal(t, exitError, r.code, r.stderr)
	require.Contains(t, r.stderr, "1 of 1 run(s) did not succeed")
	var sum actionSummary
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &sum))
	require.Equal(t, map[batuta.RunState]int{batuta.RunFailed: 1}, sum.Finished)
	require.Equal(t, batuta.RunFailed, sum.Runs[0].Final)
}
