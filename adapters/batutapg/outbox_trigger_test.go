package batutapg

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// fakeRuns is a batuta.Runs that records fired events, deduplicates them
// by event ID like the orchestrator does, and finishes runs at once or, with
// hold set, when the test calls finishAll.
type fakeRuns struct {
	durable bool
	hold    bool
	// fireErr, if set, may refuse an event (called before dedupe).
	fireErr func(ev batuta.Event) error

	mu       sync.Mutex
	byEvent  map[string]string       // event ID -> run ID
	accepts  map[string]batuta.Event // first accepted event per ID
	order    []string                // event IDs in first-accept order
	fires    map[string]int          // fire calls per event ID (accepted or not)
	done     map[string]chan struct{}
	inFire   map[string]bool
	overlaps []string // event IDs fired by two consumers at once
}

func newFakeRuns(durable bool) *fakeRuns {
	return &fakeRuns{
		durable: durable,
		byEvent: map[string]string{}, accepts: map[string]batuta.Event{},
		fires: map[string]int{}, done: map[string]chan struct{}{}, inFire: map[string]bool{},
	}
}

var _ batuta.Runs = (*fakeRuns)(nil)

func (f *fakeRuns) Workflow() string { return "wf" }

func (f *fakeRuns) Fire(ctx context.Context, ev batuta.Event) (string, error) {
	f.mu.Lock()
	f.fires[ev.ID]++
	if f.inFire[ev.ID] {
		f.overlaps = append(f.overlaps, ev.ID)
	}
	f.inFire[ev.ID] = true
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.inFire, ev.ID)
		f.mu.Unlock()
	}()
	if f.fireErr != nil {
		if err := f.fireErr(ev); err != nil {
			return "", err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if id, ok := f.byEvent[ev.ID]; ok {
		return id, nil
	}
	runID := "run-" + strconv.Itoa(len(f.byEvent)+1)
	f.byEvent[ev.ID] = runID
	f.accepts[ev.ID] = ev
	f.order = append(f.order, ev.ID)
	ch := make(chan struct{})
	if !f.hold {
		close(ch)
	}
	f.done[runID] = ch
	return runID, nil
}

func (f *fakeRuns) Get(ctx context.Context, runID string) (*batuta.Run, error) {
	f.mu.Lock()
	ch, ok := f.done[runID]
	f.mu.Unlock()
	if !ok {
		return nil, batuta.ErrRunNotFound
	}
	select {
	case <-ch:
		return &batuta.Run{ID: runID, State: batuta.RunSucceeded}, nil
	default:
		return &batuta.Run{ID: runID, State: batuta.RunRunning}, nil
	}
}

func (f *fakeRuns) Wait(ctx context.Context, runID string) (*batuta.Run, error) {
	f.mu.Lock()
	ch, ok := f.done[runID]
	f.mu.Unlock()
	if !ok {
		return nil, batuta.ErrRunNotFound
	}
	select {
	case <-ch:
		return &batuta.Run{ID: runID, State: batuta.RunSucceeded}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// finishAll finishes every run started so far.
func (f *fakeRuns) finishAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ch := range f.done {
		select {
		case <-ch:
		default:
			close(ch)
		}
	}
}

func (f *fakeRuns) Cancel(ctx context.Context, runID string) error { return nil }
func (f *fakeRuns) Durable() bool                                  { return f.durable }
func (f *fakeRuns) Clock() batuta.Clock                            { return batuta.SystemClock{} }
func (f *fakeRuns) LastTick(context.Context, string) (time.Time, error) {
	return time.Time{}, nil
}
func (f *fakeRuns) RecordTick(context.Context, string, time.Time) (bool, error) { return false, nil }

func (f *fakeRuns) accepted() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.accepts)
}

func (f *fakeRuns) event(id string) (batuta.Event, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ev, ok := f.accepts[id]
	return ev, ok
}

func (f *fakeRuns) events() []batuta.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]batuta.Event, 0, len(f.order))
	for _, id := range f.order {
		out = append(out, f.accepts[id])
	}
	return out
}

func (f *fakeRuns) totalFires() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.fires {
		n += c
	}
	return n
}

