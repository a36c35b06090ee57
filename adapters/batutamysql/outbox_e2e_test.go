package batutamysql

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// TestEndToEndWithOrchestrator drives captured changes and an emitted event
// through a real Orchestrator with the in-memory store: each becomes one
// run whose task sees the change, and the outbox rows are deleted only
// once the runs finished.
func TestEndToEndWithOrchestrator(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, "")
	ctx := context.Background()
	require.NoError(t, InstallCapture(ctx, db, f.capture()))

	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	o, err := batuta.New(batuta.Config{Logger: logger})
	require.NoError(t, err)
	var mu sync.Mutex
	seen := map[string]int{} // event type -> count
	names := map[string]bool{}
	release := make(chan struct{})
	require.NoError(t, o.Register(&batuta.Workflow{Name: "on-change", Tasks: []batuta.Task{{
		Name: "record",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			<-release // hold every run until the test saw the rows still in the outbox
			ev := in.Event()
			mu.Lock()
			defer mu.Unlock()
			seen[ev.Type]++
			if ev.Type == "placed" {
				return nil, nil
			}
			ch, err := batuta.EventData[ChangeData](in)
			if err != nil {
				return nil, err
			}
			var row struct{ Name string }
			if err := json.Unmarshal(ch.New, &row); err != nil {
				return nil, err
			}
			names[row.Name] = true
			return nil, nil
		},
	}}}))
	trig := newTrigger(t, TriggerConfig{DB: db, Outbox: f.outbox})
	require.NoError(t, o.Bind("on-change", trig))

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(runCtx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()

	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	for _, name := range []string{"a", "b", "c"} {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+quoteIdent(f.table)+" (name) VALUES (?)", name)
		require.NoError(t, err)
	}
	require.NoError(t, Emit(ctx, tx, f.outbox, batuta.Event{ID: "order-1", Type: "placed"}))
	require.NoError(t, tx.Commit())
	trig.Wake()

	// The runs exist, but the store is in memory: the rows stay until they
	// finished.
	eventually(t, func() bool {
		runs, err := o.ListRuns(ctx, batuta.RunFilter{Workflow: "on-change"})
		return err == nil && len(runs) == 4
	}, "four runs started")
	require.Equal(t, 4, f.outboxRows(t), "rows kept while their runs are unfinished")
	close(release)
	eventually(t, func() bool { return f.outboxRows(t) == 0 }, "rows deleted once the runs finished")

	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, map[string]int{f.table + ".insert": 3, "placed": 1}, seen)
	require.Equal(t, map[string]bool{"a": true, "b": true, "c": true}, names)
}
