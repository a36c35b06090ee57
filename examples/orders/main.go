// Command orders is batuta's seed scenario, end to end: a row inserted into
// the orders table — by this program or by any other client (psql, the
// mysql CLI, sqlite3) — is captured by a database trigger into an outbox in
// the same transaction, and the outbox trigger starts the order-placed
// workflow: validate -> charge -> (send-email, reserve-stock) -> complete.
// The email step records the order in order_emails as the stand-in for an
// SMTP call, idempotently, so a re-run never sends twice.
//
// By default it uses a fresh SQLite file (in a temp directory of its own,
// removed at exit) and the in-memory store, inserts a handful of orders,
// waits for their runs, prints exactly those orders and exits 0; so every
// start is clean and two programs running at once do not share anything:
//
//	go run ./examples/orders
//	go run ./examples/orders -db postgres -store postgres -serve   # keep consuming
//	go run ./examples/orders -db mysql -dsn 'root@tcp(127.0.0.1:3306)/test?parseTime=true'
//	go run ./examples/orders -dsn app.db -store sqlite -store-dsn runs.db  # files kept between starts
//	go run ./examples/orders -http 127.0.0.1:8080 -http-user ops -http-password secret -payment-outage 30s
//
// With -http it serves, until interrupted, the operations dashboard at /
// (package dashboard: runs, their task graphs, retry, cancel, pause) and
// batuta's HTTP front door under /api/ (POST /api/workflows/order-placed/runs,
// GET /api/runs/{id}), both behind basic auth from -http-user and
// -http-password; it refuses to start without them unless -http-insecure.
// -payment-outage makes every charge fail for that long after the start:
// the runs fail, and once it is over "Retry" on a run's page (or "Retry
// all matching runs" on the failed runs) makes them succeed.
//
// Without -serve the program prints only the orders it inserted (an order
// left in a database given with -dsn by an earlier start, or inserted by
// another client, is still processed, but not printed). With -serve it
// prints every order it processes and rides out database outages: a
// failed read is logged and retried with backoff, never fatal.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/batuta-dev/batuta/adapters/batutaprom"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Order is a row of the orders table, as the outbox carries it.
type Order struct {
	ID         int64  `json:"id"`
	Customer   string `json:"customer"`
	TotalCents int64  `json:"total_cents"`
}

// change is the outbox event's data (the same shape for every database).
type change struct {
	Op  string          `json:"op"`
	New json.RawMessage `json:"new"`
}

// Charge is the output of the charge task.
type Charge struct {
	PaymentID string `json:"payment_id"`
	Amount    int64  `json:"amount"`
}

type options struct {
	db, dsn, store, storeDSN string
	// schema is the PostgreSQL schema of the orders tables and the outbox
	// (default public); the PostgreSQL store then uses schema_runs.
	schema  string
	n       int
	serve   bool
	timeout time.Duration
	// http serves the dashboard and the HTTP front door (http.go).
	http, httpUser, httpPassword string
	httpInsecure                 bool
	// outage makes the payment provider fail every charge for that long
	// after the start.
	outage time.Duration
}