// startTrigger runs a Trigger with cfg as a consumer in front of runs, and
// returns a func that stops it and checks that it returned on cancel.
func startTrigger(t *testing.T, cfg TriggerConfig, runs batuta.Runs) (stop func()) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	trig, err := NewTrigger(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- trig.RunTracking(ctx, runs) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				require.ErrorIs(t, err, context.Canceled)
			case <-time.After(30 * time.Second):
				t.Fatal("trigger did not return within 30s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitFor waits for cond with a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func installOrders(t *testing.T, env *outboxEnv, c Capture) Capture {
	t.Helper()
	c.Outbox = env.ob
	c.Schema, c.Table = env.schema, "orders"
	require.NoError(t, InstallCapture(context.Background(), env.pool, c))
	return c
}

// changeOf decodes an event's ChangeData with its images.
func changeOf(t *testing.T, ev batuta.Event) (cd ChangeData, newRow, oldRow map[string]any) {
	t.Helper()
	require.NoError(t, json.Unmarshal(ev.Data, &cd))
	require.NoError(t, json.Unmarshal(cd.New, &newRow))
	require.NoError(t, json.Unmarshal(cd.Old, &oldRow))
	return cd, newRow, oldRow
}

// TestTriggerConcurrentWritersExactlyOnce: rows committed by 8 concurrent
// writers, with some transactions rolled back, give exactly one fire per
// committed row and none for rolled-back ones. The consumer runs in front of
// a non-durable store, so rows are deleted only after their runs finished.
// (TestOrchestratorConcurrentWriters does 10,000 rows through the real
// orchestrator.)
func TestTriggerConcurrentWritersExactlyOnce(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{Ops: []Op{OpInsert}})
	runs := newFakeRuns(false)
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob}, runs)

	const rows = 2000
	rolledBack := writeConcurrently(t, env, 8, rows)
	require.Positive(t, rolledBack)

	waitFor(t, "every event", func() bool { return runs.accepted() >= rows })
	waitFor(t, "an empty outbox", func() bool { return env.outboxRows(t, env.ob) == 0 })

	require.Equal(t, rows, runs.accepted())
	require.Equal(t, rows, runs.totalFires())
	seen := map[float64]bool{}
	for _, ev := range runs.events() {
		_, newRow, _ := changeOf(t, ev)
		require.EqualValues(t, 1, newRow["amount"], "a rolled-back row was delivered: %v", newRow)
		id := newRow["id"].(float64)
		require.False(t, seen[id], "row %v delivered twice", id)
		seen[id] = true
	}
	require.Len(t, seen, rows)
}

// writeConcurrently commits total rows into the orders table from writers
// goroutines, in transactions of up to 5 rows; every 4th transaction
// writes rows with amount -1 and rolls back (committed rows have amount 1).
// It returns the number of rolled-back rows.
func writeConcurrently(t *testing.T, env *outboxEnv, writers, total int) (rolledBack int64) {
	t.Helper()
	const perTx = 5
	ctx := context.Background()
	var rb atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			perWriter := total / writers
			if w < total%writers {
				perWriter++
			}
			committed := 0
			for i := 0; committed < perWriter; i++ {
				rollback := i%4 == 3
				n := min(perTx, perWriter-committed)
				err := pgx.BeginFunc(ctx, env.pool, func(tx pgx.Tx) error {
					amount := 1
					if rollback {
						amount = -1 // marks rows that must never be delivered
					}
					if _, err := tx.Exec(ctx, `INSERT INTO `+env.orders()+` (writer, amount) SELECT $1, $2 FROM generate_series(1, $3::int)`,
						w, amount, n); err != nil {
						return err
					}
					if rollback {
						return errRollback
					}
					return nil
				})
				switch {
				case errors.Is(err, errRollback):
					rb.Add(int64(n))
				case err != nil:
					errs <- err
					return
				default:
					committed += n
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, total, env.count(t, `SELECT count(*) FROM `+env.orders()))
	return rb.Load()
}

var errRollback = errors.New("roll back")

// TestTriggerDeliversBacklogAfterStart: rows inserted while no consumer runs
// are all delivered once it starts.
func TestTriggerDeliversBacklogAfterStart(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{})
	env.exec(t, `INSERT INTO `+env.orders()+` (amount) SELECT g FROM generate_series(1, 1000) g`)
	require.Equal(t, 1000, env.outboxRows(t, env.ob))

	runs := newFakeRuns(true)
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob, BatchSize: 64}, runs)
	waitFor(t, "the backlog", func() bool { return runs.accepted() == 1000 })
	waitFor(t, "an empty outbox", func() bool { return env.outboxRows(t, env.ob) == 0 })
	require.Equal(t, 1000, runs.totalFires())
}

