// Command dbtrigger measures batuta's PostgreSQL database trigger
// (batutapg.InstallCapture + batutapg.Trigger) against a real server:
//
//   - floor:      INSERT -> capture trigger -> pg_notify -> a bare LISTEN
//     connection, no batuta consumer: the physical lower bound.
//   - latency:    commit-to-first-task-start at an open-loop insert rate,
//     through the orchestrator with the in-memory store and default
//     Trigger settings.
//   - throughput: events per second through the trigger path, draining a
//     backlog of rows written while no consumer ran.
//   - commitcost: what the capture trigger adds to the writing
//     transaction (single-row autocommit inserts, 1 and 8 writers, and a
//     1000-row statement), with and without notifications (NoNotify).
//
// Each mode works in a fresh schema (batuta_bench_<random>) dropped at the
// end. Usage:
//
//	go run ./bench/dbtrigger -mode all -dsn postgres://postgres@127.0.0.1:5432/test
package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

func main() {
	dsn := flag.String("dsn", cmp.Or(os.Getenv("BATUTA_PG_DSN"), "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"), "PostgreSQL DSN")
	mode := flag.String("mode", "all", "floor, latency, throughput, commitcost or all")
	rate := flag.Int("rate", 200, "inserts per second (floor, latency)")
	duration := flag.Duration("duration", 20*time.Second, "how long to insert (floor, latency)")
	rows := flag.Int("rows", 20000, "backlog size (throughput)")
	batch := flag.Int("batch", 0, "TriggerConfig.BatchSize (0: default)")
	noNotify := flag.Bool("nonotify", false, "install the outbox with NoNotify (latency, throughput)")
	poll := flag.Duration("poll", 0, "TriggerConfig.PollInterval (0: default)")
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))

	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(*dsn)
	check(err)
	cfg.MaxConns = 32
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	check(err)
	defer pool.Close()
	// The consumer has its own pool with pgxpool's defaults, as a batuta
	// instance beside the application would: overloaded writers queueing
	// for connections would otherwise delay the consumer's claims.
	consumer, err := pgxpool.New(ctx, *dsn)
	check(err)
	defer consumer.Close()
	var version string
	check(pool.QueryRow(ctx, `SHOW server_version`).Scan(&version))
	fmt.Printf("PostgreSQL %s, GOMAXPROCS %d, %s\n\n", version, runtime.GOMAXPROCS(0), runtime.Version())

	modes := []string{*mode}
	if *mode == "all" {
		modes = []string{"floor", "latency", "throughput", "commitcost"}
	}
	for _, m := range modes {
		b := newBench(ctx, pool, consumer)
		b.ob.NoNotify, b.poll = *noNotify, *poll
		switch m {
		case "floor":
			b.floor(ctx, *rate, *duration)
		case "latency":
			b.latency(ctx, *rate, *duration, *batch)
		case "throughput":
			b.throughput(ctx, *rows, *batch)
		case "commitcost":
			b.commitCost(ctx)
		default:
			fmt.Fprintf(os.Stderr, "unknown mode %q\n", m)
			os.Exit(2)
		}
		b.close(ctx)
		fmt.Println()
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "dbtrigger:", err)
		os.Exit(1)
	}
}

type bench struct {
	pool     *pgxpool.Pool // writers
	consumer *pgxpool.Pool // the Trigger
	schema   string
	ob       batutapg.Outbox
	poll     time.Duration // TriggerConfig.PollInterval
}

func newBench(ctx context.Context, pool, consumer *pgxpool.Pool) *bench {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "batuta_bench_" + hex.EncodeToString(b)
	_, err := pool.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{schema}.Sanitize())
	check(err)
	return &bench{pool: pool, consumer: consumer, schema: schema, ob: batutapg.Outbox{Schema: schema}}
}

func (b *bench) close(ctx context.Context) {
	_, err := b.pool.Exec(ctx, `DROP SCHEMA `+pgx.Identifier{b.schema}.Sanitize()+` CASCADE`)
	check(err)
}

