package batutatest

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// Benchmarks of a database adapter's trigger path, shared by the adapters
// (each names its own Benchmark functions and documents its results):
// commit overhead of the capture trigger, trigger throughput draining a
// backlog, and commit-to-task-start latency.

// OutboxBench drives the outbox benchmarks.
type OutboxBench struct {
	// New returns a fresh business table with the insert capture trigger
	// installed into a fresh outbox, dropped when b ends.
	New func(b *testing.B) OutboxBenchTable
	// NewPair returns two fresh tables in one database, only the second
	// one captured.
	NewPair func(b *testing.B) (plain, captured OutboxBenchTable)
	// Prepared adds the CommitOverhead mode 100-rows-prepared.
	Prepared bool
}

// OutboxBenchTable is a business table of eight columns, what a small
// business table looks like, and the outbox it may be captured into.
type OutboxBenchTable interface {
	// Write writes rows rows: one row on its own (autocommit), more in one
	// transaction, with one prepared statement if prepared.
	Write(ctx context.Context, rows int, prepared bool) error
	// Backlog inserts n rows, 500 per transaction.
	Backlog(ctx context.Context, n int) error
	// OutboxRows counts the rows in the outbox.
	OutboxRows(ctx context.Context) (int, error)
	// Trigger returns a consumer of the outbox with the default settings
	// and a logger that discards.
	Trigger(b *testing.B) batuta.TrackingTrigger
}

// BenchmarkOutboxCommitOverhead measures writing transactions on two
// identical tables, one without and one with the insert capture trigger,
// alternating between them at every iteration so both see the same load
// on a shared machine. "1-row" is a single-row INSERT committed on its own
// (autocommit), dominated by the commit's log flush; "100-rows" inserts 100
// rows in one transaction, so the commit is amortised and the trigger's
// per-row cost shows; "100-rows-prepared" (OutboxBench.Prepared) does so
// with one prepared statement. Metrics: median milliseconds per transaction
// without (plain-ms) and with (trigger-ms) the trigger, and the median
// difference per row (added-us/row).
func BenchmarkOutboxCommitOverhead(b *testing.B, s OutboxBench) {
	modes := []string{"1-row", "100-rows"}
	if s.Prepared {
		modes = append(modes, "100-rows-prepared")
	}
	for _, mode := range modes {
		rows := 100
		if mode == "1-row" {
			rows = 1
		}
		prepared := mode == "100-rows-prepared"
		b.Run(mode, func(b *testing.B) {
			plain, captured := s.NewPair(b)
			ctx := context.Background()
			write := func(t OutboxBenchTable) (time.Duration, error) {
				start := time.Now()
				err := t.Write(ctx, rows, prepared)
				return time.Since(start), err
			}
			for range 10 { // warm up
				for _, t := range []OutboxBenchTable{plain, captured} {
					if _, err := write(t); err != nil {
						b.Fatal(err)
					}
				}
			}
			var without, with []time.Duration
			i := 0
			for b.Loop() {
				order := []OutboxBenchTable{plain, captured}
				if i++; i%2 == 0 {
					order[0], order[1] = captured, plain
				}
				for _, t := range order {
					d, err := write(t)
					if err != nil {
						b.Fatal(err)
					}
					if t == plain {
						without = append(without, d)
					} else {
						with = append(with, d)
					}
				}
			}
			mw, mt := medianDuration(without), medianDuration(with)
			b.ReportMetric(float64(mw.Microseconds())/1000, "plain-ms")
			b.ReportMetric(float64(mt.Microseconds())/1000, "trigger-ms")
			b.ReportMetric(float64((mt-mw).Nanoseconds())/1000/float64(rows), "added-us/row")
		})
	}
}

