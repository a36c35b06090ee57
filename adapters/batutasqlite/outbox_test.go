package batutasqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// testDSN is how the tests (and the docs) open SQLite with modernc.org/sqlite:
// WAL mode, a busy timeout so writers wait for the write lock, and BEGIN
// IMMEDIATE so a transaction takes the write lock up front.
func testDSN(path string) string {
	return "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
}

// openDB opens a new SQLite file in t.TempDir.
func openDB(t testing.TB) *sql.DB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "outbox.db")
	db, err := sql.Open("sqlite", testDSN(path))
	require.NoError(t, err)
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	require.NoError(t, db.Ping())
	t.Cleanup(func() { db.Close() })
	return db
}

func suffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// fixture is a user table and an outbox in a fresh database file.
type fixture struct {
	db     *sql.DB
	table  string
	outbox Outbox
}

func newFixture(t *testing.T, db *sql.DB, tableDDL string) *fixture {
	t.Helper()
	s := suffix()
	f := &fixture{db: db, table: "bt_" + s, outbox: Outbox{Table: "bt_" + s + "_outbox"}}
	if tableDDL == "" {
		tableDDL = "(id INTEGER PRIMARY KEY AUTOINCREMENT, writer INTEGER NOT NULL DEFAULT 0, name TEXT)"
	}
	f.exec(t, "CREATE TABLE "+quoteIdent(f.table)+" "+tableDDL)
	return f
}

func (f *fixture) exec(t testing.TB, q string, args ...any) sql.Result {
	t.Helper()
	res, err := f.db.ExecContext(context.Background(), q, args...)
	require.NoError(t, err, q)
	return res
}

func (f *fixture) capture() Capture { return Capture{Table: f.table, Outbox: f.outbox} }

func (f *fixture) outboxRows(t testing.TB) int {
	t.Helper()
	var n int
	require.NoError(t, f.db.QueryRow("SELECT COUNT(*) FROM "+f.outbox.quoted()).Scan(&n))
	return n
}

// fakeRuns is a batuta.Runs that records what was fired, deduplicates by
// event ID like a Store, and finishes runs at once or when told to.
type fakeRuns struct {
	durable bool
	hold    bool // runs stay unfinished until finish is called

	mu        sync.Mutex
	fireErr   func(ev batuta.Event) error // consulted before accepting
	fires     map[string]int              // Fire calls per event ID
	byEvent   map[string]string           // event ID -> run ID
	runs      map[string]*fakeRun
	accepted  []batuta.Event // one per run, in order
	totalFire int
}

type fakeRun struct {
	ev      batuta.Event
	created time.Time
	done    chan struct{}
}

func newFakeRuns(durable bool) *fakeRuns {
	return &fakeRuns{durable: durable, fires: map[string]int{}, byEvent: map[string]string{}, runs: map[string]*fakeRun{}}
}

func (f *fakeRuns) Workflow() string { return "wf" }

func (f *fakeRuns) Fire(ctx context.Context, ev batuta.Event) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.totalFire++
	f.fires[ev.ID]++

	if f.fireErr != nil {
		if err := f.fireErr(ev); err != nil {
			return "", err
		}
	}
	if id, ok := f.byEvent[ev.ID]; ok {
		return id, nil
	}
	id := fmt.Sprintf("run-%d", len(f.runs)+1)
	r := &fakeRun{ev: ev, created: time.Now(), done: make(chan struct{})}
	if !f.hold {
		close(r.done)
	}
	f.runs[id] = r
	f.byEvent[ev.ID] = id
	f.accepted = append(f.accepted, ev)
	return id, nil
}

func (f *fakeRuns) Get(ctx context.Context, id string) (*batuta.Run, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.runs[id]
	if !ok {
		return nil, batuta.ErrRunNotFound
	}
	return &batuta.Run{ID: id, Workflow: "wf", Event: r.ev}, nil
}

func (f *fakeRuns) Wait(ctx context.Context, id string) (*batuta.Run, error) {
	f.mu.Lock()
	r, ok := f.runs[id]
	f.mu.Unlock()
	if !ok {
		return nil, batuta.ErrRunNotFound
	}
	select {
	case <-r.done:
		return &batuta.Run{ID: id, Workflow: "wf", Event: r.ev, State: batuta.RunSucceeded}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *fakeRuns) Cancel(ctx context.Context, id string) error { return errors.ErrUnsupported }
func (f *fakeRuns) Durable() bool                               { return f.durable }
func (f *fakeRuns) Clock() batuta.Clock                         { return batuta.SystemClock{} }
func (f *fakeRuns) LastTick(ctx context.Context, s string) (time.Time, error) {
	return time.Time{}, nil
}
func (f *fakeRuns) RecordTick(ctx context.Context, s string, tick time.Time) (bool, error) {
	return false, nil
}

// finishOlderThan finishes the held runs created more than d ago and
// reports how many runs are still unfinished.
func (f *fakeRuns) finishOlderThan(d time.Duration) (unfinished int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.runs {
		select {
		case <-r.done:
			continue
		default:
		}
		if time.Since(r.created) >= d {
			close(r.done)
		} else {
			unfinished++
		}
	}
	return unfinished
}

func (f *fakeRuns) acceptedCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.accepted)
}

func (f *fakeRuns) acceptedEvents() []batuta.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]batuta.Event(nil), f.accepted...)
}