func (b *bench) table(name string) string { return pgx.Identifier{b.schema, name}.Sanitize() }

// orders creates a user table and, if capture, installs the insert trigger.
func (b *bench) orders(ctx context.Context, name string, capture bool) string {
	_, err := b.pool.Exec(ctx, `CREATE TABLE `+b.table(name)+` (id bigserial PRIMARY KEY, seq bigint NOT NULL, amount int NOT NULL, note text)`)
	check(err)
	if capture {
		check(batutapg.InstallCapture(ctx, b.pool, batutapg.Capture{Outbox: b.ob, Schema: b.schema, Table: name, Ops: []batutapg.Op{batutapg.OpInsert}}))
	}
	return b.table(name)
}

// floor: insert one row at a time at rate/s and time INSERT start -> the
// notification's arrival on a bare LISTEN connection.
func (b *bench) floor(ctx context.Context, rate int, d time.Duration) {
	table := b.orders(ctx, "orders", true)
	pc, err := b.pool.Acquire(ctx)
	check(err)
	conn := pc.Hijack()
	defer conn.Close(ctx)
	channel := b.schema + ".batuta_outbox" // the default channel
	_, err = conn.Exec(ctx, `LISTEN `+pgx.Identifier{channel}.Sanitize())
	check(err)
	var lat []time.Duration
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	end := time.Now().Add(d)
	for i := 0; time.Now().Before(end); i++ {
		<-tick.C
		t0 := time.Now()
		_, err := b.pool.Exec(ctx, `INSERT INTO `+table+` (seq, amount) VALUES ($1, 1)`, i)
		check(err)
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = conn.WaitForNotification(wctx)
		cancel()
		check(err)
		if i >= rate { // skip the first second (warm-up)
			lat = append(lat, time.Since(t0))
		}
	}
	fmt.Printf("floor: INSERT start -> notification on a bare LISTEN connection, %d/s for %s (sequential)\n", rate, d)
	fmt.Printf("  n=%d %s\n", len(lat), summary(lat))
}

// latency: open-loop inserts at rate/s; each row's task records when it
// started. Reported from the INSERT statement's start (autocommit, so the
// commit is inside it) and from the moment the commit was acknowledged.
func (b *bench) latency(ctx context.Context, rate int, d time.Duration, batch int) {
	table := b.orders(ctx, "orders", true)
	n := rate * int(d/time.Second)
	starts := make([]atomic.Int64, n)   // INSERT sent
	acks := make([]atomic.Int64, n)     // commit acknowledged
	started := make([]atomic.Int64, n)  // task started
	captured := make([]atomic.Int64, n) // the capture trigger ran (database clock)
	accepted := make([]atomic.Int64, n) // the run was accepted (fire returned)
	hook := &acceptHook{}
	var done atomic.Int64
	wf := &batuta.Workflow{Name: "order-placed", Tasks: []batuta.Task{{
		Name: "first",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			now := time.Now().UnixNano()
			cd, err := batuta.EventData[batutapg.ChangeData](in)
			if err != nil {
				return nil, err
			}
			var row struct {
				Seq int `json:"seq"`
			}
			if err := json.Unmarshal(cd.New, &row); err != nil {
				return nil, err
			}
			if started[row.Seq].CompareAndSwap(0, now) {
				captured[row.Seq].Store(cd.At.UnixNano())
				if t, ok := hook.m.Load(in.RunID()); ok {
					accepted[row.Seq].Store(t.(int64))
				}
				done.Add(1)
			}
			return nil, nil
		},
	}}}
	stop := b.orchestrator(ctx, wf, batch, hook)
	defer stop()

	tick := time.NewTicker(time.Second / time.Duration(rate))
	var wg sync.WaitGroup
	for i := range n {
		<-tick.C
		wg.Go(func() {
			starts[i].Store(time.Now().UnixNano())
			_, err := b.pool.Exec(ctx, `INSERT INTO `+table+` (seq, amount) VALUES ($1, 1)`, i)
			acks[i].Store(time.Now().UnixNano())
			check(err)
		})
	}
	tick.Stop()
	wg.Wait()
	waitUntil(30*time.Second, func() bool { return done.Load() == int64(n) })
	var fromStart, fromAck, toCapture, toAccept, toTask []time.Duration
	for i := rate; i < n; i++ { // skip the first second (warm-up)
		fromStart = append(fromStart, time.Duration(started[i].Load()-starts[i].Load()))
		fromAck = append(fromAck, time.Duration(started[i].Load()-acks[i].Load()))
		toCapture = append(toCapture, time.Duration(captured[i].Load()-starts[i].Load()))
		if accepted[i].Load() != 0 { // the hook may run after the task started
			toAccept = append(toAccept, time.Duration(accepted[i].Load()-captured[i].Load()))
			toTask = append(toTask, time.Duration(started[i].Load()-accepted[i].Load()))
		}
	}
	fmt.Printf("latency: commit -> first task start, open loop %d inserts/s for %s, in-memory store, TriggerConfig defaults", rate, d)
	if batch > 0 {
		fmt.Printf(", BatchSize %d", batch)
	}
	if b.ob.NoNotify {
		fmt.Printf(", NoNotify")
	}
	if b.poll > 0 {
		fmt.Printf(", PollInterval %s", b.poll)
	}
	fmt.Println()
	fmt.Printf("  from INSERT start (autocommit): n=%d %s\n", len(fromStart), summary(fromStart))
	fmt.Printf("  from commit acknowledged:       n=%d %s\n", len(fromAck), summary(fromAck))
	fmt.Printf("  segments: INSERT start -> row captured   %s\n", summary(toCapture))
	fmt.Printf("            row captured -> run accepted  %s\n", summary(toAccept))
	fmt.Printf("            run accepted -> task start    %s\n", summary(toTask))
}

