package batutasqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// openTemp opens a Store on a new file in t.TempDir and closes it in
// t.Cleanup.
func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "batuta.db")
	s, err := Open(context.Background(), path, Config{Logger: quietLogger()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

// quietLogger drops the store's informational logs (migrations applied,
// tasks rescued) that every test would otherwise print.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func TestConformance(t *testing.T) {
	t.Parallel()
	batutatest.TestStore(t, batutatest.StoreSuite{
		New: func(t *testing.T) batuta.Store {
			s, _ := openTemp(t)
			return s
		},
		Reopen: func(t *testing.T, old batuta.Store) batuta.Store {
			s := old.(*Store)
			path := s.path
			require.NoError(t, s.Close())
			s2, err := Open(context.Background(), path, Config{Logger: quietLogger()})
			require.NoError(t, err)
			t.Cleanup(func() { _ = s2.Close() })
			return s2
		},
	})
}

// TestFlow runs the flow controls end to end through an orchestrator on the
// SQLite store.
func TestFlow(t *testing.T) {
	t.Parallel()
	batutatest.TestFlow(t, func(t *testing.T) batuta.Store {
		s, _ := openTemp(t)
		return s
	})
}

func TestOpenRejectsBadConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name  string
		path  string
		cfg   Config
		field string
	}{
		{"empty path", "", Config{}, "path"},
		{"memory", ":memory:", Config{}, "path"},
		{"memory uri", "file:x?mode=memory", Config{}, "path"},
		{"negative busy timeout", filepath.Join(dir, "a.db"), Config{BusyTimeout: -time.Second}, "BusyTimeout"},
		{"unknown synchronous", filepath.Join(dir, "b.db"), Config{Synchronous: "OFF"}, "Synchronous"},
		{"negative read conns", filepath.Join(dir, "c.db"), Config{ReadConns: -1}, "ReadConns"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := Open(context.Background(), tc.path, tc.cfg)
			require.Nil(t, s)
			require.ErrorIs(t, err, batuta.ErrInvalidConfig)
			var ce *batuta.ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.field, ce.Field)
		})
	}
	_, err := New(context.Background(), nil, Config{})
	require.ErrorIs(t, err, batuta.ErrInvalidConfig)
	db, err := sql.Open("sqlite", filepath.Join(dir, "one.db"))
	require.NoError(t, err)
	defer func() { require.NoError(t, db.Close()) }()
	db.SetMaxOpenConns(1)
	_, err = New(context.Background(), db, Config{})
	var ce *batuta.ConfigError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "db", ce.Field)
}

func TestNewOnCallerDB(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "app.db"))
	require.NoError(t, err)
	defer func() { require.NoError(t, db.Close()) }()
	db.SetMaxOpenConns(3)

	s, err := New(ctx, db, Config{Synchronous: "normal", Logger: quietLogger()})
	require.NoError(t, err)
	var mode string
	require.NoError(t, db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode))
	require.Equal(t, "wal", mode)
	id, created, err := s.CreateRun(ctx, newRun("r1", "e1"))
	require.NoError(t, err)
	require.True(t, created)
	r, err := s.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunPending, r.State)
	require.NoError(t, s.Close())
	require.NoError(t, db.PingContext(ctx), "Close must leave the caller's database open")
	_, err = s.GetRun(ctx, id)
	require.ErrorIs(t, err, batuta.ErrClosed)
}

func TestMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("idempotent", func(t *testing.T) {
		t.Parallel()
		s, path := openTemp(t)
		require.NoError(t, s.Close())
		s2, err := Open(ctx, path, Config{Logger: quietLogger()})
		require.NoError(t, err)
		defer func() { require.NoError(t, s2.Close()) }()
		var n, v int
		require.NoError(t, s2.db.QueryRowContext(ctx, `SELECT count(*), max(version) FROM batuta_migrations`).Scan(&n, &v))
		require.Equal(t, SchemaVersion(), n)
		require.Equal(t, SchemaVersion(), v)
	})

	t.Run("concurrent opens of a new file", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "new.db")
		var wg sync.WaitGroup
		errs := make([]error, 4)
		stores := make([]*Store, 4)
		for i := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stores[i], errs[i] = Open(ctx, path, Config{Logger: quietLogger()})
			}()
		}
		wg.Wait()
		for i, s := range stores {
			require.NoError(t, errs[i])
			require.NoError(t, s.Close())
		}
		db, err := sql.Open("sqlite", path)
		require.NoError(t, err)
		defer func() { require.NoError(t, db.Close()) }()
		var n int
		require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM batuta_migrations`).Scan(&n))
		require.Equal(t, SchemaVersion(), n)
	})

	t.Run("newer schema refused", func(t *testing.T) {
		t.Parallel()
		s, path := openTemp(t)
		_, err := s.db.ExecContext(ctx, `INSERT INTO batuta_migrations (version, name, applied_at) VALUES (9999, 'future', 0)`)
		require.NoError(t, err)
		require.NoError(t, s.Close())
		_, err = Open(ctx, path, Config{Logger: quietLogger()})
		require.ErrorContains(t, err, "newer than this build")
	})

	t.Run("manual", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "manual.db")
		_, err := Open(ctx, path, Config{ManualMigrate: true})
		require.ErrorContains(t, err, "apply the migrations")
		db, err := sql.Open("sqlite", path)
		require.NoError(t, err)
		defer func() { require.NoError(t, db.Close()) }()
		require.NoError(t, Migrate(ctx, db))
		require.NoError(t, Migrate(ctx, db))
		s, err := Open(ctx, path, Config{ManualMigrate: true})
		require.NoError(t, err)
		require.NoError(t, s.Close())
	})
}

func TestClose(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close is idempotent")
	_, _, err := s.CreateRun(ctx, newRun("r1", "e1"))
	require.ErrorIs(t, err, batuta.ErrClosed)
	_, err = s.ClaimTasks(ctx, batuta.ClaimParams{Limit: 1, Now: time.Now()})
	require.ErrorIs(t, err, batuta.ErrClosed)
	_, err = s.ListRuns(ctx, batuta.RunFilter{})
	require.ErrorIs(t, err, batuta.ErrClosed)
	_, err = s.LastTick(ctx, "x")
	require.ErrorIs(t, err, batuta.ErrClosed)
}

// TestGroupCommit runs many concurrent writes, some of which fail after
// writing: the failed ones leave nothing, the others all commit.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	_, err := s.db.ExecContext(ctx, `CREATE TABLE probe (n INTEGER PRIMARY KEY)`)
	require.NoError(t, err)
	const n = 200
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.write(ctx, func(ctx context.Context) error {
				if _, err := s.wconn.ExecContext(ctx, `INSERT INTO probe (n) VALUES (?)`, i); err != nil {
					return err
				}
				if i%3 == 0 {
					return fmt.Errorf("write %d fails", i)
				}
				return nil
			})
		}()
	}
	wg.Wait()
	want := 0
	for i, err := range errs {
		if i%3 == 0 {
			require.ErrorContains(t, err, "fails")
		} else {
			require.NoError(t, err)
			want++
		}
	}
	var got, bad int
	require.NoError(t, s.db.QueryRowContext(ctx, `SELECT count(*), count(*) FILTER (WHERE n % 3 = 0) FROM probe`).Scan(&got, &bad))
	require.Equal(t, want, got)
	require.Zero(t, bad, "a failed write's statements were committed")
}

func TestCanceledContextWritesNothing(t *testing.T) {
	t.Parallel()
	s, _ := openTemp(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err := s.CreateRun(ctx, newRun("r1", "e1"))
	require.ErrorIs(t, err, context.Canceled)
	_, err = s.GetRun(context.Background(), "r1")
	require.ErrorIs(t, err, batuta.ErrRunNotFound)
}

func TestWorkAvailable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	select {
	case <-s.WorkAvailable():
		t.Fatal("signal before any work")
	default:
	}
	_, _, err := s.CreateRun(ctx, newRun("r1", "e1"))
	require.NoError(t, err)
	select {
	case <-s.WorkAvailable():
	default:
		t.Fatal("no signal after CreateRun")
	}
}

// TestJSONColumns checks the storage format: the Event, outputs and attempt
// records are JSON text, times are unix nanoseconds.
func TestJSONColumns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	nr := newRun("r1", "e1")
	nr.Event.Data = []byte(`{"order":42}`)
	_, _, err := s.CreateRun(ctx, nr)
	require.NoError(t, err)
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 1, Now: nr.CreatedAt, LeaseUntil: nr.CreatedAt.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, cs, 1)
	res, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: 1,
		Output: json.RawMessage(`{"charged":true}`), StartedAt: nr.CreatedAt, FinishedAt: nr.CreatedAt}})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)

	var eventOK, outputOK, attemptsOK bool
	var created int64
	require.NoError(t, s.db.QueryRowContext(ctx, `SELECT json_valid(r.event), json_valid(t.output), json_valid(t.attempts), r.created_at
    FROM batuta_runs r JOIN batuta_tasks t ON t.run_id = r.id WHERE r.id = 'r1' AND t.name = 'x'`).Scan(&eventOK, &outputOK, &attemptsOK, &created))
	require.True(t, eventOK && outputOK && attemptsOK)
	require.Equal(t, nr.CreatedAt.UnixNano(), created)
	r, err := s.GetRun(ctx, "r1")
	require.NoError(t, err)
	require.Equal(t, json.RawMessage(`{"charged":true}`), r.Task("x").Output)
}

func TestOutputEncoding(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	now := time.Now()
	for _, id := range []string{"r1", "r2", "r3"} {
		_, _, err := s.CreateRun(ctx, newRun(id, id))
		require.NoError(t, err)
	}
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 3, Now: now, LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, cs, 3)
	outputs := []any{map[string]int{"n": 1}, json.RawMessage(`{not json`), nil}
	comps := make([]batuta.Completion, 3)
	for i, c := range cs {
		comps[i] = batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: 1, Output: outputs[i], StartedAt: now, FinishedAt: now}
	}
	res, err := s.CompleteTasks(ctx, comps)
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	require.ErrorIs(t, res[1].Err, batuta.ErrInvalidPayload)
	require.NoError(t, res[2].Err)

	r, err := s.GetRun(ctx, cs[0].RunID)
	require.NoError(t, err)
	require.JSONEq(t, `{"n":1}`, string(r.Task("x").Output.(json.RawMessage)))
	r, err = s.GetRun(ctx, cs[1].RunID)
	require.NoError(t, err)
	require.Equal(t, batuta.TaskRunning, r.Task("x").State, "a refused output writes nothing")
	r, err = s.GetRun(ctx, cs[2].RunID)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.Nil(t, r.Task("x").Output)
}

func TestPruneInBatches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	now := time.Now()
	const n = 25
	for i := 0; i < n; i++ {
		_, _, err := s.CreateRun(ctx, newRun(fmt.Sprintf("r%02d", i), fmt.Sprint(i)))
		require.NoError(t, err)
	}
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: n, Now: now, LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, cs, n)
	comps := make([]batuta.Completion, n)
	for i, c := range cs {
		comps[i] = batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: 1, StartedAt: now, FinishedAt: now}
	}
	_, err = s.CompleteTasks(ctx, comps)
	require.NoError(t, err)
	_, _, err = s.CreateRun(ctx, newRun("unfinished", "u"))
	require.NoError(t, err)

	deleted, err := s.Prune(ctx, batuta.PrunePolicy{Before: now.Add(time.Second), BatchSize: 10})
	require.NoError(t, err)
	require.Equal(t, n, deleted)
	var runs, tasks, active int
	require.NoError(t, s.db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM batuta_runs), (SELECT count(*) FROM batuta_tasks),
    (SELECT value FROM batuta_counters WHERE name = 'active_runs')`).Scan(&runs, &tasks, &active))
	require.Equal(t, 1, runs)
	require.Equal(t, 1, tasks, "pruned runs' tasks must go too")
	require.Equal(t, 1, active)
}

