package batutamysql

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// Benchmarks of the MySQL/MariaDB trigger path. Results and the exact
// commands are in docs/dbtrigger-bench-mysql-sqlite.md. Run them one at a
// time (-run '^$' -bench <name>) with a fixed -benchtime=<n>x.

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// benchTableDDL is an 8-column table, what a small business table looks like.
const benchTableDDL = `(id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, customer_id BIGINT NOT NULL,
  status VARCHAR(20) NOT NULL, total DECIMAL(12,2) NOT NULL, currency CHAR(3) NOT NULL,
  note VARCHAR(200) NULL, created_at DATETIME(6) NOT NULL, updated_at DATETIME(6) NULL)`

func benchInsert(ctx context.Context, db execer, table string) error {
	_, err := db.ExecContext(ctx, "INSERT INTO "+quoteIdent(table)+
		" (customer_id, status, total, currency, note, created_at) VALUES (?, 'placed', 99.95, 'EUR', 'leave at the door', UTC_TIMESTAMP(6))",
		rand.IntN(1000))
	return err
}

func newBenchFixture(b *testing.B) (*sql.DB, *fixture) {
	db := openDB(b)
	s := suffix()
	f := &fixture{db: db, table: "bt_bench_" + s, outbox: Outbox{Table: "bt_bench_" + s + "_outbox"}}
	_, err := db.Exec("CREATE TABLE " + quoteIdent(f.table) + " " + benchTableDDL)
	require.NoError(b, err)
	b.Cleanup(func() {
		_ = UninstallOutbox(context.Background(), db, f.outbox)
		_, _ = db.Exec("DROP TABLE IF EXISTS " + quoteIdent(f.table))
	})
	return db, f
}

// BenchmarkCommitOverhead measures writing transactions on two identical
// tables, one without and one with the insert capture trigger, alternating
// between them at every iteration so both see the same load on a shared
// machine. "1-row" is a single-row INSERT committed on its own
// (autocommit), dominated by the commit's log flush; "100-rows" inserts 100
// rows in one transaction, so the commit is amortised and the trigger's
// per-row cost shows. Metrics: median milliseconds per transaction without
// (plain-ms) and with (trigger-ms) the trigger, and the median difference
// per row (added-us/row).
func BenchmarkCommitOverhead(b *testing.B) {
	for _, rows := range []int{1, 100} {
		b.Run(fmt.Sprintf("%d-rows", rows), func(b *testing.B) {
			db, plain := newBenchFixture(b)
			_, captured := newBenchFixture(b)
			ctx := context.Background()
			require.NoError(b, InstallCapture(ctx, db, Capture{Table: captured.table, Outbox: captured.outbox, Ops: []Op{OpInsert}}))
			write := func(table string) (time.Duration, error) {
				start := time.Now()
				if rows == 1 {
					err := benchInsert(ctx, db, table)
					return time.Since(start), err
				}
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					return 0, err
				}
				for range rows {
					if err := benchInsert(ctx, tx, table); err != nil {
						_ = tx.Rollback()
						return 0, err
					}
				}
				err = tx.Commit()
				return time.Since(start), err
			}
			for range 10 { // warm up
				_, err := write(plain.table)
				require.NoError(b, err)
				_, err = write(captured.table)
				require.NoError(b, err)
			}
			var without, with []time.Duration
			i := 0
			for b.Loop() {
				order := []*fixture{plain, captured}
				if i++; i%2 == 0 {
					order[0], order[1] = captured, plain
				}
				for _, f := range order {
					d, err := write(f.table)
					if err != nil {
						b.Fatal(err)
					}
					if f == plain {
						without = append(without, d)
					} else {
						with = append(with, d)
					}
				}
			}
			mw, mt := median(without), median(with)
			b.ReportMetric(float64(mw.Microseconds())/1000, "plain-ms")
			b.ReportMetric(float64(mt.Microseconds())/1000, "trigger-ms")
			b.ReportMetric(float64((mt-mw).Nanoseconds())/1000/float64(rows), "added-us/row")
		})
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkTriggerThroughput drains a backlog of b.N captured rows and
// reports events per second: "consumer" fires into a store that accepts at
// once (rows deleted as soon as fire returned, as with a durable store);
// "orchestrator" runs each event as a one-task workflow on the in-memory
// store (rows deleted once their run finished).
func BenchmarkTriggerThroughput(b *testing.B) {
	for _, mode := range []string{"consumer", "orchestrator"} {
		b.Run(mode, func(b *testing.B) {
			db, f := newBenchFixture(b)
			ctx := context.Background()
			require.NoError(b, InstallCapture(ctx, db, Capture{Table: f.table, Outbox: f.outbox, Ops: []Op{OpInsert}}))
			fillBacklog(b, db, f.table, b.N)
			quiet := slog.New(slog.DiscardHandler)
			trig := newTrigger(b, TriggerConfig{DB: db, Outbox: f.outbox, Logger: quiet})

			runCtx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			b.ResetTimer()
			start := time.Now()
			if mode == "consumer" {
				go func() { done <- trig.RunTracking(runCtx, newFakeRuns(true)) }()
			} else {
				o, err := batuta.New(batuta.Config{Logger: quiet, NoLogHooks: true, MaxInFlightRuns: -1})
				require.NoError(b, err)
				require.NoError(b, o.Register(&batuta.Workflow{Name: "noop", Tasks: []batuta.Task{{
					Name: "t", Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil },
				}}}))
				require.NoError(b, o.Bind("noop", trig))
				go func() { done <- o.Run(runCtx) }()
			}
			for f.outboxRows(b) > 0 {
				time.Sleep(5 * time.Millisecond) // polling the benchmark's own progress
			}
			elapsed := time.Since(start)
			b.StopTimer()
			cancel()
			<-done
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
		})
	}
}