// throughput: write a backlog with no consumer, then time the drain.
func (b *bench) throughput(ctx context.Context, rows, batch int) {
	table := b.orders(ctx, "orders", true)
	t0 := time.Now()
	for written := 0; written < rows; written += 5000 {
		_, err := b.pool.Exec(ctx, `INSERT INTO `+table+` (seq, amount) SELECT g, 1 FROM generate_series($1::int, $2::int) g`,
			written, min(written+5000, rows)-1)
		check(err)
	}
	fmt.Printf("throughput: %d rows written in %s (multi-row statements, trigger fired per row)\n", rows, time.Since(t0).Round(time.Millisecond))
	var done atomic.Int64
	wf := &batuta.Workflow{Name: "order-placed", Tasks: []batuta.Task{{
		Name: "noop",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			done.Add(1)
			return nil, nil
		},
	}}}
	t1 := time.Now()
	stop := b.orchestrator(ctx, wf, batch, nil)
	waitUntil(10*time.Minute, func() bool { return done.Load() == int64(rows) })
	ran := time.Since(t1)
	waitUntil(time.Minute, func() bool {
		var left int
		check(b.pool.QueryRow(ctx, `SELECT count(*) FROM `+b.table("batuta_outbox")).Scan(&left))
		return left == 0
	})
	emptied := time.Since(t1)
	stop()
	fmt.Printf("  backlog drained through the orchestrator (in-memory store, BatchSize %d): all tasks ran in %s = %.0f events/s; outbox empty after %s = %.0f events/s\n",
		cmp.Or(batch, batutapg.DefaultBatchSize), ran.Round(time.Millisecond), float64(rows)/ran.Seconds(),
		emptied.Round(time.Millisecond), float64(rows)/emptied.Seconds())
}

