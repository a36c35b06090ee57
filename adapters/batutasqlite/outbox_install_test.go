package batutasqlite

import (
	"bytes"
	"context"
	"database/sql"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// dummyDB satisfies TriggerConfig.DB in tests that never reach the database.
var dummyDB sql.DB

func TestCaptureConfigValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		c     Capture
		field string // ConfigError field when not an identifier error
		ident bool
	}{
		{"no table", Capture{}, "Capture.Table", false},
		// The checks shared with the other adapters (ops, columns, When) are
		// internal/outboxsql's TestCheckCapture; one shows they are wired.
		{"unknown op", Capture{Table: "t", Ops: []Op{"upsert"}}, "Capture.Ops", false},
		{"reserved outbox name", Capture{Table: "t", Outbox: Outbox{Table: capturesTable}}, "Capture.Outbox.Table", false},
		{"hostile table", Capture{Table: "t\x00; DROP TABLE x"}, "", true},
		{"system table", Capture{Table: "sqlite_schema"}, "", true},
		{"hostile outbox", Capture{Table: "t", Outbox: Outbox{Table: "o\x01"}}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.c.withDefaults().validate()
			require.Error(t, err)
			if tt.ident {
				require.ErrorIs(t, err, batuta.ErrInvalidIdentifier)
				return
			}
			var ce *batuta.ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tt.field, ce.Field)
		})
	}
}

func TestTriggerConfigValidation(t *testing.T) {
	t.Parallel()
	db := &dummyDB
	tests := []struct {
		name  string
		cfg   TriggerConfig
		field string
	}{
		{"no DB", TriggerConfig{}, "DB"},
		// The settings shared with the other adapters are internal/outboxsql's
		// TestPollingValidate; one shows they are wired.
		{"batch too large", TriggerConfig{DB: db, BatchSize: 10001}, "BatchSize"},
		{"negative emit cap", TriggerConfig{DB: db, Outbox: Outbox{MaxEmitBytes: -1}}, "Outbox.MaxEmitBytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewTrigger(tt.cfg)
			var ce *batuta.ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tt.field, ce.Field)
			require.ErrorIs(t, err, batuta.ErrInvalidConfig)
		})
	}
	_, err := NewTrigger(TriggerConfig{DB: db, Outbox: Outbox{Table: "bad\x00"}})
	require.ErrorIs(t, err, batuta.ErrInvalidIdentifier)
}

func TestInstallCaptureIsIdempotentAndReportsStatus(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, "")
	ctx := context.Background()
	c := f.capture()

	st, err := CaptureStatus(ctx, db, c)
	require.NoError(t, err)
	require.False(t, st.Installed)
	require.False(t, st.Current)
	require.NotEmpty(t, st.Problems)

	require.NoError(t, InstallCapture(ctx, db, c))
	st, err = CaptureStatus(ctx, db, c)
	require.NoError(t, err)
	require.True(t, st.Current, "problems: %v", st.Problems)

	before := schemaVersion(t, db)
	require.Len(t, triggerSQL(t, f), 3)
	require.NoError(t, InstallCapture(ctx, db, c), "second install")
	require.Equal(t, before, schemaVersion(t, db), "a current capture is left alone: no DDL")

	upd := c
	upd.Ops = []Op{OpUpdate}
	upd.When = "NEW.name <> 'skip'"
	st, err = CaptureStatus(ctx, db, upd)
	require.NoError(t, err)
	require.True(t, st.Installed)
	require.False(t, st.Current, "a different When makes the update trigger stale")
	require.Contains(t, strings.Join(st.Problems, "; "), "update trigger")

	require.NoError(t, UninstallCapture(ctx, db, c))
	st, err = CaptureStatus(ctx, db, c)
	require.NoError(t, err)
	require.False(t, st.Installed)
	require.Empty(t, triggerSQL(t, f))
	require.NoError(t, UninstallCapture(ctx, db, c), "uninstalling twice is fine")

	st, err = OutboxStatus(ctx, db, f.outbox)
	require.NoError(t, err)
	require.True(t, st.Current, "the outbox stays after UninstallCapture")
}

// schemaVersion changes whenever the schema does.
func schemaVersion(t *testing.T, db *sql.DB) int {
	t.Helper()
	var v int
	require.NoError(t, db.QueryRow("PRAGMA schema_version").Scan(&v))
	return v
}