func main() {
	opt, err := parseFlags(os.Args[1:])
	if err != nil {
		os.Exit(2) // the flag package printed why
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, opt, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "orders:", err)
		stop()
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	var opt options
	fs := flag.NewFlagSet("orders", flag.ContinueOnError)
	fs.StringVar(&opt.db, "db", "sqlite", "application database: sqlite, postgres or mysql")
	fs.StringVar(&opt.dsn, "dsn", "", "application database DSN (default: a fresh SQLite file in a temp dir removed at exit, or the local test database)")
	fs.StringVar(&opt.store, "store", "memory", "where runs are kept: memory, sqlite or postgres")
	fs.StringVar(&opt.storeDSN, "store-dsn", "", "store DSN (default: -dsn when -store matches -db, a fresh SQLite file for sqlite, else the local default)")
	fs.StringVar(&opt.schema, "schema", "", "PostgreSQL schema for the orders tables and the outbox (default public; the store then uses SCHEMA_runs, else batuta)")
	fs.IntVar(&opt.n, "n", 5, "orders to insert")
	fs.BoolVar(&opt.serve, "serve", false, "keep consuming orders until interrupted")
	fs.DurationVar(&opt.timeout, "timeout", time.Minute, "how long to wait for the runs (without -serve)")
	fs.StringVar(&opt.http, "http", "", "serve the dashboard at / and the HTTP front door at /api/ on this address (e.g. 127.0.0.1:8080); implies -serve")
	fs.StringVar(&opt.httpUser, "http-user", "", "basic-auth user for -http")
	fs.StringVar(&opt.httpPassword, "http-password", "", "basic-auth password for -http")
	fs.BoolVar(&opt.httpInsecure, "http-insecure", false, "serve -http without authentication (anyone who reaches it can retry, cancel and submit)")
	fs.DurationVar(&opt.outage, "payment-outage", 0, "make every charge fail for this long after the start (to see failed runs, then retry them)")
	if err := fs.Parse(args); err != nil {
		return opt, err
	}
	if opt.http != "" {
		if err := opt.checkHTTP(); err != nil {
			fmt.Fprintln(fs.Output(), "orders:", err)
			return opt, err
		}
		opt.serve = true
	}
	return opt, nil
}

// orderWorkflow builds the order-placed workflow. The payment provider
// fails the first try of every third order, to show retries.
func orderWorkflow(db orderDB, retries *atomic.Int64, outageUntil ...time.Time) *batuta.Workflow {
	return &batuta.Workflow{
		Name:    "order-placed",
		Timeout: time.Minute,
		Tasks: []batuta.Task{
			{Name: "validate", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				ch, err := batuta.EventData[change](in)
				if err != nil {
					return nil, batuta.Permanent(err)
				}
				var o Order
				if err := json.Unmarshal(ch.New, &o); err != nil {
					return nil, batuta.Permanent(fmt.Errorf("order row: %w", err))
				}
				if o.TotalCents <= 0 {
					return nil, batuta.Permanent(fmt.Errorf("order %d: total must be positive", o.ID))
				}
				return o, nil
			}},
			{Name: "charge", Deps: []string{"validate"},
				Retry: batuta.RetryPolicy{MaxAttempts: 3, InitialDelay: 10 * time.Millisecond},
				Run: func(ctx context.Context, in *batuta.Input) (any, error) {
					o, err := batuta.Output[Order](in, "validate")
					if err != nil {
						return nil, err
					}
					if len(outageUntil) > 0 && time.Now().Before(outageUntil[0]) {
						return nil, fmt.Errorf("payment provider unavailable (503) for order %d", o.ID)
					}
					if o.ID%3 == 0 && in.Attempt() == 1 {
						retries.Add(1)
						return nil, errors.New("payment provider timed out")
					}
					// A real payment API gets in.IdempotencyKey(), so a retry never charges twice.
					return Charge{PaymentID: "pay_" + strings.ReplaceAll(in.IdempotencyKey(), "/", "_"), Amount: o.TotalCents}, nil
				}},
			// send-email reads validate's output, two levels up (Output
			// reads any ancestor). It writes to the database, so it retries
			// long enough to ride out a lost connection.
			{Name: "send-email", Deps: []string{"charge"},
				Retry: batuta.RetryPolicy{MaxAttempts: 10, InitialDelay: 50 * time.Millisecond, MaxDelay: 2 * time.Second},
				Run: func(ctx context.Context, in *batuta.Input) (any, error) {
					o, err := batuta.Output[Order](in, "validate")
					if err != nil {
						return nil, err
					}
					sent, err := db.recordEmail(ctx, o.ID)
					if err != nil {
						return nil, err
					}
					if !sent {
						return "already sent", nil
					}
					return "sent", nil
				}},
			{Name: "reserve-stock", Deps: []string{"charge"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				return "reserved", nil
			}},
			{Name: "complete", Deps: []string{"send-email", "reserve-stock"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				return "done", nil
			}},
		},
	}
}