// commitCost compares inserts into a plain table, a captured one, and one
// captured into an outbox with NoNotify.
func (b *bench) commitCost(ctx context.Context) {
	plain := b.orders(ctx, "plain", false)
	captured := b.orders(ctx, "captured", true)
	quiet := b.orders(ctx, "quiet", false)
	// The same capture into an outbox with NoNotify, to split the cost.
	check(batutapg.InstallCapture(ctx, b.pool, batutapg.Capture{
		Outbox: batutapg.Outbox{Schema: b.schema, Table: "quiet_outbox", NoNotify: true},
		Schema: b.schema, Table: "quiet", Ops: []batutapg.Op{batutapg.OpInsert},
	}))

	tables := []struct{ name, sql string }{
		{"no trigger", plain},
		{"capture trigger", captured},
		{"capture, NoNotify", quiet},
	}
	fmt.Println("commitcost: autocommit single-row INSERT latency (statement sent -> commit acknowledged)")
	const perWriter = 2000
	for _, writers := range []int{1, 8} {
		for _, tb := range tables {
			// warm up
			for i := range 200 {
				_, err := b.pool.Exec(ctx, `INSERT INTO `+tb.sql+` (seq, amount) VALUES ($1, 1)`, -i)
				check(err)
			}
			lat := make([][]time.Duration, writers)
			var wg sync.WaitGroup
			t0 := time.Now()
			for w := range writers {
				wg.Go(func() {
					for i := range perWriter {
						s := time.Now()
						_, err := b.pool.Exec(ctx, `INSERT INTO `+tb.sql+` (seq, amount) VALUES ($1, 1)`, i)
						check(err)
						lat[w] = append(lat[w], time.Since(s))
					}
				})
			}
			wg.Wait()
			el := time.Since(t0)
			all := slices.Concat(lat...)
			fmt.Printf("  %d writer(s), %-23s %6.0f inserts/s  %s\n", writers, tb.name+":", float64(len(all))/el.Seconds(), summary(all))
		}
	}
	fmt.Println("commitcost: one INSERT of 1000 rows (INSERT ... SELECT generate_series), mean of 20")
	for _, tb := range tables {
		var total time.Duration
		for range 20 {
			s := time.Now()
			_, err := b.pool.Exec(ctx, `INSERT INTO `+tb.sql+` (seq, amount) SELECT g, 1 FROM generate_series(1, 1000) g`)
			check(err)
			total += time.Since(s)
		}
		fmt.Printf("  %-23s %8s per statement (%s per row)\n", tb.name+":", (total / 20).Round(10*time.Microsecond), (total / 20000).Round(100*time.Nanosecond))
	}
}

// orchestrator runs an orchestrator (in-memory store, log hooks off) with
// wf bound to a Trigger on the bench outbox.
func (b *bench) orchestrator(ctx context.Context, wf *batuta.Workflow, batch int, hook batuta.Hooks) (stop func()) {
	cfg := batuta.Config{NoLogHooks: true}
	if hook != nil {
		cfg.Hooks = []batuta.Hooks{hook}
	}
	o, err := batuta.New(cfg)
	check(err)
	check(o.Register(wf))
	trig, err := batutapg.NewTrigger(batutapg.TriggerConfig{Pool: b.consumer, Outbox: b.ob, BatchSize: batch, PollInterval: b.poll})
	check(err)
	check(o.Bind(wf.Name, trig))
	rctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- o.Run(rctx) }()
	return func() {
		cancel()
		if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
			check(err)
		}
	}
}

func waitUntil(d time.Duration, cond func() bool) {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			check(fmt.Errorf("timed out after %s", d))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func summary(d []time.Duration) string {
	if len(d) == 0 {
		return "no samples"
	}
	s := slices.Clone(d)
	slices.Sort(s)
	p := func(q float64) string {
		v := s[min(len(s)-1, int(q*float64(len(s))))]
		return strconv.FormatFloat(float64(v)/float64(time.Millisecond), 'f', 2, 64) + "ms"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s", p(0.50), p(0.90), p(0.99), p(1))
}

// acceptHook records when each run was accepted.
type acceptHook struct {
	batuta.NopHooks
	m sync.Map // run ID -> unix nanos
}

func (h *acceptHook) RunStarted(_ context.Context, r batuta.RunInfo) {
	h.m.Store(r.RunID, time.Now().UnixNano())
}