func triggerSQL(t *testing.T, f *fixture) map[string]string {
	t.Helper()
	rows, err := f.db.Query("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?", f.table)
	require.NoError(t, err)
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, ddl string
		require.NoError(t, rows.Scan(&name, &ddl))
		out[name] = ddl
	}
	require.NoError(t, rows.Err())
	return out
}

func TestInstallCaptureIsAllOrNothing(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, "")
	ctx := context.Background()
	// The insert and update triggers compile, the delete one cannot (no NEW
	// row in a delete trigger; SQLite itself would accept it and fail every
	// later DELETE): nothing is installed, not even the outbox.
	err := InstallCapture(ctx, db, Capture{Table: f.table, Outbox: f.outbox, When: "NEW.id > 0"})
	require.ErrorContains(t, err, "create delete trigger")
	require.ErrorContains(t, err, "NEW.id")
	require.Empty(t, triggerSQL(t, f))
	st, err := OutboxStatus(ctx, db, f.outbox)
	require.NoError(t, err)
	require.False(t, st.Installed)
	f.exec(t, "DELETE FROM "+quoteIdent(f.table))

	err = InstallCapture(ctx, db, Capture{Table: f.table, Outbox: f.outbox, When: "NEW.no_such_column = 1"})
	require.ErrorContains(t, err, "no_such_column")
	require.Empty(t, triggerSQL(t, f))

	// A name taken by a trigger on another table stops the install too.
	c := f.capture()
	f.exec(t, "CREATE TABLE other (id INTEGER)")
	f.exec(t, "CREATE TRIGGER "+quoteIdent(c.withDefaults().triggerName(OpDelete))+" AFTER DELETE ON other BEGIN SELECT 1; END")
	require.ErrorContains(t, InstallCapture(ctx, db, c), "already exists on table other")
	require.Empty(t, triggerSQL(t, f))
}

func TestAlteredTableIsDetected(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, "")
	ctx := context.Background()
	c := f.capture()
	require.NoError(t, InstallCapture(ctx, db, c))

	f.exec(t, "ALTER TABLE "+quoteIdent(f.table)+" ADD COLUMN discount REAL")
	st, err := CaptureStatus(ctx, db, c)
	require.NoError(t, err)
	require.True(t, st.Installed)
	require.False(t, st.Current)
	problems := strings.Join(st.Problems, "; ")
	require.Contains(t, problems, "column added: discount")
	require.Contains(t, problems, "insert trigger")

	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	runs := newFakeRuns(true)
	stop := startTrigger(t, newTrigger(t, TriggerConfig{DB: db, Outbox: f.outbox, Logger: logger}), runs)
	eventually(t, func() bool { return strings.Contains(logs.String(), "capture trigger is stale") }, "stale warning logged")
	require.Contains(t, logs.String(), "discount")

	f.exec(t, "INSERT INTO "+quoteIdent(f.table)+" (name, discount) VALUES ('before', 1.5)")
	require.NoError(t, InstallCapture(ctx, db, c))
	st, err = CaptureStatus(ctx, db, c)
	require.NoError(t, err)
	require.True(t, st.Current, "problems: %v", st.Problems)
	f.exec(t, "INSERT INTO "+quoteIdent(f.table)+" (name, discount) VALUES ('after', 2.5)")

	eventually(t, func() bool { return runs.AcceptedCount() == 2 }, "both inserts delivered")
	stop()
	evs := runs.Accepted()
	before, after := decodeChange(t, evs[0]), decodeChange(t, evs[1])
	require.Equal(t, "before", before.newRow["name"])
	require.NotContains(t, before.newRow, "discount")
	require.Equal(t, "after", after.newRow["name"])
	require.Equal(t, "2.5", after.newRow["discount"].(interface{ String() string }).String())

	// SQLite refuses to drop a column a trigger names, so a capture cannot
	// silently break: uninstall, alter, install again.
	_, err = db.Exec("ALTER TABLE " + quoteIdent(f.table) + " DROP COLUMN discount")
	require.ErrorContains(t, err, "discount")
	require.NoError(t, UninstallCapture(ctx, db, c))
	f.exec(t, "ALTER TABLE "+quoteIdent(f.table)+" DROP COLUMN discount")
	require.NoError(t, InstallCapture(ctx, db, c))
	f.exec(t, "INSERT INTO "+quoteIdent(f.table)+" (name) VALUES ('works')")
}

