package batutapg

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// triggerOIDs returns the OIDs of the batuta triggers on the orders table
// and of the outbox's capture function: unchanged OIDs prove that an
// install ran no DDL.
func triggerOIDs(t *testing.T, env *outboxEnv, ob Outbox) []uint32 {
	t.Helper()
	ob = ob.withDefaults()
	rows, err := env.pool.Query(context.Background(), `SELECT t.oid FROM pg_trigger t
		WHERE t.tgrelid = $1::regclass AND t.tgname LIKE 'batuta_%' ORDER BY t.tgname`, env.orders())
	require.NoError(t, err)
	var oids []uint32
	for rows.Next() {
		var oid uint32
		require.NoError(t, rows.Scan(&oid))
		oids = append(oids, oid)
	}
	require.NoError(t, rows.Err())
	var fn uint32
	require.NoError(t, env.pool.QueryRow(context.Background(), `SELECT p.oid FROM pg_proc p
		JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1 AND p.proname = $2`,
		ob.Schema, ob.functionName()).Scan(&fn))
	return append(oids, fn)
}

func TestInstallCaptureIdempotentWithStatus(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	ctx := context.Background()
	spec := Capture{Outbox: env.ob, Schema: env.schema, Table: "orders", Ops: []Op{OpInsert, OpUpdate}}

	st, err := CaptureStatus(ctx, env.pool, spec)
	require.NoError(t, err)
	require.False(t, st.Installed)
	require.False(t, st.Current)
	require.Len(t, st.Problems, 4) // table, function, two triggers

	require.NoError(t, InstallCapture(ctx, env.pool, spec))
	st, err = CaptureStatus(ctx, env.pool, spec)
	require.NoError(t, err)
	require.Equal(t, InstallStatus{Installed: true, Current: true}, st)
	oids := triggerOIDs(t, env, env.ob)
	require.Len(t, oids, 3)

	// Installing again changes nothing, not even the objects' identity.
	require.NoError(t, InstallCapture(ctx, env.pool, spec))
	require.Equal(t, oids, triggerOIDs(t, env, env.ob))

	// A changed spec is installed but stale until installed.
	changed := spec
	changed.Ops = []Op{OpUpdate}
	changed.When = "NEW.amount > 0"
	st, err = CaptureStatus(ctx, env.pool, changed)
	require.NoError(t, err)
	require.True(t, st.Installed)
	require.False(t, st.Current)
	require.Len(t, st.Problems, 1)
	require.Contains(t, st.Problems[0], "update trigger batuta_update_")
	require.Contains(t, st.Problems[0], "stale")
	require.NoError(t, InstallCapture(ctx, env.pool, changed))
	st, err = CaptureStatus(ctx, env.pool, changed)
	require.NoError(t, err)
	require.True(t, st.Current)
	st, err = CaptureStatus(ctx, env.pool, spec) // the insert trigger was left alone
	require.NoError(t, err)
	require.Equal(t, []string{st.Problems[0]}, st.Problems)
	require.Contains(t, st.Problems[0], "update trigger")

	// A disabled trigger is not current; installing enables it again.
	env.exec(t, `ALTER TABLE `+env.orders()+` DISABLE TRIGGER `+quoteIdent(changed.withDefaults().triggerName(OpUpdate)))
	st, err = CaptureStatus(ctx, env.pool, changed)
	require.NoError(t, err)
	require.False(t, st.Current)
	require.Contains(t, st.Problems[0], "disabled")
	require.NoError(t, InstallCapture(ctx, env.pool, changed))
	st, err = CaptureStatus(ctx, env.pool, changed)
	require.NoError(t, err)
	require.True(t, st.Current)

	// A stale capture function (another version) is replaced.
	ob := env.ob.withDefaults()
	env.exec(t, `COMMENT ON FUNCTION `+quoteQualified(ob.Schema, ob.functionName())+`() IS 'batuta capture function v0'`)
	ost, err := OutboxStatus(ctx, env.pool, env.ob)
	require.NoError(t, err)
	require.True(t, ost.Installed)
	require.False(t, ost.Current)
	require.NoError(t, InstallOutbox(ctx, env.pool, env.ob))
	ost, err = OutboxStatus(ctx, env.pool, env.ob)
	require.NoError(t, err)
	require.True(t, ost.Current)

	// Uninstall one operation, then all, twice.
	require.NoError(t, UninstallCapture(ctx, env.pool, Capture{Outbox: env.ob, Schema: env.schema, Table: "orders", Ops: []Op{OpUpdate}}))
	st, err = CaptureStatus(ctx, env.pool, Capture{Outbox: env.ob, Schema: env.schema, Table: "orders", Ops: []Op{OpInsert}})
	require.NoError(t, err)
	require.True(t, st.Current)
	for range 2 {
		require.NoError(t, UninstallCapture(ctx, env.pool, Capture{Outbox: env.ob, Schema: env.schema, Table: "orders"}))
	}
	st, err = CaptureStatus(ctx, env.pool, spec)
	require.NoError(t, err)
	require.False(t, st.Installed)
	require.Len(t, triggerOIDs(t, env, env.ob), 1) // only the function is left

	// Uninstall the outbox, twice.
	for range 2 {
		require.NoError(t, UninstallOutbox(ctx, env.pool, env.ob))
	}
	ost, err = OutboxStatus(ctx, env.pool, env.ob)
	require.NoError(t, err)
	require.False(t, ost.Installed)
	require.Zero(t, env.count(t, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = 'batuta_outbox'`, env.schema))
}

func TestUninstallOutboxDropsItsTriggers(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	ctx := context.Background()
	installOrders(t, env, Capture{})
	require.NoError(t, UninstallOutbox(ctx, env.pool, env.ob))
	require.Zero(t, env.count(t, `SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal`, env.orders()))
	env.exec(t, `INSERT INTO `+env.orders()+` (amount) VALUES (1)`) // writes still work
}

func TestInstallConcurrently(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() {
			errs[i] = InstallCapture(ctx, env.pool, Capture{Outbox: env.ob, Schema: env.schema, Table: "orders"})
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	st, err := CaptureStatus(ctx, env.pool, Capture{Outbox: env.ob, Schema: env.schema, Table: "orders"})
	require.NoError(t, err)
	require.True(t, st.Current, st.Problems)
}

func TestInstallRefusesForeignTable(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	ctx := context.Background()
	ob := Outbox{Schema: env.schema, Table: "not_an_outbox"}
	env.exec(t, `CREATE TABLE `+quoteQualified(env.schema, "not_an_outbox")+` (x int)`)
	err := InstallOutbox(ctx, env.pool, ob)
	require.ErrorContains(t, err, "exists and is not a batuta outbox")
	err = UninstallOutbox(ctx, env.pool, ob)
	require.ErrorContains(t, err, "not a batuta outbox; not dropping it")
	require.Zero(t, env.count(t, `SELECT count(*) FROM `+quoteQualified(env.schema, "not_an_outbox")))
	st, err := OutboxStatus(ctx, env.pool, ob)
	require.NoError(t, err)
	require.False(t, st.Installed)
	require.False(t, st.Current)
}

// TestCapturePartitionedTable: rows of a partitioned table are reported
// under the table the capture was installed on, not the partition.
func TestCapturePartitionedTable(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	ctx := context.Background()
	parent := quoteQualified(env.schema, "events")
	env.exec(t, `CREATE TABLE `+parent+` (id int, day date) PARTITION BY RANGE (day)`)
	env.exec(t, `CREATE TABLE `+quoteQualified(env.schema, "events_2026")+` PARTITION OF `+parent+
		` FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`)
	require.NoError(t, InstallCapture(ctx, env.pool, Capture{Outbox: env.ob, Schema: env.schema, Table: "events"}))
	env.exec(t, `INSERT INTO `+parent+` VALUES (1, '2026-03-04')`)
	var schema, table string
	require.NoError(t, env.pool.QueryRow(ctx, `SELECT schema_name, table_name FROM `+env.ob.withDefaults().quoted()).Scan(&schema, &table))
	require.Equal(t, env.schema, schema)
	require.Equal(t, "events", table)
}

// TestCaptureColumnsAndWhen: update capture limited to columns that really
// changed; insert capture limited by a WHEN condition.
func TestCaptureColumnsAndWhen(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{Ops: []Op{OpInsert}, When: "NEW.amount > 100"})
	installOrders(t, env, Capture{Ops: []Op{OpUpdate}, Columns: []string{"status", "amount"}})
	installOrders(t, env, Capture{Ops: []Op{OpDelete}, When: "OLD.status = 'paid'"})

	env.exec(t, `INSERT INTO `+env.orders()+` (id, amount) VALUES (1, 50), (2, 150)`) // only 2
	env.exec(t, `UPDATE `+env.orders()+` SET note = 'n'`)                             // not a listed column
	env.exec(t, `UPDATE `+env.orders()+` SET status = status`)                        // listed, unchanged
	env.exec(t, `UPDATE `+env.orders()+` SET status = 'paid' WHERE id = 1`)           // captured
	env.exec(t, `UPDATE `+env.orders()+` SET amount = 151, note = 'm' WHERE id = 2`)  // captured
	env.exec(t, `DELETE FROM `+env.orders())                                          // only 1 (paid)

	rows, err := env.pool.Query(context.Background(), `SELECT op, coalesce(new_row, old_row) FROM `+
		env.ob.withDefaults().quoted()+` ORDER BY id`)
	require.NoError(t, err)
	type captured struct {
		op  string
		row map[string]any
	}
	var got []captured
	for rows.Next() {
		var c captured
		var raw []byte
		require.NoError(t, rows.Scan(&c.op, &raw))
		require.NoError(t, json.Unmarshal(raw, &c.row))
		got = append(got, c)
	}
	require.NoError(t, rows.Err())
	require.Len(t, got, 4)
	require.Equal(t, "insert", got[0].op)
	require.EqualValues(t, 2, got[0].row["id"])
	require.Equal(t, "update", got[1].op)
	require.Equal(t, "paid", got[1].row["status"])
	require.Equal(t, "update", got[2].op)
	require.EqualValues(t, 151, got[2].row["amount"])
	require.Equal(t, "delete", got[3].op)
	require.EqualValues(t, 1, got[3].row["id"])
}

func TestCaptureValidation(t *testing.T) {
	t.Parallel()
	pool := mustLazyPool(t) // validation fails before any I/O
	tests := []struct {
		name  string
		spec  Capture
		field string
		want  error
	}{
		{"no table", Capture{}, "Capture.Table", batuta.ErrInvalidIdentifier},
		{"table over 63 bytes", Capture{Table: strings.Repeat("t", 64)}, "Capture.Table", batuta.ErrInvalidIdentifier},
		{"NUL in schema", Capture{Schema: "s\x00", Table: "t"}, "Capture.Schema", batuta.ErrInvalidIdentifier},
		{"control char in column", Capture{Table: "t", Columns: []string{"a\rb"}}, "Capture.Columns", batuta.ErrInvalidIdentifier},
		{"bad outbox", Capture{Table: "t", Outbox: Outbox{Table: "o\x01"}}, "Capture.Outbox.Table", batuta.ErrInvalidIdentifier},
		{"unknown op", Capture{Table: "t", Ops: []Op{"truncate"}}, "Capture.Ops", batuta.ErrInvalidConfig},
		{"columns without update", Capture{Table: "t", Ops: []Op{OpInsert}, Columns: []string{"a"}}, "Capture.Columns", batuta.ErrInvalidConfig},
		{"NUL in when", Capture{Table: "t", When: "true\x00"}, "Capture.When", batuta.ErrInvalidConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, call := range []func() error{
				func() error { return InstallCapture(context.Background(), pool, tt.spec) },
				func() error { return UninstallCapture(context.Background(), pool, tt.spec) },
				func() error { _, err := CaptureStatus(context.Background(), pool, tt.spec); return err },
			} {
				err := call()
				require.ErrorIs(t, err, tt.want)
				require.ErrorContains(t, err, tt.field)
				require.ErrorContains(t, err, "batuta")
			}
		})
	}
}

// TestHostileIdentifiers: schema, table, column, outbox and channel names
// built to break out of quoting are quoted harmlessly and work; names that
// cannot be quoted safely, and a When that smuggles in a statement, are
// refused with nothing created or executed.
func TestHostileIdentifiers(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	ctx := context.Background()
	env.exec(t, `CREATE TABLE `+quoteQualified(env.schema, "canary")+` (x int)`)
	canaryAlive := func() {
		t.Helper()
		require.Equal(t, 1, env.count(t, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = 'canary'`, env.schema), "the canary table was dropped")
	}
	drop := `DROP TABLE ` + quoteQualified(env.schema, "canary")
	schema := `s"; ` + drop[:20] + ` -- ` + randomSuffix()
	require.LessOrEqual(t, len(schema), 63)
	table := `orders"; DROP TABLE x; --'); \`
	column := `amount"; DROP TABLE x; --`
	ob := Outbox{
		Schema:  schema,
		Table:   `ob'; DROP TABLE x; --$batuta$\`,
		Channel: `ch'); NOTIFY x; --\$batuta$"`,
	}
	env.exec(t, `CREATE SCHEMA `+quoteIdent(schema))
	t.Cleanup(func() {
		_, err := env.pool.Exec(context.Background(), `DROP SCHEMA `+quoteIdent(schema)+` CASCADE`)
		require.NoError(t, err)
	})
	env.exec(t, `CREATE TABLE `+quoteQualified(schema, table)+` (id int PRIMARY KEY, `+quoteIdent(column)+` int)`)

	spec := Capture{Outbox: ob, Schema: schema, Table: table, Ops: []Op{OpInsert, OpDelete}}
	require.NoError(t, InstallCapture(ctx, env.pool, spec))
	upd := Capture{Outbox: ob, Schema: schema, Table: table, Ops: []Op{OpUpdate}, Columns: []string{column}}
	require.NoError(t, InstallCapture(ctx, env.pool, upd))
	st, err := CaptureStatus(ctx, env.pool, upd)
	require.NoError(t, err)
	require.True(t, st.Current, st.Problems)
	canaryAlive()

	runs := newFakeRuns(true)
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: ob}, runs)
	q := quoteQualified(schema, table)
	env.exec(t, `INSERT INTO `+q+` VALUES (1, 10)`)
	env.exec(t, `UPDATE `+q+` SET `+quoteIdent(column)+` = 11`)
	env.exec(t, `DELETE FROM `+q)
	waitFor(t, "three events", func() bool { return runs.accepted() == 3 })
	evs := runs.events()
	require.Equal(t, table+".insert", evs[0].Type)
	require.Equal(t, "postgres/"+schema+"."+table, evs[0].Source)
	require.True(t, strings.HasPrefix(evs[0].ID, "pg/"+schema+"."+ob.Table+"/"), evs[0].ID)
	_, newRow, oldRow := changeOf(t, evs[1])
	require.EqualValues(t, 10, oldRow[column])
	require.EqualValues(t, 11, newRow[column])
	require.NoError(t, pgxBeginEmit(ctx, env, ob, batuta.Event{ID: "emitted"}))
	waitFor(t, "the emitted event", func() bool { return runs.accepted() == 4 })
	canaryAlive()

	// Refused: nothing created.
	fresh := Outbox{Schema: env.schema, Table: "fresh_outbox"}
	refused := []struct {
		name string
		spec Capture
		want string
	}{
		{"64-byte table", Capture{Outbox: fresh, Schema: env.schema, Table: strings.Repeat("x", 64)}, "over PostgreSQL's limit"},
		{"NUL in table", Capture{Outbox: fresh, Schema: env.schema, Table: "orders\x00; DROP TABLE canary"}, "control character"},
		{"newline in column", Capture{Outbox: fresh, Schema: env.schema, Table: "orders", Columns: []string{"amount\n; DROP TABLE canary"}}, "control character"},
		{"statement in When", Capture{Outbox: fresh, Schema: env.schema, Table: "orders",
			When: "true)) EXECUTE FUNCTION now(); " + drop + "; --"}, "install capture"},
		{"unknown column", Capture{Outbox: fresh, Schema: env.schema, Table: "orders", Columns: []string{`amount"; ` + drop + `; --`}}, "does not exist"},
	}
	for _, tt := range refused {
		err := InstallCapture(ctx, env.pool, tt.spec)
		require.ErrorContains(t, err, tt.want, tt.name)
		canaryAlive()
		st, err := OutboxStatus(ctx, env.pool, fresh)
		require.NoError(t, err)
		require.False(t, st.Installed, "%s: the outbox was created by a failed install", tt.name)
	}
}