// TestTriggerImages: update and delete carry correct old and new images;
// events have the documented ID, Source, Type and Data shape.
func TestTriggerImages(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{})
	runs := newFakeRuns(true)
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob}, runs)

	env.exec(t, `INSERT INTO `+env.orders()+` (id, amount, status, note) VALUES (1, 10, 'new', NULL)`)
	env.exec(t, `UPDATE `+env.orders()+` SET status = 'paid', amount = 12 WHERE id = 1`)
	env.exec(t, `DELETE FROM `+env.orders()+` WHERE id = 1`)
	waitFor(t, "three events", func() bool { return runs.accepted() == 3 })

	evs := runs.events()
	wantTypes := []string{"orders.insert", "orders.update", "orders.delete"}
	for i, ev := range evs {
		require.Equal(t, wantTypes[i], ev.Type)
		require.Equal(t, "postgres/"+env.schema+".orders", ev.Source)
		require.True(t, strings.HasPrefix(ev.ID, "pg/"+env.schema+".batuta_outbox/"), ev.ID)
		require.Equal(t, ev.ID, "pg/"+env.schema+".batuta_outbox/"+ev.Metadata["pgoutboxid"])
	}

	cd, newRow, oldRow := changeOf(t, evs[0])
	require.Equal(t, "insert", cd.Op)
	require.Equal(t, env.schema, cd.Schema)
	require.Equal(t, "orders", cd.Table)
	require.Nil(t, oldRow)
	require.Equal(t, map[string]any{"id": 1.0, "writer": 0.0, "amount": 10.0, "status": "new", "note": nil}, newRow)
	require.WithinDuration(t, time.Now(), cd.At, time.Minute)

	cd, newRow, oldRow = changeOf(t, evs[1])
	require.Equal(t, "update", cd.Op)
	require.Equal(t, map[string]any{"id": 1.0, "writer": 0.0, "amount": 10.0, "status": "new", "note": nil}, oldRow)
	require.Equal(t, map[string]any{"id": 1.0, "writer": 0.0, "amount": 12.0, "status": "paid", "note": nil}, newRow)

	cd, newRow, oldRow = changeOf(t, evs[2])
	require.Equal(t, "delete", cd.Op)
	require.Nil(t, newRow)
	require.Equal(t, map[string]any{"id": 1.0, "writer": 0.0, "amount": 12.0, "status": "paid", "note": nil}, oldRow)
}

// TestTriggerLargeRow: a row far over NOTIFY's 8000-byte payload cap is
// captured and delivered whole (the notification carries the id only).
func TestTriggerLargeRow(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{})
	runs := newFakeRuns(true)
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob, PollInterval: time.Hour}, runs)

	big := strings.Repeat("0123456789abcdef", 64<<10/16) // 64 KiB
	env.exec(t, `INSERT INTO `+env.orders()+` (note) VALUES ($1)`, big)
	env.exec(t, `UPDATE `+env.orders()+` SET note = note || 'x'`)
	waitFor(t, "two events", func() bool { return runs.accepted() == 2 })
	evs := runs.events()
	require.Greater(t, len(evs[1].Data), 2*len(big))
	_, newRow, oldRow := changeOf(t, evs[1])
	require.Equal(t, big+"x", newRow["note"])
	require.Equal(t, big, oldRow["note"])
}