// syncBuffer is a bytes.Buffer safe for concurrent use (a log sink).
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestUninstallOutboxDropsItsCaptures(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, "")
	ctx := context.Background()
	require.NoError(t, InstallCapture(ctx, db, f.capture()))
	require.NoError(t, UninstallOutbox(ctx, db, f.outbox))
	require.Empty(t, triggerSQL(t, f), "no trigger is left to write into a missing outbox")
	f.exec(t, "INSERT INTO "+quoteIdent(f.table)+" (name) VALUES ('still writable')")
	st, err := OutboxStatus(ctx, db, f.outbox)
	require.NoError(t, err)
	require.False(t, st.Installed)
	require.NoError(t, UninstallOutbox(ctx, db, f.outbox), "idempotent")

	f.exec(t, "CREATE TABLE "+f.outbox.quoted()+" (id INTEGER)")
	require.ErrorContains(t, InstallOutbox(ctx, db, f.outbox), "not a batuta outbox")
	require.ErrorContains(t, UninstallOutbox(ctx, db, f.outbox), "not a batuta outbox")
}

func TestHostileIdentifiers(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	ctx := context.Background()
	canary := "canary"
	hostileTable := `orders"; DROP TABLE "canary"; -- '`
	hostileCol := `a'); DROP TABLE "canary"; --`
	quoteCol := "b`c\"d\\e]"
	ob := Outbox{Table: `ob"; DROP TABLE "canary"; --`}
	f := &fixture{db: db, table: hostileTable, outbox: ob}
	f.exec(t, "CREATE TABLE "+quoteIdent(canary)+" (id INTEGER)")
	f.exec(t, "CREATE TABLE "+quoteIdent(hostileTable)+" (id INTEGER PRIMARY KEY, "+quoteIdent(hostileCol)+" TEXT, "+quoteIdent(quoteCol)+" INTEGER)")

	c := Capture{Table: hostileTable, Outbox: ob, Ops: []Op{OpInsert, OpUpdate}, Columns: []string{hostileCol}, When: "NEW.id > 0"}
	require.NoError(t, InstallCapture(ctx, db, c))
	st, err := CaptureStatus(ctx, db, c)
	require.NoError(t, err)
	require.True(t, st.Current, "problems: %v", st.Problems)

	f.exec(t, "INSERT INTO "+quoteIdent(hostileTable)+" VALUES (1, 'x''); DROP TABLE y; --', 7)")
	f.exec(t, "UPDATE "+quoteIdent(hostileTable)+" SET "+quoteIdent(hostileCol)+" = 'changed' WHERE id = 1")
	f.exec(t, "UPDATE "+quoteIdent(hostileTable)+" SET "+quoteIdent(quoteCol)+" = 8 WHERE id = 1") // not a watched column

	runs := newFakeRuns(true)
	stop := startTrigger(t, newTrigger(t, TriggerConfig{DB: db, Outbox: ob}), runs)
	eventually(t, func() bool { return runs.AcceptedCount() == 2 && f.outboxRows(t) == 0 }, "insert and watched update delivered")
	stop()
	evs := runs.Accepted()
	ins, upd := decodeChange(t, evs[0]), decodeChange(t, evs[1])
	require.Equal(t, hostileTable, ins.Table)
	require.Equal(t, hostileTable+".insert", evs[0].Type)
	require.Equal(t, "x'); DROP TABLE y; --", ins.newRow[hostileCol])
	require.Equal(t, "7", ins.newRow[quoteCol].(interface{ String() string }).String())
	require.Equal(t, "changed", upd.newRow[hostileCol])

	var n int
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND name = ?", canary).Scan(&n))
	require.Equal(t, 1, n, "the canary table survived")

	for _, bad := range []string{"bt\x00x", "bt\nx", strings.Repeat("b", 129), "sqlite_bt", "bt\xff"} {
		err := InstallCapture(ctx, db, Capture{Table: bad, Outbox: Outbox{Table: "never"}})
		require.ErrorIs(t, err, batuta.ErrInvalidIdentifier, "table %q", bad)
		err = InstallCapture(ctx, db, Capture{Table: canary, Outbox: Outbox{Table: bad}})
		require.ErrorIs(t, err, batuta.ErrInvalidIdentifier, "outbox %q", bad)
	}
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM sqlite_schema WHERE name = 'never'").Scan(&n))
	require.Zero(t, n, "a refused install creates nothing")
}
