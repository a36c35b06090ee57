package batutasqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"github.com/batuta-dev/batuta/batutatest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

func TestRowImages(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, `(id INTEGER PRIMARY KEY, name TEXT, price REAL, raw BLOB, doc TEXT, anything,
  twice INTEGER GENERATED ALWAYS AS (id * 2) VIRTUAL)`)
	ctx := context.Background()
	require.NoError(t, InstallCapture(ctx, db, f.capture()))
	// A second capture of the same table into another outbox: updates of
	// price only, when the new price is over 100.
	big := &fixture{db: db, table: f.table, outbox: Outbox{Table: f.outbox.Table + "_big"}}
	require.NoError(t, InstallCapture(ctx, db, Capture{Table: f.table, Outbox: big.outbox,
		Ops: []Op{OpUpdate}, Columns: []string{"price"}, When: "NEW.price > 100"}))

	tbl := quoteIdent(f.table)
	f.exec(t, "INSERT INTO "+tbl+` (id, name, price, raw, doc, anything) VALUES (1, 'ñandú', 12.5, X'00ff10', '{"a":[1,2]}', X'ab')`)
	f.exec(t, "UPDATE "+tbl+" SET name = 'renamed', anything = 42 WHERE id = 1") // not price: no event in big
	f.exec(t, "UPDATE "+tbl+" SET price = 150 WHERE id = 1")                     // big
	f.exec(t, "UPDATE "+tbl+" SET price = 150, name = 'same' WHERE id = 1")      // price unchanged: not big
	f.exec(t, "UPDATE "+tbl+" SET price = 99 WHERE id = 1")                      // not over 100: not big
	f.exec(t, "DELETE FROM "+tbl+" WHERE id = 1")

	all, bigRuns := newFakeRuns(true), newFakeRuns(true)
	stopAll := startTrigger(t, newTrigger(t, TriggerConfig{DB: db, Outbox: f.outbox}), all)
	stopBig := startTrigger(t, newTrigger(t, TriggerConfig{DB: db, Outbox: big.outbox}), bigRuns)
	eventually(t, func() bool { return all.AcceptedCount() == 6 && f.outboxRows(t) == 0 }, "six changes")
	eventually(t, func() bool { return bigRuns.AcceptedCount() == 1 && big.outboxRows(t) == 0 }, "one big update")
	stopAll()
	stopBig()

	evs := all.Accepted()
	ops := make([]string, len(evs))
	for i, ev := range evs {
		ops[i] = decodeChange(t, ev).Op
		require.Equal(t, "sqlite/"+f.table, ev.Source)
		require.Equal(t, f.table+"."+ops[i], ev.Type)
	}
	require.Equal(t, []string{"insert", "update", "update", "update", "update", "delete"}, ops)

	ins := decodeChange(t, evs[0])
	require.Equal(t, "main", ins.Schema)
	require.Equal(t, f.table, ins.Table)
	require.Nil(t, ins.oldRow)
	require.Equal(t, map[string]any{
		"id": json.Number("1"), "name": "ñandú", "price": json.Number("12.5"), "raw": "00FF10",
		"doc": `{"a":[1,2]}`, "anything": "AB", "twice": json.Number("2"),
	}, ins.newRow)
	require.WithinDuration(t, time.Now(), ins.At, time.Minute)
	require.True(t, evs[0].Time.Equal(ins.At))

	rename := decodeChange(t, evs[1])
	require.Equal(t, "ñandú", rename.oldRow["name"])
	require.Equal(t, "renamed", rename.newRow["name"])
	require.Equal(t, "AB", rename.oldRow["anything"])
	require.Equal(t, json.Number("42"), rename.newRow["anything"], "dynamic typing: per value")

	del := decodeChange(t, evs[5])
	require.Nil(t, del.newRow)
	require.Equal(t, json.Number("99.0"), del.oldRow["price"])
	require.Equal(t, "same", del.oldRow["name"])

	b := decodeChange(t, bigRuns.Accepted()[0])
	require.Equal(t, json.Number("12.5"), b.oldRow["price"])
	require.Equal(t, json.Number("150.0"), b.newRow["price"])
}

