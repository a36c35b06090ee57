// Command reminders is the durable-waits scenario end to end: orders with a
// ship time; a workflow per order waits (durably) until 24 hours before it,
// emails a reminder, then waits for a "shipped" signal, which a simulated
// warehouse sends over the HTTP front door at the ship time, or times out
// (some orders never ship) and alerts.
//
//	remind (Task.StartAt: ship time - 24h)
//	  -> shipped (Task.Signal "shipped", Timeout 30h, TimeoutSucceed: not shipped)
//	    -> close (prints "shipped ..." or "alert ...")
//
// Time is simulated: -hour is the length of one simulated hour (default
// 100ms), so the demo finishes in seconds. Reminders are due 1 to 7
// simulated hours after the start.
//
//	go run ./examples/reminders                                   # in memory
//	go run ./examples/reminders -store sqlite -dsn reminders.db   # durable
//	go run ./examples/reminders -store postgres -dsn postgres://postgres@127.0.0.1:5432/test
//	go run ./examples/reminders -store sqlite -dsn reminders.db -resume  # finish what the store holds
//
// It prints one line per reminder,
//
//	reminder order=<id> due=<RFC3339Nano> sent=<RFC3339Nano>
//
// and one "shipped order=<id> ..." or "alert order=<id> ..." line when an
// order is done, and exits when every order in the store is done. Killed
// with SIGKILL in the middle and restarted with -resume (same -store and
// -dsn), every order still gets exactly one reminder, never before its due
// time: the waits are in the store, and the reminder email is recorded in
// a ledger table of the same database, keyed by order, before its line is
// printed, so a reminder task re-run after a crash sends nothing twice.
// (The ledger row is the email: a kill between its commit and the print,
// a few microseconds, would lose the line, never repeat it.)
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Order is an order's event data: the run's event Subject is its ID.
type Order struct {
	ID     string    `json:"id"`
	ShipAt time.Time `json:"ship_at"`
	// Ships says whether the simulated warehouse ships it; the others
	// time out and alert.
	Ships bool `json:"ships"`
}

// Shipment is the "shipped" signal's data, and the shipped task's output.
type Shipment struct {
	Shipped bool      `json:"shipped"`
	At      time.Time `json:"at,omitzero"`
	Carrier string    `json:"carrier,omitempty"`
}

type options struct {
	store, dsn, schema string
	orders             int
	hour               time.Duration
	resume             bool
}

const workflowName = "reminders"

func main() {
	opt, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, opt, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "reminders:", err)
		stop()
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var opt options
	fs := flag.NewFlagSet("reminders", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&opt.store, "store", "memory", "where runs are kept: memory, sqlite or postgres")
	fs.StringVar(&opt.dsn, "dsn", "", "sqlite: the database file (default reminders.db); postgres: the DSN (default $BATUTA_PG_DSN or postgres://postgres@127.0.0.1:5432/test)")
	fs.StringVar(&opt.schema, "schema", "reminders", "postgres: the schema of the store and of the reminder ledger")
	fs.IntVar(&opt.orders, "orders", 10, "orders to create (none with -resume)")
	fs.DurationVar(&opt.hour, "hour", 100*time.Millisecond, "the length of one simulated hour")
	fs.BoolVar(&opt.resume, "resume", false, "create no orders: finish those the store holds")
	if err := fs.Parse(args); err != nil {
		return opt, err
	}
	var err error
	switch {
	case opt.store != "memory" && opt.store != "sqlite" && opt.store != "postgres":
		err = fmt.Errorf("-store must be memory, sqlite or postgres, not %q", opt.store)
	case opt.orders < 0:
		err = fmt.Errorf("-orders must not be negative (got %d)", opt.orders)
	case opt.hour <= 0:
		err = fmt.Errorf("-hour must be positive (got %s)", opt.hour)
	case opt.resume && opt.store == "memory":
		err = errors.New("-resume needs a durable store: -store sqlite or postgres")
	case !regexp.MustCompile(`^[a-z_][a-z0-9_]{0,40}$`).MatchString(opt.schema):
		err = fmt.Errorf("-schema must be a lower-case identifier, not %q", opt.schema)
	}
	if err != nil {
		fmt.Fprintln(stderr, "reminders:", err)
	}
	return opt, err
}

// A ledger records the reminder emails sent, one per order.
type ledger interface {
	// send records the reminder of order; it reports false if one was
	// recorded already (the task ran again after a crash).
	send(ctx context.Context, order string, due, sent time.Time) (bool, error)
}

type memLedger struct {
	mu   sync.Mutex
	sent map[string]bool
}

func (l *memLedger) send(_ context.Context, order string, _, _ time.Time) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sent[order] {
		return false, nil
	}
	l.sent[order] = true
	return true, nil
}

type sqlLedger struct {
	db     *sql.DB
	insert string
}

