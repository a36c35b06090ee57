package batutamysql

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

func TestCaptureConfigValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		c     Capture
		field string // ConfigError field, or "" for an identifier error
		ident bool
	}{
		{"no table", Capture{}, "Capture.Table", false},
		// The checks shared with the other adapters (ops, columns, When) are
		// internal/outboxsql's TestCheckCapture; one shows they are wired.
		{"unknown op", Capture{Table: "t", Ops: []Op{"upsert"}}, "Capture.Ops", false},
		{"reserved outbox name", Capture{Table: "t", Outbox: Outbox{Table: capturesTable}}, "Capture.Outbox.Table", false},
		{"hostile table", Capture{Table: "t\x00; DROP TABLE x"}, "", true},
		{"long schema", Capture{Table: "t", Schema: strings.Repeat("s", 65)}, "", true},
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

	created := triggerCreated(t, f)
	require.Len(t, created, 3)
	require.NoError(t, InstallCapture(ctx, db, c), "second install")
	require.Equal(t, created, triggerCreated(t, f), "a current capture is left alone: no DDL")

	// Another operation set adds triggers and leaves the others alone.
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
	require.Empty(t, triggerCreated(t, f))
	require.NoError(t, UninstallCapture(ctx, db, c), "uninstalling twice is fine")

	st, err = OutboxStatus(ctx, db, f.outbox)
	require.NoError(t, err)
	require.True(t, st.Current, "the outbox stays after UninstallCapture")
}

func triggerCreated(t *testing.T, f *fixture) map[string]string {
	t.Helper()
	rows, err := f.db.Query(`SELECT TRIGGER_NAME, CAST(CREATED AS CHAR) FROM information_schema.TRIGGERS
WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = ?`, f.table)
	require.NoError(t, err)
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, created string
		require.NoError(t, rows.Scan(&name, &created))
		out[name] = created
	}
	require.NoError(t, rows.Err())
	return out
}

func TestAlteredTableIsDetected(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, "")
	ctx := context.Background()
	c := f.capture()
	require.NoError(t, InstallCapture(ctx, db, c))

	f.exec(t, "ALTER TABLE "+quoteIdent(f.table)+" ADD COLUMN discount DECIMAL(5,2) NULL")
	st, err := CaptureStatus(ctx, db, c)
	require.NoError(t, err)
	require.True(t, st.Installed)
	require.False(t, st.Current)
	problems := strings.Join(st.Problems, "; ")
	require.Contains(t, problems, "column added: discount")
	require.Contains(t, problems, "insert trigger")

	// A running consumer says so in its log.
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	runs := newFakeRuns(true)
	stop := startTrigger(t, newTrigger(t, TriggerConfig{DB: db, Outbox: f.outbox, Logger: logger}), runs)
	eventually(t, func() bool { return strings.Contains(logs.String(), "capture trigger is stale") }, "stale warning logged")
	require.Contains(t, logs.String(), "discount")

	// Until installed again, rows miss the new column.
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
	require.Equal(t, "2.50", after.newRow["discount"].(interface{ String() string }).String())

	// Dropping a column is detected too (and on MySQL breaks writes until
	// the capture is installed again, since the trigger names the column).
	f.exec(t, "ALTER TABLE "+quoteIdent(f.table)+" DROP COLUMN discount")
	st, err = CaptureStatus(ctx, db, c)
	require.NoError(t, err)
	require.Contains(t, strings.Join(st.Problems, "; "), "column dropped: discount")
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
	require.Empty(t, triggerCreated(t, f), "no trigger is left to write into a missing outbox")
	f.exec(t, "INSERT INTO "+quoteIdent(f.table)+" (name) VALUES ('still writable')")
	st, err := OutboxStatus(ctx, db, f.outbox)
	require.NoError(t, err)
	require.False(t, st.Installed)
	require.NoError(t, UninstallOutbox(ctx, db, f.outbox), "idempotent")

	// A table of that name that is not an outbox is neither adopted nor dropped.
	f.exec(t, "CREATE TABLE "+f.outbox.quoted()+" (id INT)")
	require.ErrorContains(t, InstallOutbox(ctx, db, f.outbox), "not a batuta outbox")
	require.ErrorContains(t, UninstallOutbox(ctx, db, f.outbox), "not a batuta outbox")
	f.exec(t, "DROP TABLE "+f.outbox.quoted())
}

func TestHostileIdentifiers(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	ctx := context.Background()
	s := suffix()
	canary := "bt_" + s + "_canary"
	hostileTable := "bt_" + s + "`; DROP TABLE `" + canary + "`; -- \"'"
	hostileCol := "a'); DROP TABLE `" + canary + "`; --"
	quoteCol := "b`c\"d\\e"
	ob := Outbox{Table: "bt_" + s + "_ob`; DROP TABLE `" + canary + "`; --"}
	f := &fixture{db: db, table: hostileTable, outbox: ob}
	f.exec(t, "CREATE TABLE "+quoteIdent(canary)+" (id INT)")
	f.exec(t, "CREATE TABLE "+quoteIdent(hostileTable)+" (id INT PRIMARY KEY, "+quoteIdent(hostileCol)+" VARCHAR(40), "+quoteIdent(quoteCol)+" INT)")
	t.Cleanup(func() {
		_ = UninstallOutbox(context.Background(), db, ob)
		_, _ = db.Exec("DROP TABLE IF EXISTS " + quoteIdent(hostileTable))
		_, _ = db.Exec("DROP TABLE IF EXISTS " + quoteIdent(canary))
	})

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
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?", canary).Scan(&n))
	require.Equal(t, 1, n, "the canary table survived")

	// Names the server could not hold are refused before anything is created.
	for _, bad := range []string{"bt_" + s + "\x00x", "bt_" + s + "\nx", strings.Repeat("b", 65), "bt_" + s + " ", "bt_" + s + "🙂", "bt_" + s + "\xff"} {
		err := InstallCapture(ctx, db, Capture{Table: bad, Outbox: Outbox{Table: "bt_" + s + "_never"}})
		require.ErrorIs(t, err, batuta.ErrInvalidIdentifier, "table %q", bad)
		err = InstallCapture(ctx, db, Capture{Table: canary, Outbox: Outbox{Table: bad}})
		require.ErrorIs(t, err, batuta.ErrInvalidIdentifier, "outbox %q", bad)
	}
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?", "bt_"+s+"_never").Scan(&n))
	require.Zero(t, n, "a refused install creates nothing")
}