// The crash test: a consumer process is killed -9 in the middle of a batch,
// after firing some rows it had not deleted yet; a new consumer redelivers
// them and the store deduplicates them by event ID.

// The crash test (batutatest.TestOutboxCrash): a consumer process is
// killed -9 in the middle of a batch; a new consumer redelivers what it had
// fired but not deleted, and the store deduplicates it by event ID.

const crashHelperEnv = "BATUTA_SQLITE_CRASH_HELPER"

// crashFire is a durable "store" kept in two tables next to the outbox:
// accepted event IDs (deduplicated by primary key) and a log of every fire.
func crashFire(db *sql.DB, outbox string) func(context.Context, batuta.Event) error {
	return func(ctx context.Context, ev batuta.Event) error {
		if _, err := db.ExecContext(ctx, "INSERT INTO "+quoteIdent(outbox+"_fires")+" (event_id) VALUES (?)", ev.ID); err != nil {
			return err
		}
		_, err := db.ExecContext(ctx, "INSERT OR IGNORE INTO "+quoteIdent(outbox+"_accepted")+" (event_id) VALUES (?)", ev.ID)
		return err
	}
}

// TestOutboxCrashHelperProcess is not a test: TestTriggerKilledMidBatch
// runs the test binary with -test.run naming it and the environment set,
// and kills it (batutatest.RunCrashHelper).
func TestOutboxCrashHelperProcess(t *testing.T) {
	spec := os.Getenv(crashHelperEnv) // "<db path>|<outbox>"
	if spec == "" {
		t.Skip("helper process for TestTriggerKilledMidBatch; runs only when that test starts it")
	}
	path, outbox, _ := strings.Cut(spec, "|")
	db, err := sql.Open("sqlite", testDSN(path))
	require.NoError(t, err)
	trig, err := NewTrigger(TriggerConfig{DB: db, Outbox: Outbox{Table: outbox},
		BatchSize: batutatest.CrashHelperBatch, Lease: batutatest.CrashHelperLease})
	require.NoError(t, err)
	t.Fatalf("consumer returned: %v", batutatest.RunCrashHelper(trig, crashFire(db, outbox)))
}

// dbPath returns the file behind db.
func dbPath(t *testing.T, db *sql.DB) string {
	t.Helper()
	var seq int
	var name, file string
	require.NoError(t, db.QueryRow("PRAGMA database_list").Scan(&seq, &name, &file))
	return file
}

func TestTriggerKilledMidBatch(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, "")
	fires, accepted := quoteIdent(f.outbox.Table+"_fires"), quoteIdent(f.outbox.Table+"_accepted")
	f.exec(t, "CREATE TABLE "+fires+" (n INTEGER PRIMARY KEY, event_id TEXT NOT NULL)")
	f.exec(t, "CREATE TABLE "+accepted+" (event_id TEXT PRIMARY KEY)")
	batutatest.TestOutboxCrash(t, batutatest.OutboxCrash{
		Fixture: f.suite(t),
		Fire:    crashFire(db, f.outbox.Table),
		Counts: func(ctx context.Context) (nf, na, nd int, err error) {
			err = db.QueryRowContext(ctx, "SELECT (SELECT COUNT(*) FROM "+fires+"), (SELECT COUNT(*) FROM "+accepted+"), "+
				"(SELECT COUNT(*) FROM (SELECT event_id FROM "+fires+" GROUP BY event_id HAVING COUNT(*) > 1))").Scan(&nf, &na, &nd)
			return nf, na, nd, err
		},
		Helper: func(t *testing.T) *exec.Cmd {
			cmd := exec.Command(os.Args[0], "-test.run=^TestOutboxCrashHelperProcess$")
			cmd.Env = append(os.Environ(), crashHelperEnv+"="+dbPath(t, db)+"|"+f.outbox.Table)
			return cmd
		},
		// (Its own lease is the default: only the dead consumer's must be short.)
		Consumer: func(t *testing.T) batuta.Trigger {
			return newTrigger(t, TriggerConfig{DB: db, Outbox: f.outbox, BatchSize: batutatest.CrashHelperBatch})
		},
	})
}
