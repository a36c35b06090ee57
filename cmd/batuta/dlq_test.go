package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
)

// dlqFixture is an installed outbox with three rows, the first two dead
// (as the consumer marks rows it can never fire).
type dlqFixture struct {
	args  []string
	count func() (dead, live int)
}

func sqliteOutbox(t *testing.T) *dlqFixture {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "outbox.db")
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	require.NoError(t, batutasqlite.InstallOutbox(ctx, db, batutasqlite.Outbox{}))
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	for _, id := range []string{"order-1", "order-2", "order-3"} {
		require.NoError(t, batutasqlite.Emit(ctx, tx, batutasqlite.Outbox{}, batuta.Event{ID: id, Data: []byte(`{"id":"` + id + `"}`)}))
	}
	require.NoError(t, tx.Commit())
	_, err = db.ExecContext(ctx, `UPDATE batuta_outbox SET dead_at = ?, last_error = 'payload over the cap', deliveries = 1
		WHERE id IN (SELECT id FROM batuta_outbox ORDER BY id LIMIT 2)`, time.Now().UTC().Format(time.RFC3339Nano))
	require.NoError(t, err)
	return &dlqFixture{args: []string{"--dsn", "sqlite:" + path}, count: func() (int, int) {
		var dead, live int
		require.NoError(t, db.QueryRowContext(ctx, `SELECT count(dead_at), count(*) - count(dead_at) FROM batuta_outbox`).Scan(&dead, &live))
		return dead, live
	}}
}

func pgOutbox(t *testing.T) *dlqFixture {
	ctx := context.Background()
	pool := pgPool(t)
	schema := pgSchema(t, pool)
	_, err := pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize())
	require.NoError(t, err)
	ob := batutapg.Outbox{Schema: schema, Table: "orders_outbox"}
	require.NoError(t, batutapg.InstallOutbox(ctx, pool, ob))
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	for _, id := range []string{"order-1", "order-2", "order-3"} {
		require.NoError(t, batutapg.Emit(ctx, tx, ob, batuta.Event{ID: id, Data: []byte(`{"id":"` + id + `"}`)}))
	}
	require.NoError(t, tx.Commit(ctx))
	table := pgx.Identifier{schema, "orders_outbox"}.Sanitize()
	_, err = pool.Exec(ctx, `UPDATE `+table+` SET dead_at = now(), last_error = 'payload over the cap', deliveries = 1
		WHERE id IN (SELECT id FROM `+table+` ORDER BY id LIMIT 2)`)
	require.NoError(t, err)
	return &dlqFixture{args: []string{"--dsn", pgTestDSN(), "--outbox", schema + ".orders_outbox"}, count: func() (int, int) {
		var dead, live int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(dead_at), count(*) - count(dead_at) FROM `+table).Scan(&dead, &live))
		return dead, live
	}}
}

func TestDLQ(t *testing.T) {
	for name, mk := range map[string]func(*testing.T) *dlqFixture{"sqlite": sqliteOutbox, "postgres": pgOutbox} {
		t.Run(name, func(t *testing.T) {
			f := mk(t)
			with := func(args ...string) []string { return append(args, f.args...) }

			r := cli(t, nil, with("dlq", "list")...)
			require.Equal(t, exitOK, r.code, r.stderr)
			rows := tableRows(r.stdout)
			require.Equal(t, []string{"ID", "DEAD SINCE", "ATTEMPTS", "EVENT", "REASON", "ERROR"}, rows[0])
			require.Len(t, rows, 3)
			require.Equal(t, "1", rows[1][2])
			require.Contains(t, r.stdout, "payload over the cap")

			r = cli(t, nil, with("dlq", "list", "--json")...)
			require.Equal(t, exitOK, r.code, r.stderr)
			var items []jsonDeadLetter
			require.NoError(t, json.Unmarshal([]byte(r.stdout), &items))
			require.Len(t, items, 2)
			require.JSONEq(t, `{"id":"order-1"}`, string(items[0].Event.Data))
			first, second := items[0].ID, items[1].ID

			// Redrive one: it leaves the box, claimable again. Twice is
			// harmless.
			r = cli(t, nil, with("dlq", "redrive", first)...)
			require.Equal(t, exitOK, r.code, r.stderr)
			require.Contains(t, r.stdout, "redrove 1 of 1 dead letter(s)")
			dead, live := f.count()
			require.Equal(t, 1, dead)
			require.Equal(t, 2, live)
			r = cli(t, nil, with("dlq", "redrive", first)...)
			require.Equal(t, exitOK, r.code, r.stderr)
			require.Contains(t, r.stdout, "redrove 0 of 1 dead letter(s)")
			require.Contains(t, r.stdout, "1 no longer there")

			// Delete all, with a dry run first.
			r = cli(t, nil, with("dlq", "delete", "--all", "--dry-run")...)
			require.Equal(t, exitOK, r.code, r.stderr)
			require.Contains(t, r.stdout, "would be deleted: "+second)
			dead, _ = f.count()
			require.Equal(t, 1, dead)
			r = cli(t, nil, with("dlq", "delete", "--all", "--json")...)
			require.Equal(t, exitOK, r.code, r.stderr)
			require.Contains(t, r.stdout, `"done": 1`)
			dead, live = f.count()
			require.Equal(t, 0, dead)
			require.Equal(t, 2, live, "live rows are never touched")
			r = cli(t, nil, with("dlq", "list")...)
			require.Equal(t, exitOK, r.code, r.stderr)
			require.True(t, strings.HasPrefix(r.stdout, "no dead letters in "), r.stdout)

			// Usage errors.
			r = cli(t, nil, with("dlq", "delete")...)
			require.Equal(t, exitUsage, r.code)
			r = cli(t, nil, with("dlq", "redrive", "not-a-number")...)
			require.Equal(t, exitUsage, r.code, r.stderr)
		})
	}
}