func pgxBeginEmit(ctx context.Context, env *outboxEnv, ob Outbox, ev batuta.Event) error {
	tx, err := env.pool.Begin(ctx)
	if err != nil {
		return err
	}
	if err := Emit(ctx, tx, ob, ev); err != nil {
		_ = tx.Rollback(ctx)
		return err
	}
	return tx.Commit(ctx)
}

// notificationsUntilMarker listens on ob's channel while write runs, then
// sends a marker notification and returns the payloads received before it
// (notifications arrive in commit order).
func notificationsUntilMarker(t *testing.T, env *outboxEnv, ob Outbox, write func()) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ob = ob.withDefaults()
	pc, err := env.pool.Acquire(ctx)
	require.NoError(t, err)
	conn := pc.Hijack()
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, `LISTEN `+quoteIdent(ob.Channel))
	require.NoError(t, err)
	write()
	env.exec(t, `SELECT pg_notify($1, 'marker')`, ob.Channel)
	var got []string
	for {
		n, err := conn.WaitForNotification(ctx)
		require.NoError(t, err)
		if n.Payload == "marker" {
			return got
		}
		got = append(got, n.Payload)
	}
}

// TestCaptureNotifiesOncePerTransaction: a transaction capturing many rows
// sends one notification, with its first row's id; a rolled-back savepoint
// takes its notification with it.
func TestCaptureNotifiesOncePerTransaction(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	ctx := context.Background()
	installOrders(t, env, Capture{})
	got := notificationsUntilMarker(t, env, env.ob, func() {
		env.exec(t, `INSERT INTO `+env.orders()+` (amount) SELECT g FROM generate_series(1, 50) g`)
		env.exec(t, `UPDATE `+env.orders()+` SET amount = amount + 1`)
		require.NoError(t, pgx.BeginFunc(ctx, env.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SAVEPOINT s`); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM `+env.orders()+` WHERE id = 1`); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT s`); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `DELETE FROM `+env.orders()+` WHERE id = 2`)
			return err
		}))
		require.NoError(t, pgxBeginEmit(ctx, env, env.ob, batuta.Event{ID: "e"}))
	})
	var ids []string
	rows, err := env.pool.Query(ctx, `SELECT min(id)::text FROM `+env.ob.withDefaults().quoted()+` GROUP BY op ORDER BY min(id)`)
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		ids = append(ids, id)
	}
	require.NoError(t, rows.Err())
	require.Len(t, ids, 4) // insert, update, delete (of row 2 only), emit
	require.Equal(t, ids, got)
	require.Equal(t, 50+50+1+1, env.outboxRows(t, env.ob))
}

// TestCaptureNoNotify: with NoNotify nothing is notified and consumers
// deliver by polling; switching it makes the installed outbox stale.
func TestCaptureNoNotify(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	ctx := context.Background()
	ob := env.ob
	ob.NoNotify = true
	env.ob = ob
	installOrders(t, env, Capture{})
	got := notificationsUntilMarker(t, env, ob, func() {
		env.exec(t, `INSERT INTO `+env.orders()+` (amount) VALUES (1)`)
		require.NoError(t, pgxBeginEmit(ctx, env, ob, batuta.Event{ID: "e"}))
	})
	require.Empty(t, got)

	runs := newFakeRuns(true)
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: ob, PollInterval: 20 * time.Millisecond}, runs)
	waitFor(t, "two events", func() bool { return runs.accepted() == 2 })

	st, err := OutboxStatus(ctx, env.pool, Outbox{Schema: env.schema})
	require.NoError(t, err)
	require.True(t, st.Installed)
	require.False(t, st.Current)
}
