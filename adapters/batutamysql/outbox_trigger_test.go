package batutamysql

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"github.com/batuta-dev/batuta/batutatest"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// dummyDB satisfies TriggerConfig.DB in tests that never reach the database.
var dummyDB sql.DB

func TestRowImages(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, `(id INT NOT NULL PRIMARY KEY, name VARCHAR(40) NULL, price DECIMAL(10,2) NULL,
  raw VARBINARY(8) NULL, doc JSON NULL, flags BIT(4) NULL, at DATETIME(6) NULL, note TEXT NULL, pos POINT NULL)`)
	ctx := context.Background()
	require.NoError(t, InstallCapture(ctx, db, f.capture()))
	// A second capture of the same table into another outbox: updates of
	// price only, when the new price is over 100.
	big := &fixture{db: db, table: f.table, outbox: Outbox{Table: f.outbox.Table + "_big"}}
	t.Cleanup(func() { _ = UninstallOutbox(context.Background(), db, big.outbox) })
	require.NoError(t, InstallCapture(ctx, db, Capture{Table: f.table, Outbox: big.outbox,
		Ops: []Op{OpUpdate}, Columns: []string{"price"}, When: "NEW.price > 100"}))

	tbl := quoteIdent(f.table)
	f.exec(t, "INSERT INTO "+tbl+` VALUES (1, 'ñandú', 12.50, X'00ff10', '{"a":[1,2]}', b'1010', '2026-01-02 03:04:05.678901', NULL, POINT(1, 2))`)
	f.exec(t, "UPDATE "+tbl+" SET name = 'renamed' WHERE id = 1")           // not price: no event in big
	f.exec(t, "UPDATE "+tbl+" SET price = 150 WHERE id = 1")                // big
	f.exec(t, "UPDATE "+tbl+" SET price = 150, name = 'same' WHERE id = 1") // price unchanged: not big
	f.exec(t, "UPDATE "+tbl+" SET price = 99 WHERE id = 1")                 // not over 100: not big
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
		require.Equal(t, "mysql/test."+f.table, ev.Source)
		require.Equal(t, f.table+"."+ops[i], ev.Type)
	}
	require.Equal(t, []string{"insert", "update", "update", "update", "update", "delete"}, ops)

	ins := decodeChange(t, evs[0])
	require.Equal(t, "test", ins.Schema)
	require.Equal(t, f.table, ins.Table)
	require.Nil(t, ins.oldRow)
	require.Equal(t, map[string]any{
		"id": json.Number("1"), "name": "ñandú", "price": json.Number("12.50"), "raw": "00FF10",
		"doc": map[string]any{"a": []any{json.Number("1"), json.Number("2")}}, "flags": json.Number("10"),
		"at": "2026-01-02 03:04:05.678901", "note": nil, "pos": "POINT(1 2)",
	}, ins.newRow)
	require.WithinDuration(t, time.Now(), ins.At, time.Minute)
	require.True(t, evs[0].Time.Equal(ins.At))

	rename := decodeChange(t, evs[1])
	require.Equal(t, "ñandú", rename.oldRow["name"])
	require.Equal(t, "renamed", rename.newRow["name"])

	del := decodeChange(t, evs[5])
	require.Nil(t, del.newRow)
	require.Equal(t, json.Number("99.00"), del.oldRow["price"])
	require.Equal(t, "same", del.oldRow["name"])

	b := decodeChange(t, bigRuns.Accepted()[0])
	require.Equal(t, json.Number("12.50"), b.oldRow["price"])
	require.Equal(t, json.Number("150.00"), b.newRow["price"])
}

// The crash test (batutatest.TestOutboxCrash): a consumer process is
// killed -9 in the middle of a batch; a new consumer redelivers what it had
// fired but not deleted, and the store deduplicates it by event ID.

const crashHelperEnv = "BATUTA_MYSQL_CRASH_HELPER"

// crashFire is a durable "store" kept in two tables next to the outbox:
// accepted event IDs (deduplicated by primary key) and a log of every fire.
func crashFire(db *sql.DB, outbox string) func(context.Context, batuta.Event) error {
	return func(ctx context.Context, ev batuta.Event) error {
		if _, err := db.ExecContext(ctx, "INSERT INTO "+quoteIdent(outbox+"_fires")+" (event_id) VALUES (?)", ev.ID); err != nil {
			return err
		}
		_, err := db.ExecContext(ctx, "INSERT IGNORE INTO "+quoteIdent(outbox+"_accepted")+" (event_id) VALUES (?)", ev.ID)
		return err
	}
}

// crashHelperMain consumes the outbox named by the environment in the
// helper process (see main_test.go).
func crashHelperMain() int {
	outbox := os.Getenv(crashHelperEnv)
	db, err := sql.Open("mysql", testDSN())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	trig, err := NewTrigger(TriggerConfig{DB: db, Outbox: Outbox{Table: outbox},
		BatchSize: batutatest.CrashHelperBatch, Lease: batutatest.CrashHelperLease})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Fprintln(os.Stderr, batutatest.RunCrashHelper(trig, crashFire(db, outbox)))
	return 2
}

func TestTriggerKilledMidBatch(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, "")
	fires, accepted := quoteIdent(f.outbox.Table+"_fires"), quoteIdent(f.outbox.Table+"_accepted")
	f.exec(t, "CREATE TABLE "+fires+" (n BIGINT AUTO_INCREMENT PRIMARY KEY, event_id VARCHAR(255) NOT NULL)")
	f.exec(t, "CREATE TABLE "+accepted+" (event_id VARCHAR(255) PRIMARY KEY)")
	t.Cleanup(func() { _, _ = db.Exec("DROP TABLE IF EXISTS " + fires + ", " + accepted) })
	batutatest.TestOutboxCrash(t, batutatest.OutboxCrash{
		Fixture: f.suite(),
		Fire:    crashFire(db, f.outbox.Table),
		Counts:  crashCounts(db, fires, accepted),
		Helper: func(t *testing.T) *exec.Cmd {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashHelperEnv+"="+f.outbox.Table)
			return cmd
		},
		// (Its own lease is the default: only the dead consumer's must be short.)
		Consumer: func(t *testing.T) batuta.Trigger {
			return newTrigger(t, TriggerConfig{DB: db, Outbox: f.outbox, BatchSize: batutatest.CrashHelperBatch})
		},
	})
}

// crashCounts counts the fires logged, the event IDs accepted and those
// fired more than once.
func crashCounts(db *sql.DB, fires, accepted string) func(ctx context.Context) (int, int, int, error) {
	return func(ctx context.Context) (nf, na, nd int, err error) {
		err = db.QueryRowContext(ctx, "SELECT (SELECT COUNT(*) FROM "+fires+"), (SELECT COUNT(*) FROM "+accepted+"), "+
			"(SELECT COUNT(*) FROM (SELECT event_id FROM "+fires+" GROUP BY event_id HAVING COUNT(*) > 1) d)").Scan(&nf, &na, &nd)
		return nf, na, nd, err
	}
}