func (l *sqlLedger) send(ctx context.Context, order string, due, sent time.Time) (bool, error) {
	res, err := l.db.ExecContext(ctx, l.insert, order, due.Format(time.RFC3339Nano), sent.Format(time.RFC3339Nano))
	if err != nil {
		return false, fmt.Errorf("recording the reminder of order %s: %w", order, err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

type pgLedger struct {
	pool   *pgxpool.Pool
	insert string
}

func (l *pgLedger) send(ctx context.Context, order string, due, sent time.Time) (bool, error) {
	tag, err := l.pool.Exec(ctx, l.insert, order, due, sent)
	if err != nil {
		return false, fmt.Errorf("recording the reminder of order %s: %w", order, err)
	}
	return tag.RowsAffected() == 1, nil
}

// openStore opens the store and the ledger; close releases both.
func openStore(ctx context.Context, opt options) (batuta.Store, ledger, func(), error) {
	switch opt.store {
	case "sqlite":
		path := opt.dsn
		if path == "" {
			path = "reminders.db"
		}
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
		if err != nil {
			return nil, nil, nil, err
		}
		db.SetMaxOpenConns(4)
		st, err := batutasqlite.New(ctx, db, batutasqlite.Config{})
		if err != nil {
			_ = db.Close()
			return nil, nil, nil, err
		}
		if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS reminder_ledger (
			order_id TEXT PRIMARY KEY, due TEXT NOT NULL, sent TEXT NOT NULL)`); err != nil {
			_ = st.Close()
			_ = db.Close()
			return nil, nil, nil, fmt.Errorf("creating the reminder ledger: %w", err)
		}
		l := &sqlLedger{db: db, insert: `INSERT INTO reminder_ledger (order_id, due, sent) VALUES (?, ?, ?) ON CONFLICT (order_id) DO NOTHING`}
		return st, l, func() { _ = st.Close(); _ = db.Close() }, nil
	case "postgres":
		dsn := opt.dsn
		if dsn == "" {
			dsn = os.Getenv("BATUTA_PG_DSN")
		}
		if dsn == "" {
			dsn = "postgres://postgres@127.0.0.1:5432/test"
		}
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			return nil, nil, nil, err
		}
		st, err := batutapg.New(ctx, pool, batutapg.Config{Schema: opt.schema})
		if err != nil {
			pool.Close()
			return nil, nil, nil, err
		}
		// The schema name was checked to be a plain identifier.
		if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS "`+opt.schema+`".reminder_ledger (
			order_id text PRIMARY KEY, due timestamptz NOT NULL, sent timestamptz NOT NULL)`); err != nil {
			_ = st.Close()
			pool.Close()
			return nil, nil, nil, fmt.Errorf("creating the reminder ledger: %w", err)
		}
		l := &pgLedger{pool: pool, insert: `INSERT INTO "` + opt.schema + `".reminder_ledger (order_id, due, sent) VALUES ($1, $2, $3) ON CONFLICT (order_id) DO NOTHING`}
		return st, l, func() { _ = st.Close(); pool.Close() }, nil
	}
	return batuta.NewMemoryStore(batuta.MemoryStoreConfig{}), &memLedger{sent: map[string]bool{}}, func() {}, nil
}

// printer writes whole lines, one at a time.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) line(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// reminderWorkflow builds the workflow; hour is one simulated hour.
func reminderWorkflow(l ledger, out *printer, hour time.Duration) *batuta.Workflow {
	dueOf := func(in *batuta.Input) (time.Time, error) {
		o, err := batuta.EventData[Order](in)
		return o.ShipAt.Add(-24 * hour), err
	}
	return &batuta.Workflow{Name: workflowName, Tasks: []batuta.Task{
		{
			Name:    "remind",
			StartAt: dueOf, // a durable timer: the run holds nothing until then
			Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				sent := time.Now()
				o, err := batuta.EventData[Order](in)
				if err != nil {
					return nil, err
				}
				due := o.ShipAt.Add(-24 * hour)
				first, err := l.send(ctx, o.ID, due, sent)
				if err != nil {
					return nil, err
				}
				if first {
					out.line("reminder order=%s due=%s sent=%s", o.ID, due.Format(time.RFC3339Nano), sent.Format(time.RFC3339Nano))
				}
				return nil, nil
			},
		},
		{
			Name: "shipped", Deps: []string{"remind"},
			Signal: &batuta.SignalWait{
				Name: "shipped", Timeout: 30 * hour,
				OnTimeout: batuta.TimeoutSucceed, Default: Shipment{Shipped: false},
			},
		},
		{
			Name: "close", Deps: []string{"shipped"},
			Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				o, err := batuta.EventData[Order](in)
				if err != nil {
					return nil, err
				}
				s, err := batuta.Output[Shipment](in, "shipped")
				if err != nil {
					return nil, err
				}
				if s.Shipped {
					out.line("shipped order=%s carrier=%s at=%s", o.ID, s.Carrier, s.At.Format(time.RFC3339Nano))
				} else {
					out.line("alert order=%s not shipped by %s", o.ID, time.Now().Format(time.RFC3339Nano))
				}
				return nil, nil
			},
		},
	}}
}