// fillBacklog inserts n rows through the capture trigger, 500 per
// transaction.
func fillBacklog(b *testing.B, db *sql.DB, table string, n int) {
	ctx := context.Background()
	for n > 0 {
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(b, err)
		for range min(n, 500) {
			_, err := tx.ExecContext(ctx, "INSERT INTO "+quoteIdent(table)+
				" (customer_id, status, total, currency, created_at) VALUES (1, 'placed', 10, 'EUR', UTC_TIMESTAMP(6))")
			require.NoError(b, err)
		}
		require.NoError(b, tx.Commit())
		n -= min(n, 500)
	}
}

// BenchmarkCommitToTaskStart measures, through a real Orchestrator (in-memory
// store) and the default TriggerConfig, the time from the return of COMMIT
// to the start of the task the captured insert triggers. Each iteration is
// one commit; metrics are the percentiles over b.N commits.
//
//   - back-to-back: the next commit follows as soon as the previous task
//     started (the poller is in its short interval, and, with the in-memory
//     store, wakes when the previous run finishes);
//   - every-100ms: the next commit comes 100 ms after the previous task
//     started, a steady trickle (the poller has backed off to 80-160 ms);
//   - idle: the next commit comes 1.5-2.5 s (random) after the previous
//     task started, so the poller has backed off to MaxPollInterval;
//   - idle+wake: as idle, but the writer calls Trigger.Wake after COMMIT.
func BenchmarkCommitToTaskStart(b *testing.B) {
	for _, mode := range []string{"back-to-back", "every-100ms", "idle", "idle+wake"} {
		b.Run(mode, func(b *testing.B) {
			db, f := newBenchFixture(b)
			ctx := context.Background()
			require.NoError(b, InstallCapture(ctx, db, Capture{Table: f.table, Outbox: f.outbox, Ops: []Op{OpInsert}}))
			quiet := slog.New(slog.DiscardHandler)
			trig := newTrigger(b, TriggerConfig{DB: db, Outbox: f.outbox, Logger: quiet})
			o, err := batuta.New(batuta.Config{Logger: quiet, NoLogHooks: true})
			require.NoError(b, err)
			started := make(chan int64, 1)
			require.NoError(b, o.Register(&batuta.Workflow{Name: "lat", Tasks: []batuta.Task{{
				Name: "t", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
					started <- time.Now().UnixNano()
					return nil, nil
				},
			}}}))
			require.NoError(b, o.Bind("lat", trig))
			runCtx, cancel := context.WithCancel(ctx)
			var wg sync.WaitGroup
			wg.Go(func() { _ = o.Run(runCtx) })
			defer func() { cancel(); wg.Wait() }()

			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				switch mode {
				case "every-100ms":
					b.StopTimer()
					time.Sleep(100 * time.Millisecond)
					b.StartTimer()
				case "idle", "idle+wake":
					b.StopTimer()
					time.Sleep(1500*time.Millisecond + rand.N(time.Second)) // let the poller back off
					b.StartTimer()
				}
				if err := benchInsert(ctx, db, f.table); err != nil {
					b.Fatal(err)
				}
				committed := time.Now()
				if mode == "idle+wake" {
					trig.Wake()
				}
				lat = append(lat, time.Duration(<-started-committed.UnixNano()))
			}
			b.StopTimer()
			reportPercentiles(b, lat)
		})
	}
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.9), "p90-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(0, "ns/op") // wall time per op includes the idle waits; not meaningful
}
