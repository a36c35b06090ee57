package batutamysql

import (
	"context"
	"database/sql"
	"github.com/batuta-dev/batuta/batutatest"
	"log/slog"
	"testing"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// Benchmarks of the MySQL/MariaDB trigger path. Results and the exact
// commands are in docs/dbtrigger-bench-mysql-sqlite.md. Run them one at a
// time (-run '^$' -bench <name>) with a fixed -benchtime=<n>x.

// benchTableDDL is an 8-column table, what a small business table looks like.
const benchTableDDL = `(id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, customer_id BIGINT NOT NULL,
  status VARCHAR(20) NOT NULL, total DECIMAL(12,2) NOT NULL, currency CHAR(3) NOT NULL,
  note VARCHAR(200) NULL, created_at DATETIME(6) NOT NULL, updated_at DATETIME(6) NULL)`

// benchTable creates a fresh business table in db, dropped (with its
// outbox) when b ends, and installs its insert capture if capture is set.
func benchTable(b *testing.B, db *sql.DB, capture bool) batutatest.OutboxBenchTable {
	s := suffix()
	table, ob := "bt_bench_"+s, Outbox{Table: "bt_bench_" + s + "_outbox"}
	_, err := db.Exec("CREATE TABLE " + quoteIdent(table) + " " + benchTableDDL)
	require.NoError(b, err)
	b.Cleanup(func() {
		_ = UninstallOutbox(context.Background(), db, ob)
		_, _ = db.Exec("DROP TABLE IF EXISTS " + quoteIdent(table))
	})
	if capture {
		require.NoError(b, InstallCapture(context.Background(), db, Capture{Table: table, Outbox: ob, Ops: []Op{OpInsert}}))
	}
	return &batutatest.SQLBenchTable{
		DB: db,
		Insert: "INSERT INTO " + quoteIdent(table) +
			" (customer_id, status, total, currency, note, created_at) VALUES (?, 'placed', 99.95, 'EUR', 'leave at the door', UTC_TIMESTAMP(6))",
		BacklogInsert: "INSERT INTO " + quoteIdent(table) +
			" (customer_id, status, total, currency, created_at) VALUES (1, 'placed', 10, 'EUR', UTC_TIMESTAMP(6))",
		Outbox: ob.quoted(),
		TriggerFunc: func(b *testing.B) batuta.TrackingTrigger {
			return newTrigger(b, TriggerConfig{DB: db, Outbox: ob, Logger: slog.New(slog.DiscardHandler)})
		},
	}
}

var outboxBench = batutatest.OutboxBench{
	New: func(b *testing.B) batutatest.OutboxBenchTable { return benchTable(b, openDB(b), true) },
	NewPair: func(b *testing.B) (plain, captured batutatest.OutboxBenchTable) {
		db := openDB(b)
		return benchTable(b, db, false), benchTable(b, db, true)
	},
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