// finished collects finished runs for the main goroutine.
type finished struct {
	batuta.NopHooks
	ch   chan string
	stop chan struct{} // closed when nobody reads ch any more
}

func (f *finished) RunFinished(_ context.Context, r batuta.RunInfo) {
	if r.Workflow == "order-placed" {
		select {
		case f.ch <- r.RunID:
		case <-f.stop:
		}
	}
}

// tempDir makes (once) the directory of this start's SQLite files.
type tempDir struct{ path string }

func (d *tempDir) file(name string) (string, error) {
	if d.path == "" {
		p, err := os.MkdirTemp("", "batuta-orders-")
		if err != nil {
			return "", err
		}
		d.path = p
	}
	return filepath.Join(d.path, name), nil
}

func (d *tempDir) remove() {
	if d.path != "" {
		os.RemoveAll(d.path)
	}
}

func openStore(ctx context.Context, opt options, tmp *tempDir) (batuta.Store, func(), error) {
	dsn := opt.storeDSN
	switch opt.store {
	case "memory":
		return batuta.NewMemoryStore(batuta.MemoryStoreConfig{}), func() {}, nil
	case "sqlite":
		if dsn == "" {
			var err error
			if dsn, err = tmp.file("runs.db"); err != nil {
				return nil, nil, err
			}
		}
		s, err := batutasqlite.Open(ctx, dsn, batutasqlite.Config{})
		if err != nil {
			return nil, nil, err
		}
		return s, func() { s.Close() }, nil
	case "postgres":
		if dsn == "" {
			dsn = defaultDSN("postgres")
			if opt.db == "postgres" && opt.dsn != "" {
				dsn = opt.dsn
			}
		}
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			return nil, nil, fmt.Errorf("store: %w", err)
		}
		cfg := batutapg.Config{}
		if opt.schema != "" {
			cfg.Schema = opt.schema + "_runs"
		}
		s, err := batutapg.New(ctx, pool, cfg)
		if err != nil {
			pool.Close()
			return nil, nil, err
		}
		return s, func() { s.Close(); pool.Close() }, nil
	}
	return nil, nil, fmt.Errorf("unknown -store %q (want memory, sqlite or postgres)", opt.store)
}