// TestTriggerTwoConsumers: two consumers on one outbox never fire the same
// row at once, and without crashes fire each row exactly once.
func TestTriggerTwoConsumers(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{})
	const rows = 3000
	runs := newFakeRuns(true)
	var fired [2]atomic.Int64
	for i := range 2 {
		r := &countingRuns{Runs: runs, n: &fired[i]}
		startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob, BatchSize: 25}, r)
	}
	for range 30 {
		env.exec(t, `INSERT INTO `+env.orders()+` (amount) SELECT g FROM generate_series(1, $1::int) g`, rows/30)
	}
	waitFor(t, "all events", func() bool { return runs.accepted() == rows })
	waitFor(t, "an empty outbox", func() bool { return env.outboxRows(t, env.ob) == 0 })
	require.Equal(t, rows, runs.totalFires(), "a row was fired more than once")
	require.Empty(t, runs.overlaps)
	require.Positive(t, fired[0].Load(), "consumer 0 did nothing")
	require.Positive(t, fired[1].Load(), "consumer 1 did nothing")
}

// countingRuns counts the fires of one consumer.
type countingRuns struct {
	batuta.Runs
	n *atomic.Int64
}

func (c *countingRuns) Fire(ctx context.Context, ev batuta.Event) (string, error) {
	c.n.Add(1)
	return c.Runs.Fire(ctx, ev)
}

// TestTriggerNonDurableDeletesAfterRunFinished: in front of a non-durable
// store a row stays in the outbox, leased, until its run finished.
func TestTriggerNonDurableDeletesAfterRunFinished(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{Ops: []Op{OpInsert}})
	runs := newFakeRuns(false)
	runs.hold = true
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob}, runs)

	env.exec(t, `INSERT INTO `+env.orders()+` (amount) SELECT g FROM generate_series(1, 5) g`)
	waitFor(t, "five events", func() bool { return runs.accepted() == 5 })
	require.Equal(t, 5, env.count(t, `SELECT count(*) FROM `+env.ob.withDefaults().quoted()+` WHERE claimed_until > now()`))
	runs.finishAll()
	waitFor(t, "an empty outbox", func() bool { return env.outboxRows(t, env.ob) == 0 })
	require.Equal(t, 5, runs.totalFires())
}

// TestTriggerShutdownReleasesRows: a consumer stopped while runs are in
// flight (non-durable store) hands its rows back at once, and the next
// consumer fires them again (deduplicated by event ID).
func TestTriggerShutdownReleasesRows(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{Ops: []Op{OpInsert}})
	runs := newFakeRuns(false)
	runs.hold = true
	stop := startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob}, runs)
	env.exec(t, `INSERT INTO `+env.orders()+` (amount) SELECT g FROM generate_series(1, 3) g`)
	waitFor(t, "three events", func() bool { return runs.accepted() == 3 })
	stop()
	require.Equal(t, 3, env.count(t, `SELECT count(*) FROM `+env.ob.withDefaults().quoted()+` WHERE claimed_by IS NULL AND claimed_until IS NULL`))

	runs.finishAll()
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob}, runs) // the 30 s lease need not expire
	waitFor(t, "an empty outbox", func() bool { return env.outboxRows(t, env.ob) == 0 })
	require.Equal(t, 3, runs.accepted())
	require.Equal(t, 6, runs.totalFires())
}

// TestTriggerBusyKeepsRows: while fire refuses with ErrBusy the rows stay
// in the outbox; they are delivered once it accepts again.
func TestTriggerBusyKeepsRows(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{Ops: []Op{OpInsert}})
	runs := newFakeRuns(true)
	var busy atomic.Bool
	busy.Store(true)
	var refused atomic.Int64
	runs.fireErr = func(batuta.Event) error {
		if busy.Load() {
			refused.Add(1)
			return batuta.ErrBusy
		}
		return nil
	}
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob, MaxBackoff: 50 * time.Millisecond}, runs)
	env.exec(t, `INSERT INTO `+env.orders()+` (amount) SELECT g FROM generate_series(1, 20) g`)
	waitFor(t, "a few refusals", func() bool { return refused.Load() >= 3 })
	require.Zero(t, runs.accepted())
	require.Equal(t, 20, env.outboxRows(t, env.ob))
	busy.Store(false)
	waitFor(t, "all events", func() bool { return runs.accepted() == 20 })
	waitFor(t, "an empty outbox", func() bool { return env.outboxRows(t, env.ob) == 0 })
}