// maxFires returns the most Fire calls any one event ID got.
func (f *fakeRuns) maxFires() (string, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	worst, n := "", 0
	for id, c := range f.fires {
		if c > n {
			worst, n = id, c
		}
	}
	return worst, n
}

// startTrigger runs trig.RunTracking(runs) until the returned stop is called
// (or the test ends); stop checks that it returned context.Canceled.
func startTrigger(t *testing.T, trig *Trigger, runs batuta.Runs) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- trig.RunTracking(ctx, runs) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.ErrorIs(t, err, context.Canceled)
			case <-time.After(30 * time.Second):
				t.Error("trigger did not stop within 30s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// newTrigger makes a Trigger that logs to the test log unless cfg has a
// Logger.
func newTrigger(t testing.TB, cfg TriggerConfig) *Trigger {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	trig, err := NewTrigger(cfg)
	require.NoError(t, err)
	return trig
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// eventually waits for cond with a generous deadline.
func eventually(t testing.TB, cond func() bool, msg string, args ...any) {
	t.Helper()
	require.Eventually(t, cond, 60*time.Second, 5*time.Millisecond, append([]any{msg}, args...)...)
}

// change decodes a captured change and its new/old images.
type change struct {
	ChangeData
	newRow, oldRow map[string]any
}

func decodeChange(t testing.TB, ev batuta.Event) change {
	t.Helper()
	var c change
	require.NoError(t, json.Unmarshal(ev.Data, &c.ChangeData), string(ev.Data))
	dec := func(raw json.RawMessage) map[string]any {
		if string(raw) == "null" {
			return nil
		}
		var m map[string]any
		d := json.NewDecoder(strings.NewReader(string(raw)))
		d.UseNumber()
		require.NoError(t, d.Decode(&m), string(raw))
		return m
	}
	c.newRow, c.oldRow = dec(c.New), dec(c.Old)
	return c
}

func TestEmit(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, "")
	ctx := context.Background()
	require.NoError(t, InstallOutbox(ctx, db, f.outbox))
	require.NoError(t, InstallOutbox(ctx, db, f.outbox), "idempotent")

	at := time.Date(2026, 1, 2, 15, 4, 5, 123456789, time.UTC)
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, Emit(ctx, tx, f.outbox, batuta.Event{
		ID: "order-7-placed", Source: "shop", Type: "order.placed", Subject: "7", Time: at,
		Data: []byte(`{"order":7}`), Metadata: map[string]string{"traceparent": "00-abc-01"},
	}))
	require.NoError(t, Emit(ctx, tx, f.outbox, batuta.Event{Type: "order.noted"}))
	require.NoError(t, tx.Commit())

	tx, err = db.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, Emit(ctx, tx, f.outbox, batuta.Event{ID: "rolled-back", Type: "order.placed"}))
	require.NoError(t, tx.Rollback())

	runs := newFakeRuns(true)
	trig := newTrigger(t, TriggerConfig{DB: db, Outbox: f.outbox, StaleCheckInterval: -1})
	stop := startTrigger(t, trig, runs)
	eventually(t, func() bool { return runs.acceptedCount() == 2 && f.outboxRows(t) == 0 }, "both emitted events delivered")
	stop()

	evs := runs.acceptedEvents()
	require.Len(t, evs, 2)
	got := evs[0]
	require.Equal(t, "order-7-placed", got.ID)
	require.Equal(t, "shop", got.Source)
	require.Equal(t, "order.placed", got.Type)
	require.Equal(t, "7", got.Subject)
	require.True(t, at.Equal(got.Time), "time %v", got.Time)
	require.JSONEq(t, `{"order":7}`, string(got.Data))
	require.Equal(t, "00-abc-01", got.Metadata["traceparent"])
	require.Equal(t, "1", got.Metadata["sqlitedeliveries"])

	second := evs[1]
	require.Regexp(t, `^sqlite/`+f.outbox.Table+`/[0-9]+$`, second.ID, "derived, stable per row")
	require.Equal(t, "sqlite/"+f.outbox.Table, second.Source)
	require.Equal(t, "order.noted", second.Type)
	require.WithinDuration(t, time.Now(), second.Time, time.Minute)
	for _, ev := range evs {
		require.NotEqual(t, "rolled-back", ev.ID)
	}
}

func TestEmitRefusesBadInput(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, "")
	ctx := context.Background()
	ob := f.outbox
	ob.MaxEmitBytes = 16
	require.NoError(t, InstallOutbox(ctx, db, ob))
	tests := []struct {
		name string
		ob   Outbox
		ev   batuta.Event
		want error
	}{
		{"data over the cap", ob, batuta.Event{Data: make([]byte, 17)}, batuta.ErrPayloadTooLarge},
		{"NUL in type", ob, batuta.Event{Type: "a\x00b"}, batuta.ErrInvalidPayload},
		{"invalid UTF-8 in ID", ob, batuta.Event{ID: "a\xffb"}, batuta.ErrInvalidPayload},
		{"invalid UTF-8 in metadata", ob, batuta.Event{Metadata: map[string]string{"k": "\xff"}}, batuta.ErrInvalidPayload},
		{"hostile outbox name", Outbox{Table: "x\x00; DROP TABLE y"}, batuta.Event{}, batuta.ErrInvalidIdentifier},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx, err := db.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer tx.Rollback()
			require.ErrorIs(t, Emit(ctx, tx, tt.ob, tt.ev), tt.want)
		})
	}
	require.Equal(t, 0, f.outboxRows(t), "nothing written")
}