// run inserts opt.n orders and prints their runs to out; with opt.serve it
// goes on printing every finished order until ctx ends.
func run(ctx context.Context, opt options, out io.Writer) error {
	var tmp tempDir
	defer tmp.remove() // deferred first: runs after the databases are closed
	if opt.dsn == "" {
		if opt.db == "sqlite" {
			var err error
			if opt.dsn, err = tmp.file("app.db"); err != nil {
				return err
			}
		} else {
			opt.dsn = defaultDSN(opt.db)
		}
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	db, err := openDB(ctx, opt.db, opt.dsn, opt.schema)
	if err != nil {
		return err
	}
	defer db.close()
	if err := db.setup(ctx); err != nil {
		return fmt.Errorf("setting up tables and the capture trigger: %w", err)
	}
	store, closeStore, err := openStore(ctx, opt, &tmp)
	if err != nil {
		return err
	}
	defer closeStore()

	var retries atomic.Int64
	done := &finished{ch: make(chan string, 1024), stop: make(chan struct{})}
	defer close(done.stop)
	// Prometheus metrics (served at /metrics with -http): the hooks count
	// runs and attempts; the store's statistics are read on each scrape.
	metrics, err := batutaprom.New(batutaprom.Config{Store: store, Logger: logger})
	if err != nil {
		return err
	}
	o, err := batuta.New(batuta.Config{Store: store, Logger: logger, Hooks: []batuta.Hooks{done, metrics}})
	if err != nil {
		return err
	}
	metrics.Observe(o)
	if err := o.Register(orderWorkflow(db, &retries, time.Now().Add(opt.outage))); err != nil {
		return err
	}
	trig, err := db.trigger()
	if err != nil {
		return err
	}
	if err := o.Bind("order-placed", trig); err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		runErr <- o.Run(runCtx)
	}()
	defer func() { cancel(); wg.Wait() }()
	if opt.http != "" {
		stopHTTP, err := serveHTTP(ctx, opt, o, metrics.Handler(), logger, out)
		if err != nil {
			return err
		}
		defer stopHTTP()
	}

	fmt.Fprintf(out, "orders: db=%s store=%s\n", opt.db, opt.store)
	want := map[int64]bool{}
	var ids []int64
	for i := 0; i < opt.n; i++ {
		id, err := db.insertOrder(ctx, fmt.Sprintf("customer-%d", i+1), int64(1000*(i+1)))
		if err != nil {
			return fmt.Errorf("inserting an order: %w", err)
		}
		want[id] = true
		ids = append(ids, id)
	}
	fmt.Fprintf(out, "inserted orders %v; waiting for their runs\n", ids)

	waitCtx := ctx
	if !opt.serve {
		var cancelWait context.CancelFunc
		waitCtx, cancelWait = context.WithTimeout(ctx, opt.timeout)
		defer cancelWait()
	}
	failed := 0
	for opt.serve || len(want) > 0 {
		select {
		case id := <-done.ch:
			r, err := getRun(waitCtx, o, id, logger)
			if errors.Is(err, batuta.ErrRunNotFound) {
				logger.Warn("a finished run is gone from the store", "run", id)
				continue
			}
			if err != nil {
				continue // waitCtx ended: the cases below say why
			}
			order, _ := orderOf(r)
			if !opt.serve && !want[order] {
				continue // not ours: from an earlier start or another client
			}
			delete(want, order)
			printRun(out, order, r)
			if r.State != batuta.RunSucceeded {
				failed++
			}
		case err := <-runErr:
			if ctx.Err() != nil {
				fmt.Fprintln(out, "interrupted")
				return nil
			}
			return fmt.Errorf("orchestrator stopped: %w", err)
		case <-waitCtx.Done():
			if ctx.Err() != nil {
				fmt.Fprintln(out, "interrupted")
				return nil
			}
			return fmt.Errorf("timed out waiting for the runs of orders %v", keys(want))
		}
	}
	fmt.Fprintf(out, "all runs finished: %d failed, %d payment retries\n", failed, retries.Load())
	if failed > 0 {
		return fmt.Errorf("%d runs failed", failed)
	}
	return nil
}

// getRun reads a finished run, riding out a lost database connection: an
// error other than ErrRunNotFound is logged and retried with backoff until
// it succeeds or ctx ends.
func getRun(ctx context.Context, o *batuta.Orchestrator, id string, logger *slog.Logger) (*batuta.Run, error) {
	backoff := 50 * time.Millisecond
	for {
		r, err := o.GetRun(ctx, id)
		if err == nil || errors.Is(err, batuta.ErrRunNotFound) || ctx.Err() != nil {
			return r, err
		}
		logger.Warn("reading a finished run failed; retrying", "run", id, "error", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// orderOf is the ID of the order that started r, read from its event.
func orderOf(r *batuta.Run) (int64, error) {
	var ch change
	if err := json.Unmarshal(r.Event.Data, &ch); err != nil {
		return 0, err
	}
	var o Order
	err := json.Unmarshal(ch.New, &o)
	return o.ID, err
}

func keys(m map[int64]bool) []int64 {
	var out []int64
	for k := range m {
		out = append(out, k)
	}
	return out
}

func printRun(out io.Writer, order int64, r *batuta.Run) {
	fmt.Fprintf(out, "order %d: run %s (event %s) %s in %s\n", order, r.ID, r.Event.ID, r.State, r.FinishedAt.Sub(r.CreatedAt).Round(time.Microsecond))
	for _, t := range r.Tasks {
		extra := ""
		if len(t.Attempts) > 1 {
			extra = fmt.Sprintf(" after %d attempts", len(t.Attempts))
		}
		if s, ok := t.Output.(string); ok && t.Name == "send-email" {
			extra += " (" + s + ")"
		}
		if t.Error != "" {
			extra += " error: " + strings.SplitN(t.Error, "\n", 2)[0]
		}
		fmt.Fprintf(out, "  %-14s %-9s%s\n", t.Name, t.State, extra)
	}
}
