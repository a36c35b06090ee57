package batutasqlite

import (
	"context"
	"database/sql"
	"github.com/batuta-dev/batuta/batutatest"
	"log/slog"
	"testing"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// Benchmarks of the SQLite trigger path (modernc.org/sqlite, WAL,
// synchronous=NORMAL, busy_timeout; see testDSN). Results and the exact
// commands are in docs/dbtrigger-bench-mysql-sqlite.md. Run them one at a
// time (-run '^$' -bench <name>) with a fixed -benchtime=<n>x.

// benchTableDDL is an 8-column table, what a small business table looks like.
const benchTableDDL = `(id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL,
  status TEXT NOT NULL, total REAL NOT NULL, currency TEXT NOT NULL,
  note TEXT, created_at TEXT NOT NULL, updated_at TEXT)`

// benchTable creates a fresh business table in db, and installs its insert
// capture into a fresh outbox if capture is set.
func benchTable(b *testing.B, db *sql.DB, capture bool) batutatest.OutboxBenchTable {
	s := suffix()
	table, ob := "orders_"+s, Outbox{Table: "outbox_" + s}
	_, err := db.Exec("CREATE TABLE " + quoteIdent(table) + " " + benchTableDDL)
	require.NoError(b, err)
	if capture {
		require.NoError(b, InstallCapture(context.Background(), db, Capture{Table: table, Outbox: ob, Ops: []Op{OpInsert}}))
	}
	return &batutatest.SQLBenchTable{
		DB: db,
		Insert: "INSERT INTO " + quoteIdent(table) +
			" (customer_id, status, total, currency, note, created_at) VALUES (?, 'placed', 99.95, 'EUR', 'leave at the door', " + nowSQL + ")",
		BacklogInsert: "INSERT INTO " + quoteIdent(table) +
			" (customer_id, status, total, currency, created_at) VALUES (1, 'placed', 10, 'EUR', " + nowSQL + ")",
		Outbox: ob.quoted(),
		TriggerFunc: func(b *testing.B) batuta.TrackingTrigger {
			return newTrigger(b, TriggerConfig{DB: db, Outbox: ob, Logger: slog.New(slog.DiscardHandler)})
		},
	}
}

// outboxBench: "100-rows-prepared" inserts with one prepared statement, as
// an application with a statement cache would (SQLite compiles the
// trigger's program when the INSERT is prepared, so an unprepared INSERT
// pays for compiling it every time).
var outboxBench = batutatest.OutboxBench{
	New: func(b *testing.B) batutatest.OutboxBenchTable { return benchTable(b, openDB(b), true) },
	NewPair: func(b *testing.B) (plain, captured batutatest.OutboxBenchTable) {
		db := openDB(b)
		return benchTable(b, db, false), benchTable(b, db, true)
	},
	Prepared: true,
}

// BenchmarkCommitOverhead: see batutatest.BenchmarkOutboxCommitOverhead.
func BenchmarkCommitOverhead(b *testing.B) { batutatest.BenchmarkOutboxCommitOverhead(b, outboxBench) }

// BenchmarkTriggerThroughput: see batutatest.BenchmarkOutboxTriggerThroughput.
func BenchmarkTriggerThroughput(b *testing.B) {
	batutatest.BenchmarkOutboxTriggerThroughput(b, outboxBench)
}

// BenchmarkCommitToTaskStart: see batutatest.BenchmarkOutboxCommitToTaskStart.
// The idle modes show the poller backed off to MaxPollInterval, and Wake.
func BenchmarkCommitToTaskStart(b *testing.B) {
	batutatest.BenchmarkOutboxCommitToTaskStart(b, outboxBench)
}
