// Command orders is batuta's seed scenario, end to end: a row inserted into
// the orders table — by this program or by any other client (psql, the
// mysql CLI, sqlite3) — is captured by a database trigger into an outbox in
// the same transaction, and the outbox trigger starts the order-placed
// workflow: validate -> charge -> (send-email, reserve-stock) -> complete.
// The email step records the order in order_emails as the stand-in for an
// SMTP call, idempotently, so a re-run never sends twice.
//
// By default it uses a SQLite file and the in-memory store, inserts a
// handful of orders, waits for their runs, prints them and exits 0:
//
//	go run ./examples/orders
//	go run ./examples/orders -db postgres -store postgres -serve   # keep consuming
//	go run ./examples/orders -db mysql -dsn 'root@tcp(127.0.0.1:3306)/test?parseTime=true'
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
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
	n                        int
	serve                    bool
	timeout                  time.Duration
}

func main() {
	var opt options
	flag.StringVar(&opt.db, "db", "sqlite", "application database: sqlite, postgres or mysql")
	flag.StringVar(&opt.dsn, "dsn", "", "application database DSN (default: a SQLite file in the temp dir, or the local test database)")
	flag.StringVar(&opt.store, "store", "memory", "where runs are kept: memory, sqlite or postgres")
	flag.StringVar(&opt.storeDSN, "store-dsn", "", "store DSN (default: -dsn when -store matches -db, else the local default)")
	flag.IntVar(&opt.n, "n", 5, "orders to insert")
	flag.BoolVar(&opt.serve, "serve", false, "keep consuming orders until interrupted")
	flag.DurationVar(&opt.timeout, "timeout", time.Minute, "how long to wait for the runs (without -serve)")
	flag.Parse()
	if err := run(opt); err != nil {
		fmt.Fprintln(os.Stderr, "orders:", err)
		os.Exit(1)
	}
}

// orderWorkflow builds the order-placed workflow. The payment provider
// fails the first try of every third order, to show retries.
func orderWorkflow(db orderDB, retries *atomic.Int64) *batuta.Workflow {
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
					if o.ID%3 == 0 && in.Attempt() == 1 {
						retries.Add(1)
						return nil, errors.New("payment provider timed out")
					}
					// A real payment API gets in.IdempotencyKey(), so a retry never charges twice.
					return Charge{PaymentID: "pay_" + strings.ReplaceAll(in.IdempotencyKey(), "/", "_"), Amount: o.TotalCents}, nil
				}},
			// Output reads direct dependencies only, so send-email names
			// validate too (it runs after charge either way).
			{Name: "send-email", Deps: []string{"validate", "charge"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
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
	ch chan string
}

func (f *finished) RunFinished(_ context.Context, r batuta.RunInfo) {
	if r.Workflow == "order-placed" {
		f.ch <- r.RunID
	}
}

func openStore(ctx context.Context, opt options) (batuta.Store, func(), error) {
	dsn := opt.storeDSN
	switch opt.store {
	case "memory":
		return batuta.NewMemoryStore(batuta.MemoryStoreConfig{}), func() {}, nil
	case "sqlite":
		if dsn == "" {
			dsn = filepath.Join(os.TempDir(), "batuta-orders-runs.db")
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
		s, err := batutapg.New(ctx, pool, batutapg.Config{})
		if err != nil {
			pool.Close()
			return nil, nil, err
		}
		return s, func() { s.Close(); pool.Close() }, nil
	}
	return nil, nil, fmt.Errorf("unknown -store %q (want memory, sqlite or postgres)", opt.store)
}

func run(opt options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if opt.dsn == "" {
		opt.dsn = defaultDSN(opt.db)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	db, err := openDB(ctx, opt.db, opt.dsn)
	if err != nil {
		return err
	}
	defer db.close()
	if err := db.setup(ctx); err != nil {
		return fmt.Errorf("setting up tables and the capture trigger: %w", err)
	}
	store, closeStore, err := openStore(ctx, opt)
	if err != nil {
		return err
	}
	defer closeStore()

	var retries atomic.Int64
	done := &finished{ch: make(chan string, 1024)}
	o, err := batuta.New(batuta.Config{Store: store, Logger: logger, Hooks: []batuta.Hooks{done}})
	if err != nil {
		return err
	}
	if err := o.Register(orderWorkflow(db, &retries)); err != nil {
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
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := o.Run(runCtx); err != nil {
			logger.Error("orchestrator", "error", err)
		}
	}()
	defer func() { cancel(); wg.Wait() }()

	fmt.Printf("orders: db=%s store=%s\n", opt.db, opt.store)
	want := map[int64]bool{}
	for i := 0; i < opt.n; i++ {
		id, err := db.insertOrder(ctx, fmt.Sprintf("customer-%d", i+1), int64(1000*(i+1)))
		if err != nil {
			return fmt.Errorf("inserting an order: %w", err)
		}
		want[id] = true
	}
	fmt.Printf("inserted %d orders; waiting for their runs\n", len(want))

	var deadline <-chan time.Time
	if !opt.serve {
		deadline = time.After(opt.timeout)
	}
	failed := 0
	for opt.serve || len(want) > 0 {
		select {
		case id := <-done.ch:
			r, err := o.GetRun(ctx, id)
			if err != nil {
				return err
			}
			printRun(r)
			if r.State != batuta.RunSucceeded {
				failed++
			}
			if ch, err := batuta.OutputAs[Order](r.Task("validate").Output); err == nil {
				delete(want, ch.ID)
			}
		case <-deadline:
			return fmt.Errorf("timed out waiting for the runs of orders %v", keys(want))
		case <-ctx.Done():
			fmt.Println("interrupted")
			return nil
		}
	}
	fmt.Printf("all runs finished: %d failed, %d payment retries\n", failed, retries.Load())
	if failed > 0 {
		return fmt.Errorf("%d runs failed", failed)
	}
	return nil
}

func keys(m map[int64]bool) []int64 {
	var out []int64
	for k := range m {
		out = append(out, k)
	}
	return out
}

func printRun(r *batuta.Run) {
	fmt.Printf("run %s (event %s) %s in %s\n", r.ID, r.Event.ID, r.State, r.FinishedAt.Sub(r.CreatedAt).Round(time.Microsecond))
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
		fmt.Printf("  %-14s %-9s%s\n", t.Name, t.State, extra)
	}
}