func run(ctx context.Context, opt options, stdout, stderr io.Writer) error {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	store, l, closeStore, err := openStore(ctx, opt)
	if err != nil {
		return fmt.Errorf("opening the %s store: %w", opt.store, err)
	}
	defer closeStore()
	out := &printer{w: stdout}
	o, err := batuta.New(batuta.Config{Store: store, Logger: log, Workers: 8})
	if err != nil {
		return err
	}
	if err := o.Register(reminderWorkflow(l, out, opt.hour)); err != nil {
		return err
	}

	// The HTTP front door, on a local port, behind a bearer token.
	token := randomHex(16)
	h, err := batuta.NewHTTPHandler(batuta.HTTPConfig{Orchestrator: o, Logger: log, Authorize: func(r *http.Request) error {
		if r.Header.Get("Authorization") != "Bearer "+token {
			return errors.New("bad token")
		}
		return nil
	}})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("reminders: http server", "error", err)
		}
	}()
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-srvDone
	}()

	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	runDone := make(chan error, 1)
	go func() { runDone <- o.Run(runCtx) }()
	defer func() {
		stopRun()
		<-runDone
	}()

	if !opt.resume {
		batch, err := createOrders(ctx, o, opt)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "reminders: created orders %s-001 to %s-%03d\n", batch, batch, opt.orders)
	}
	runs, err := unfinished(ctx, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "reminders: %d orders to finish (one simulated hour = %s)\n", len(runs), opt.hour)

	// The warehouse ships each order that ships at its ship time, with a
	// "shipped" signal over HTTP, by order (the event Subject).
	wh := &warehouse{base: "http://" + ln.Addr().String(), token: token, log: log}
	var wg sync.WaitGroup
	errs := make(chan error, len(runs))
	for _, r := range runs {
		var ord Order
		if err := json.Unmarshal(r.Event.Data, &ord); err != nil {
			return fmt.Errorf("run %s: order data: %w", r.ID, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ord.Ships {
				if err := wh.ship(ctx, ord); err != nil {
					errs <- err
					return
				}
			}
			fr, err := o.Wait(ctx, r.ID)
			if err != nil {
				errs <- err
				return
			}
			if fr.State != batuta.RunSucceeded {
				errs <- fmt.Errorf("order %s: run %s %s: %s", ord.ID, fr.ID, fr.State, fr.Error)
			}
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	if err := errors.Join(all...); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "reminders: all %d orders done\n", len(runs))
	return nil
}

// createOrders submits opt.orders orders, with ship times 25 to 31
// simulated hours from now; every fourth one never ships.
// It returns the order IDs' prefix.
func createOrders(ctx context.Context, o *batuta.Orchestrator, opt options) (string, error) {
	batch := randomHex(3)
	now := time.Now()
	evs := make([]batuta.Event, opt.orders)
	for i := range evs {
		ord := Order{
			ID:     fmt.Sprintf("%s-%03d", batch, i+1),
			ShipAt: now.Add(time.Duration(25+i%7) * opt.hour),
			Ships:  i%4 != 3,
		}
		data, err := json.Marshal(ord)
		if err != nil {
			return "", err
		}
		evs[i] = batuta.Event{ID: "order-" + ord.ID, Subject: ord.ID, Type: "order.placed", Data: data}
	}
	if _, err := o.SubmitMany(ctx, workflowName, evs); err != nil {
		return "", fmt.Errorf("creating %d orders: %w", opt.orders, err)
	}
	return batch, nil
}

// unfinished lists the unfinished runs of the workflow.
func unfinished(ctx context.Context, o *batuta.Orchestrator) ([]*batuta.Run, error) {
	f := batuta.RunFilter{Workflow: workflowName, States: []batuta.RunState{batuta.RunPending, batuta.RunRunning}, Ascending: true, Limit: 1000}
	var all []*batuta.Run
	for {
		page, err := o.ListRuns(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("listing the unfinished orders: %w", err)
		}
		all = append(all, page...)
		if len(page) < f.Limit {
			return all, nil
		}
		f.After = page[len(page)-1].ID
	}
}

// warehouse ships orders through the HTTP front door.
type warehouse struct {
	base, token string
	log         *slog.Logger
}

// ship waits for the order's ship time and signals "shipped" for it. A
// 409 (no run waits: shipped before a restart, or already timed out) ends
// it too; other failures are retried.
func (w *warehouse) ship(ctx context.Context, ord Order) error {
	t := time.NewTimer(time.Until(ord.ShipAt))
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	}
	body, err := json.Marshal(Shipment{Shipped: true, At: time.Now(), Carrier: "ups"})
	if err != nil {
		return err
	}
	u := w.base + "/workflows/" + workflowName + "/signals/shipped?subject=" + url.QueryEscape(ord.ID)
	backoff := 20 * time.Millisecond
	for {
		status, err := w.post(ctx, u, body)
		switch {
		case err == nil && (status == http.StatusAccepted || status == http.StatusConflict):
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		}
		w.log.Warn("reminders: shipping signal failed; retrying", "order", ord.ID, "status", status, "error", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (w *warehouse) post(ctx context.Context, u string, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+w.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