// TestTriggerMarksUndeliverableRowsDead: a row whose event the orchestrator
// can never accept (over its payload cap) is marked dead, not retried
// forever, and does not hold up the others.
func TestTriggerMarksUndeliverableRowsDead(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{Ops: []Op{OpInsert}})
	runs := newFakeRuns(true)
	runs.fireErr = func(ev batuta.Event) error {
		if len(ev.Data) > 1000 {
			return &batuta.PayloadTooLargeError{What: "event data", Size: len(ev.Data), Limit: 1000}
		}
		return nil
	}
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob}, runs)
	env.exec(t, `INSERT INTO `+env.orders()+` (note) VALUES ('small'), (repeat('x', 2000)), ('small too')`)
	waitFor(t, "two events", func() bool { return runs.accepted() == 2 })
	waitFor(t, "one dead row", func() bool {
		return env.count(t, `SELECT count(*) FROM `+env.ob.withDefaults().quoted()+
			` WHERE dead_at IS NOT NULL AND last_error LIKE '%over the limit of 1000%'`) == 1
	})
	// The two accepted rows are deleted after their fire returned: wait for it.
	waitFor(t, "only the dead row left", func() bool { return env.outboxRows(t, env.ob) == 1 })
}

// TestTriggerPollingOnly: with LISTEN disabled, polling delivers.
func TestTriggerPollingOnly(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{})
	runs := newFakeRuns(true)
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob, DisableListen: true, PollInterval: 20 * time.Millisecond}, runs)
	env.exec(t, `INSERT INTO `+env.orders()+` (amount) VALUES (1)`)
	waitFor(t, "one event", func() bool { return runs.accepted() == 1 })
	require.Zero(t, env.count(t, `SELECT count(*) FROM pg_stat_activity WHERE query = $1`,
		`LISTEN `+quoteIdent(env.ob.withDefaults().Channel)))
}