func medianDuration(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkOutboxTriggerThroughput drains a backlog of b.N captured rows
// and reports events per second: "consumer" fires into a store that
// accepts at once (rows deleted as soon as fire returned, as with a durable
// store); "orchestrator" runs each event as a one-task workflow on the
// in-memory store (rows deleted once their run finished).
func BenchmarkOutboxTriggerThroughput(b *testing.B, s OutboxBench) {
	for _, mode := range []string{"consumer", "orchestrator"} {
		b.Run(mode, func(b *testing.B) {
			t := s.New(b)
			ctx := context.Background()
			if err := t.Backlog(ctx, b.N); err != nil {
				b.Fatal(err)
			}
			trig := t.Trigger(b)
			runCtx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			b.ResetTimer()
			start := time.Now()
			if mode == "consumer" {
				go func() { done <- trig.RunTracking(runCtx, NewOutboxRuns(true)) }()
			} else {
				o := benchOrchestrator(b, "noop", func() {}, trig, batuta.Config{MaxInFlightRuns: -1})
				go func() { done <- o.Run(runCtx) }()
			}
			for {
				n, err := t.OutboxRows(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if n == 0 {
					break
				}
				time.Sleep(5 * time.Millisecond) // polling the benchmark's own progress
			}
			elapsed := time.Since(start)
			b.StopTimer()
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				b.Error(err)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
		})
	}
}

// benchOrchestrator returns an orchestrator (in-memory store, quiet) with
// a one-task workflow named name that calls task, bound to trig.
func benchOrchestrator(b *testing.B, name string, task func(), trig batuta.Trigger, cfg batuta.Config) *batuta.Orchestrator {
	cfg.Logger, cfg.NoLogHooks = quietLogger(), true
	o, err := batuta.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	wf := &batuta.Workflow{Name: name, Tasks: []batuta.Task{{
		Name: "t", Run: func(context.Context, *batuta.Input) (any, error) { task(); return nil, nil },
	}}}
	if err := o.Register(wf); err != nil {
		b.Fatal(err)
	}
	if err := o.Bind(name, trig); err != nil {
		b.Fatal(err)
	}
	return o
}

// BenchmarkOutboxCommitToTaskStart measures, through a real Orchestrator
// (in-memory store) and the default trigger settings, the time from the
// return of COMMIT to the start of the task the captured insert triggers.
// Each iteration is one commit; metrics are the percentiles over b.N
// commits.
//
//   - back-to-back: the next commit follows as soon as the previous task
//     started (a polling trigger is in its short interval, and, with the
//     in-memory store, wakes when the previous run finishes);
//   - every-100ms: the next commit comes 100 ms after the previous task
//     started, a steady trickle;
//   - idle: the next commit comes 1.5-2.5 s (random) after the previous
//     task started, so a polling trigger has backed off to its longest
//     interval;
//   - idle+wake: as idle, but the writer calls the trigger's Wake after
//     COMMIT (only for a trigger that has Wake).
func BenchmarkOutboxCommitToTaskStart(b *testing.B, s OutboxBench) {
	for _, mode := range []string{"back-to-back", "every-100ms", "idle", "idle+wake"} {
		b.Run(mode, func(b *testing.B) {
			t := s.New(b)
			ctx := context.Background()
			trig := t.Trigger(b)
			waker, canWake := trig.(interface{ Wake() })
			if mode == "idle+wake" && !canWake {
				b.Skip("the trigger has no Wake")
			}
			started := make(chan int64, 1)
			o := benchOrchestrator(b, "lat", func() { started <- time.Now().UnixNano() }, trig, batuta.Config{})
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
				if err := t.Write(ctx, 1, false); err != nil {
					b.Fatal(err)
				}
				committed := time.Now()
				if mode == "idle+wake" {
					waker.Wake()
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

// SQLBenchTable is an OutboxBenchTable over database/sql.
type SQLBenchTable struct {
	DB *sql.DB
	// Insert inserts one business row; its one placeholder is a customer
	// id. BacklogInsert inserts one row, no placeholder.
	Insert, BacklogInsert string
	// Outbox is the quoted outbox table.
	Outbox string
	// TriggerFunc returns a consumer of the outbox (defaults, quiet).
	TriggerFunc func(b *testing.B) batuta.TrackingTrigger
}

var _ OutboxBenchTable = (*SQLBenchTable)(nil)

// Write implements OutboxBenchTable.
func (t *SQLBenchTable) Write(ctx context.Context, rows int, prepared bool) error {
	if rows == 1 {
		_, err := t.DB.ExecContext(ctx, t.Insert, rand.IntN(1000))
		return err
	}
	return InSQLTx(ctx, t.DB, false, func(tx *sql.Tx) error {
		exec := func(args ...any) error { _, err := tx.ExecContext(ctx, t.Insert, args...); return err }
		if prepared {
			st, err := tx.PrepareContext(ctx, t.Insert)
			if err != nil {
				return err
			}
			defer func() { _ = st.Close() }()
			exec = func(args ...any) error { _, err := st.ExecContext(ctx, args...); return err }
		}
		for range rows {
			if err := exec(rand.IntN(1000)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Backlog implements OutboxBenchTable.
func (t *SQLBenchTable) Backlog(ctx context.Context, n int) error {
	for n > 0 {
		k := min(n, 500)
		if err := InSQLTx(ctx, t.DB, false, func(tx *sql.Tx) error {
			for range k {
				if _, err := tx.ExecContext(ctx, t.BacklogInsert); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// OutboxRows implements OutboxBenchTable.
func (t *SQLBenchTable) OutboxRows(ctx context.Context) (int, error) {
	var n int
	err := t.DB.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+t.Outbox).Scan(&n)
	return n, err
}

// Trigger implements OutboxBenchTable.
func (t *SQLBenchTable) Trigger(b *testing.B) batuta.TrackingTrigger { return t.TriggerFunc(b) }

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