// TestCanceledRunWithFailure pins the final state of a canceled run in which
// a task failed: canceled, as in the in-memory store.
func TestCanceledRunWithFailure(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	now := time.Now()
	nr := newRun("r1", "e1")
	nr.Tasks = []batuta.TaskSpec{{Name: "x"}, {Name: "y"}}
	_, _, err := s.CreateRun(ctx, nr)
	require.NoError(t, err)
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 2, Now: now, LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, cs, 2)
	ok, err := s.CancelRun(ctx, "r1", "stop", now)
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = s.CancelRun(ctx, "r1", "again", now)
	require.NoError(t, err)
	require.False(t, ok, "a second cancel changes nothing")
	res, err := s.CompleteTasks(ctx, []batuta.Completion{
		{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeFailed, Attempt: 1, Error: "boom", StartedAt: now, FinishedAt: now},
		{ClaimRef: cs[1].Ref(), Outcome: batuta.OutcomeRetry, Attempt: 1, Error: "flaky", StartedAt: now, FinishedAt: now, RetryAt: now.Add(time.Hour)},
	})
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, res[1].RunFinished)
	r, err := s.GetRun(ctx, "r1")
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, r.State)
	require.Equal(t, "stop", r.Error)
	require.Equal(t, batuta.TaskCanceled, r.Task("y").State, "a retry of a canceled run is canceled")
}

func newRun(id, eventID string) batuta.NewRun {
	now := time.Now()
	return batuta.NewRun{ID: id, Workflow: "wf", Event: batuta.Event{ID: eventID, Time: now},
		Tasks: []batuta.TaskSpec{{Name: "x"}}, CreatedAt: now}
}
