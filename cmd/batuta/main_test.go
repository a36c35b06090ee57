package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// result is one in-process run of the command.
type result struct {
	stdout, stderr string
	code           int
}

// cli runs the command in-process with args and the environment vars.
func cli(t *testing.T, vars map[string]string, args ...string) result {
	t.Helper()
	return cliTTY(t, false, vars, args...)
}

func cliTTY(t *testing.T, tty bool, vars map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := run(ctx, args, env{
		stdin: strings.NewReader(""), stdout: &out, stderr: &errb, tty: tty,
		getenv: func(k string) string { return vars[k] },
	})
	t.Logf("batuta %s -> %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return result{out.String(), errb.String(), code}
}

// fixture is a store seeded with runs in every state, and the flags that
// name it.
type fixture struct {
	store batuta.Store
	args  []string // --dsn ... [--schema ...]
	dsn   string
	ids   map[string]string // name -> run ID
}

// with appends the store flags to args.
func (f *fixture) with(args ...string) []string { return append(args, f.args...) }

// pgTestDSN is the server the PostgreSQL tests use.
func pgTestDSN() string {
	if dsn := os.Getenv("BATUTA_PG_DSN"); dsn != "" {
		return dsn
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// pgPool connects to the test server, skipping the test when it is
// unreachable (failing it with BATUTA_REQUIRE_SERVICES=1).
func pgPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, pgTestDSN())
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		if os.Getenv("BATUTA_REQUIRE_SERVICES") == "1" {
			t.Fatalf("PostgreSQL unreachable and BATUTA_REQUIRE_SERVICES=1: %v", err)
		}
		t.Skipf("PostgreSQL unreachable (set BATUTA_PG_DSN; BATUTA_REQUIRE_SERVICES=1 makes this fatal): %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// pgSchema returns a fresh schema name, dropped at cleanup.
func pgSchema(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	schema := "cli_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	})
	return schema
}

// stores runs fn against a seeded SQLite store and a seeded PostgreSQL
// store (skipped when PostgreSQL is unreachable).
func stores(t *testing.T, fn func(t *testing.T, f *fixture)) {
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "batuta.db")
		s, err := batutasqlite.Open(context.Background(), path, batutasqlite.Config{Logger: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		f := &fixture{store: s, dsn: "sqlite:" + path, args: []string{"--dsn", "sqlite:" + path}}
		seed(t, f)
		fn(t, f)
	})
	t.Run("postgres", func(t *testing.T) {
		pool := pgPool(t)
		schema := pgSchema(t, pool)
		s, err := batutapg.New(context.Background(), pool, batutapg.Config{Schema: schema, DisableListen: true, LivenessInterval: -1})
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		f := &fixture{store: s, dsn: pgTestDSN(), args: []string{"--dsn", pgTestDSN(), "--schema", schema}}
		seed(t, f)
		fn(t, f)
	})
}

// seed records six runs through the Store contract, as workers would
// leave them:
//
//	ok       orders   succeeded
//	declined orders   failed (charge failed, ship upstream_failed)
//	dup      orders   canceled
//	refused  billing  failed ("connection refused")
//	busy     billing  running (its first task claimed)
//	later    billing  pending
func seed(t *testing.T, f *fixture) {
	t.Helper()
	ctx := context.Background()
	s := f.store
	f.ids = map[string]string{}
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	n := 0
	create := func(name, workflow string) string {
		n++
		id := mustV7(t, base.Add(time.Duration(n)*time.Minute))
		_, created, err := s.CreateRun(ctx, batuta.NewRun{
			ID: id, Workflow: workflow, CreatedAt: base.Add(time.Duration(n) * time.Minute),
			Event: batuta.Event{ID: "ev-" + name, Subject: "customer-" + name, Data: []byte(`{"order":` + `"` + name + `"}`), Time: base},
			Tasks: []batuta.TaskSpec{{Name: "charge"}, {Name: "ship", Deps: []int{0}}},
		})
		require.NoError(t, err)
		require.True(t, created)
		f.ids[name] = id
		return id
	}
	claim := func(workflow string) batuta.Claim {
		now := time.Now()
		cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "seed", Workflows: []string{workflow}, Limit: 1, Now: now, LeaseUntil: now.Add(time.Hour)})
		require.NoError(t, err)
		require.Len(t, cs, 1)
		return cs[0]
	}
	complete := func(c batuta.Claim, out batuta.Outcome, msg string) {
		now := time.Now()
		comp := batuta.Completion{ClaimRef: c.Ref(), Outcome: out, Attempt: c.Attempt, Error: msg, FinishedAt: now}
		switch out {
		case batuta.OutcomeSucceeded:
			comp.Output, comp.StartedAt = json.RawMessage(`"done"`), now.Add(-10*time.Millisecond)
		case batuta.OutcomeFailed:
			comp.StartedAt = now.Add(-20 * time.Millisecond)
		}
		rs, err := s.CompleteTasks(ctx, []batuta.Completion{comp})
		require.NoError(t, err)
		require.NoError(t, rs[0].Err)
	}

	create("ok", "orders")
	complete(claim("orders"), batuta.OutcomeSucceeded, "")
	complete(claim("orders"), batuta.OutcomeSucceeded, "")

	create("declined", "orders")
	complete(claim("orders"), batuta.OutcomeFailed, "card declined\n(stack line 1)")
	complete(claim("orders"), batuta.OutcomeUpstreamFailed, "charge failed")

	id := create("dup", "orders")
	_, err := s.CancelRun(ctx, id, "duplicate order", time.Now())
	require.NoError(t, err)

	create("refused", "billing")
	complete(claim("billing"), batuta.OutcomeFailed, "dial tcp 10.0.0.7:443: connection refused")
	complete(claim("billing"), batuta.OutcomeUpstreamFailed, "charge failed")

	create("busy", "billing")
	_ = claim("billing")

	create("later", "billing")

	for name, want := range map[string]batuta.RunState{
		"ok": batuta.RunSucceeded, "declined": batuta.RunFailed, "dup": batuta.RunCanceled,
		"refused": batuta.RunFailed, "busy": batuta.RunRunning, "later": batuta.RunPending,
	} {
		r, err := s.GetRun(ctx, f.ids[name])
		require.NoError(t, err)
		require.Equal(t, want, r.State, name)
	}
}

// mustV7 returns a UUIDv7 whose timestamp is at, so runs list in creation
// order.
func mustV7(t *testing.T, at time.Time) string {
	t.Helper()
	var b [16]byte
	_, _ = rand.Read(b[:])
	ms := uint64(at.UnixMilli())
	for i := range 6 {
		b[i] = byte(ms >> (40 - 8*i))
	}
	b[6] = 0x70 | b[6]&0x0f
	b[8] = 0x80 | b[8]&0x3f
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// openSQLite opens a SQLite store at path, closed at cleanup.
func openSQLite(t *testing.T, path string) *batutasqlite.Store {
	t.Helper()
	s, err := batutasqlite.Open(context.Background(), path, batutasqlite.Config{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// createPending records a pending run of workflow with one task.
func createPending(t *testing.T, s batuta.Store, workflow string) string {
	t.Helper()
	id := mustV7(t, time.Now())
	_, _, err := s.CreateRun(context.Background(), batuta.NewRun{
		ID: id, Workflow: workflow, CreatedAt: time.Now(),
		Event: batuta.Event{ID: id}, Tasks: []batuta.TaskSpec{{Name: "only"}},
	})
	require.NoError(t, err)
	return id
}