// TestTriggerListenerReconnects: when the LISTEN connection is killed the
// consumer reconnects and re-scans; with polling effectively off, only the
// listener can deliver the rows written after the kill.
func TestTriggerListenerReconnects(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	ob := env.ob
	ob.Channel = "batuta_test_" + randomSuffix()
	env.ob = ob
	installOrders(t, env, Capture{})
	runs := newFakeRuns(true)
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: ob, PollInterval: time.Hour, MaxBackoff: 100 * time.Millisecond}, runs)
	listenSQL := `LISTEN ` + quoteIdent(ob.Channel)
	listeners := func() int {
		return env.count(t, `SELECT count(*) FROM pg_stat_activity WHERE query = $1`, listenSQL)
	}
	waitFor(t, "the listener", func() bool { return listeners() == 1 })
	env.exec(t, `INSERT INTO `+env.orders()+` (amount) VALUES (1)`)
	waitFor(t, "the first event", func() bool { return runs.accepted() == 1 })

	env.exec(t, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1`, listenSQL)
	env.exec(t, `INSERT INTO `+env.orders()+` (amount) VALUES (2)`) // may be written while nobody listens
	waitFor(t, "the second event", func() bool { return runs.accepted() == 2 })
	waitFor(t, "a new listener", func() bool { return listeners() == 1 })
	env.exec(t, `INSERT INTO `+env.orders()+` (amount) VALUES (3)`)
	waitFor(t, "the third event", func() bool { return runs.accepted() == 3 })
}

// TestTriggerStartStop: many consumers started and canceled concurrently
// return promptly and leak nothing (goleak checks in TestMain).
func TestTriggerStartStop(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{Ops: []Op{OpInsert}})
	env.exec(t, `INSERT INTO `+env.orders()+` (amount) SELECT g FROM generate_series(1, 200) g`)
	runs := newFakeRuns(false)
	trig, err := NewTrigger(TriggerConfig{Pool: env.pool, Outbox: env.ob, BatchSize: 10})
	require.NoError(t, err)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%5)*20*time.Millisecond)
			defer cancel()
			err := trig.RunTracking(ctx, runs)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("RunTracking returned %v", err)
			}
		})
	}
	wg.Wait()
	// Every consumer released what it held: a last one delivers the rest.
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob}, runs)
	waitFor(t, "all events", func() bool { return runs.accepted() == 200 })
	waitFor(t, "an empty outbox", func() bool { return env.outboxRows(t, env.ob) == 0 })
}

func TestTriggerRefusesMissingOutbox(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	trig, err := NewTrigger(TriggerConfig{Pool: env.pool, Outbox: env.ob})
	require.NoError(t, err)
	err = trig.Run(context.Background(), func(context.Context, batuta.Event) error { return nil })
	require.ErrorContains(t, err, "is not installed")
}

func TestTriggerConfigValidation(t *testing.T) {
	t.Parallel()
	pool := mustLazyPool(t) // NewTrigger does no I/O

	tests := []struct {
		name  string
		cfg   TriggerConfig
		field string
		want  error
	}{
		{"no pool", TriggerConfig{}, "Pool", batuta.ErrInvalidConfig},
		{"negative batch", TriggerConfig{Pool: pool, BatchSize: -1}, "BatchSize", batuta.ErrInvalidConfig},
		{"huge batch", TriggerConfig{Pool: pool, BatchSize: 10001}, "BatchSize", batuta.ErrInvalidConfig},
		{"short lease", TriggerConfig{Pool: pool, Lease: 500 * time.Millisecond}, "Lease", batuta.ErrInvalidConfig},
		{"negative poll", TriggerConfig{Pool: pool, PollInterval: -1}, "PollInterval", batuta.ErrInvalidConfig},
		{"negative waiting", TriggerConfig{Pool: pool, MaxWaiting: -1}, "MaxWaiting", batuta.ErrInvalidConfig},
		{"negative backoff", TriggerConfig{Pool: pool, MaxBackoff: -1}, "MaxBackoff", batuta.ErrInvalidConfig},
		{"hostile long table", TriggerConfig{Pool: pool, Outbox: Outbox{Table: strings.Repeat("t", 64)}}, "Outbox.Table", batuta.ErrInvalidIdentifier},
		{"control char in channel", TriggerConfig{Pool: pool, Outbox: Outbox{Channel: "a\nb"}}, "Outbox.Channel", batuta.ErrInvalidIdentifier},
		{"NUL in schema", TriggerConfig{Pool: pool, Outbox: Outbox{Schema: "a\x00"}}, "Outbox.Schema", batuta.ErrInvalidIdentifier},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewTrigger(tt.cfg)
			require.ErrorIs(t, err, tt.want)
			require.ErrorContains(t, err, tt.field)
		})
	}
	_, err := NewTrigger(TriggerConfig{Pool: pool})
	require.NoError(t, err)
}

// mustLazyPool returns a pool that never connects unless used.
func mustLazyPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// TestBookkeepingCommitsAsynchronously: the consumer's own statements
// commit with synchronous_commit off, and the setting does not leak into
// the pool's sessions (it is transaction-local).
func TestBookkeepingCommitsAsynchronously(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	cfg, err := pgxpool.ParseConfig(outboxTestDSN())
	require.NoError(t, err)
	cfg.MaxConns = 1 // one session: a leak would show
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	defer pool.Close()
	trig, err := NewTrigger(TriggerConfig{Pool: pool, Outbox: env.ob})
	require.NoError(t, err)
	c := &consumer{t: trig}
	ctx := context.Background()
	require.NoError(t, c.exec(ctx, `CREATE TABLE `+quoteQualified(env.schema, "setting")+` AS SELECT current_setting('synchronous_commit') AS s`))
	var inside, after string
	require.NoError(t, pool.QueryRow(ctx, `SELECT s FROM `+quoteQualified(env.schema, "setting")).Scan(&inside))
	require.NoError(t, pool.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&after))
	require.Equal(t, "off", inside)
	require.NotEqual(t, "off", after)
}
