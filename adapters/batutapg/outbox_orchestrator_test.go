package batutapg

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// orderRecorder is a workflow whose one task records which order rows it
// ran for.
type orderRecorder struct {
	mu   sync.Mutex
	runs map[int64]int // order id -> task executions
	bad  []string      // rows that must not have been delivered
}

func (r *orderRecorder) workflow(name string) *batuta.Workflow {
	return &batuta.Workflow{Name: name, Tasks: []batuta.Task{{
		Name: "record",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			cd, err := batuta.EventData[ChangeData](in)
			if err != nil {
				return nil, batuta.Permanent(err)
			}
			var row struct {
				ID     int64 `json:"id"`
				Amount int   `json:"amount"`
			}
			if err := json.Unmarshal(cd.New, &row); err != nil {
				return nil, batuta.Permanent(err)
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			r.runs[row.ID]++
			if row.Amount != 1 {
				r.bad = append(r.bad, string(cd.New))
			}
			return nil, nil
		},
	}}}
}

func (r *orderRecorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.runs)
}

// startOrchestrator runs an orchestrator with the in-memory store, the
// recorder's workflow and a Trigger on env's outbox; stop ends it.
func startOrchestrator(t *testing.T, env *outboxEnv, rec *orderRecorder) (stop func()) {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	o, err := batuta.New(batuta.Config{Logger: logger, NoLogHooks: true})
	require.NoError(t, err)
	require.NoError(t, o.Register(rec.workflow("order-placed")))
	trig, err := NewTrigger(TriggerConfig{Pool: env.pool, Outbox: env.ob, Logger: logger})
	require.NoError(t, err)
	require.NoError(t, o.Bind("order-placed", trig))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(60 * time.Second):
				t.Fatal("orchestrator did not stop within 60s")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// TestOrchestratorConcurrentWriters: 10,000 rows inserted by 8 concurrent
// writers (some in transactions that roll back) run the bound workflow
// exactly once per committed row and never for a rolled-back one, through
// the real orchestrator and its in-memory (non-durable) store; the outbox
// ends empty.
func TestOrchestratorConcurrentWriters(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{Ops: []Op{OpInsert}})
	rec := &orderRecorder{runs: map[int64]int{}}
	stop := startOrchestrator(t, env, rec)

	const rows = 10000
	require.Positive(t, writeConcurrently(t, env, 8, rows))
	waitFor(t, "a run for every row", func() bool { return rec.distinct() == rows })
	waitFor(t, "an empty outbox", func() bool { return env.outboxRows(t, env.ob) == 0 })
	stop()

	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Empty(t, rec.bad, "rolled-back rows were delivered")
	require.Len(t, rec.runs, rows)
	for id, n := range rec.runs {
		require.Equal(t, 1, n, "order %d ran %d times", id, n)
	}
}

// TestOrchestratorBacklogAndRestart: rows written while no orchestrator
// runs are all delivered once it starts; after a restart (a new in-memory
// store) nothing is delivered again, because rows are deleted once their
// runs finished.
func TestOrchestratorBacklogAndRestart(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{Ops: []Op{OpInsert}})
	env.exec(t, `INSERT INTO `+env.orders()+` (amount) SELECT 1 FROM generate_series(1, 500)`)

	rec := &orderRecorder{runs: map[int64]int{}}
	stop := startOrchestrator(t, env, rec)
	waitFor(t, "the backlog", func() bool { return rec.distinct() == 500 })
	waitFor(t, "an empty outbox", func() bool { return env.outboxRows(t, env.ob) == 0 })
	stop()

	rec2 := &orderRecorder{runs: map[int64]int{}}
	startOrchestrator(t, env, rec2)
	env.exec(t, `INSERT INTO `+env.orders()+` (amount) VALUES (1)`)
	waitFor(t, "the new row", func() bool { return rec2.distinct() == 1 })
	require.Equal(t, 1, rec2.distinct())
}
