package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// syncBuffer is an io.Writer the test can read while run writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var (
	insertedRE = regexp.MustCompile(`(?m)^inserted orders \[([0-9 ]*)\]`)
	orderRE    = regexp.MustCompile(`(?m)^order ([0-9]+): run \S+ \(event [^)]*\) (\w+)`)
)

// parseOutput returns the orders a run said it inserted and, for each
// order it printed, the states printed (one per time it was printed).
func parseOutput(t *testing.T, out string) (inserted []int64, printed map[int64][]string) {
	t.Helper()
	m := insertedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no 'inserted orders' line in:\n%s", out)
	}
	for _, f := range strings.Fields(m[1]) {
		id, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		inserted = append(inserted, id)
	}
	printed = map[int64][]string{}
	for _, m := range orderRE.FindAllStringSubmatch(out, -1) {
		id, _ := strconv.ParseInt(m[1], 10, 64)
		printed[id] = append(printed[id], m[2])
	}
	return inserted, printed
}

// checkExactlyOwn fails unless out printed each inserted order once, as
// succeeded, and no other order.
func checkExactlyOwn(t *testing.T, out string, n int) {
	t.Helper()
	inserted, printed := parseOutput(t, out)
	if len(inserted) != n {
		t.Fatalf("inserted %v, want %d orders\n%s", inserted, n, out)
	}
	if len(printed) != len(inserted) {
		t.Fatalf("printed orders %v, inserted %v\n%s", printed, inserted, out)
	}
	for _, id := range inserted {
		if st := printed[id]; !slices.Equal(st, []string{"succeeded"}) {
			t.Fatalf("order %d printed as %v, want once succeeded\n%s", id, st, out)
		}
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestOrdersScenario runs the scenario end to end with explicit files and
// both local stores: inserted orders must all run to success.
func TestOrdersScenario(t *testing.T) {
	dir := t.TempDir()
	for _, store := range []string{"memory", "sqlite"} {
		t.Run(store, func(t *testing.T) {
			opt := options{db: "sqlite", dsn: filepath.Join(dir, store+"-app.db"), store: store,
				storeDSN: filepath.Join(dir, store+"-runs.db"), n: 4, timeout: time.Minute}
			var out syncBuffer
			if err := run(testCtx(t), opt, &out); err != nil {
				t.Fatal(err)
			}
			checkExactlyOwn(t, out.String(), 4)
		})
	}
}

// TestOrdersDefaultRunIsClean: the default run (what `go run
// ./examples/orders` does) starts from a fresh database of its own each
// time, prints exactly the orders it inserted, and leaves no file behind;
// two consecutive and two concurrent runs do not see each other's orders.
// (With one shared file in the temp dir, the second run inserted orders
// 6..10 and the concurrent runs consumed each other's orders.)
func TestOrdersDefaultRunIsClean(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	opt, err := parseFlags([]string{"-n", "4"})
	if err != nil {
		t.Fatal(err)
	}
	runOnce := func() (string, error) {
		var out syncBuffer
		err := run(testCtx(t), opt, &out)
		return out.String(), err
	}
	for i := range 2 {
		out, err := runOnce()
		if err != nil {
			t.Fatalf("run %d: %v\n%s", i+1, err, out)
		}
		checkExactlyOwn(t, out, 4)
		if inserted, _ := parseOutput(t, out); !slices.Equal(inserted, []int64{1, 2, 3, 4}) {
			t.Fatalf("run %d inserted %v into a database that was not fresh", i+1, inserted)
		}
	}
	var wg sync.WaitGroup
	outs := make([]string, 2)
	errs := make([]error, 2)
	for i := range outs {
		wg.Go(func() { outs[i], errs[i] = runOnce() })
	}
	wg.Wait()
	for i := range outs {
		if errs[i] != nil {
			t.Fatalf("concurrent run %d: %v\n%s", i+1, errs[i], outs[i])
		}
		checkExactlyOwn(t, outs[i], 4)
	}
	left, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Fatalf("runs left %v in the temp dir", left)
	}
}

const pgAdminDSN = "postgres://postgres@127.0.0.1:5432/test"

func pgOrSkip(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := testCtx(t)
	pool, err := pgxpool.New(ctx, pgAdminDSN)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		if os.Getenv("BATUTA_REQUIRE_SERVICES") == "1" {
			t.Fatalf("PostgreSQL at %s is required (BATUTA_REQUIRE_SERVICES=1) but unreachable: %v", pgAdminDSN, err)
		}
		t.Skipf("PostgreSQL at %s unreachable: %v", pgAdminDSN, err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// TestOrdersServeRidesOutConnectionLoss: -serve keeps consuming orders
// while every PostgreSQL backend of the program (application pool, outbox
// LISTEN connection, store pool and its listener) is killed with
// pg_terminate_backend, again and again while orders are inserted. The
// program must not exit, and every order inserted before, during and after
// the kills must be processed and printed.
func TestOrdersServeRidesOutConnectionLoss(t *testing.T) {
	admin := pgOrSkip(t)
	ctx := testCtx(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	suffix := hex.EncodeToString(b[:])
	schema := "orders_" + suffix
	app := "batuta-orders-test-" + suffix // only this program's backends are killed
	t.Cleanup(func() {
		for _, s := range []string{schema, schema + "_runs"} {
			if _, err := admin.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{s}.Sanitize()+` CASCADE`); err != nil {
				t.Errorf("dropping schema %s: %v", s, err)
			}
		}
	})

	opt, err := parseFlags([]string{"-db", "postgres", "-store", "postgres", "-serve", "-n", "3",
		"-schema", schema, "-dsn", pgAdminDSN + "?application_name=" + app})
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stop := context.WithCancel(ctx)
	defer stop()
	var out syncBuffer
	exited := make(chan error, 1)
	go func() { exited <- run(serveCtx, opt, &out) }()

	// waitPrinted waits until every order of ids is printed as succeeded.
	waitPrinted := func(ids []int64) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			select {
			case err := <-exited:
				t.Fatalf("-serve exited (err %v) while it should keep serving; output:\n%s", err, out.String())
			default:
			}
			_, printed := parseOutputLoose(out.String())
			missing := 0
			for _, id := range ids {
				if !slices.Contains(printed[id], "succeeded") {
					missing++
				}
			}
			if missing == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of orders %v not processed; output:\n%s", missing, ids, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var inserted []int64
	for !insertedRE.MatchString(out.String()) {
		select {
		case err := <-exited:
			t.Fatalf("-serve exited at start: %v\n%s", err, out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	first, _ := parseOutput(t, out.String())
	inserted = append(inserted, first...)
	waitPrinted(inserted)

	insert := func() int64 {
		var id int64
		err := admin.QueryRow(ctx, `INSERT INTO `+pgx.Identifier{schema, "orders"}.Sanitize()+
			` (customer, total_cents) VALUES ('walk-in', 1234) RETURNING id`).Scan(&id)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	// Kill every backend of the program again and again, a few
	// milliseconds apart, while orders are inserted and their runs finish.
	var killed atomic.Int64
	killerDone := make(chan struct{})
	killCtx, stopKilling := context.WithCancel(ctx)
	go func() {
		defer close(killerDone)
		for killCtx.Err() == nil {
			var n int
			if err := admin.QueryRow(killCtx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&n); err == nil {
				killed.Add(int64(n))
			}
		}
	}()
	var during []int64
	for range 40 {
		during = append(during, insert())
		time.Sleep(10 * time.Millisecond)
	}
	stopKilling()
	<-killerDone
	inserted = append(inserted, during...)
	waitPrinted(during)
	t.Logf("%d backends killed while %d orders were inserted", killed.Load(), len(during))
	if killed.Load() < 10 {
		t.Fatalf("only %d backends were killed: the test did not exercise connection loss", killed.Load())
	}
	// Still alive, still consuming after the last kill.
	last := []int64{insert(), insert()}
	waitPrinted(last)
	waitPrinted(inserted)
	stop()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("-serve returned %v on interrupt", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("-serve did not return after its context ended")
	}
	if !strings.Contains(out.String(), "interrupted") {
		t.Fatalf("no 'interrupted' line:\n%s", out.String())
	}
	t.Logf("%d orders processed across %d killed backends", len(inserted)+len(last), killed.Load())
}

// parseOutputLoose is parseOutput for output still being written.
func parseOutputLoose(out string) ([]int64, map[int64][]string) {
	printed := map[int64][]string{}
	for _, m := range orderRE.FindAllStringSubmatch(out, -1) {
		id, _ := strconv.ParseInt(m[1], 10, 64)
		printed[id] = append(printed[id], m[2])
	}
	return nil, printed
}

// TestGetRunRidesOutOutage: reading a finished run — the call whose error
// used to end -serve — waits out a PostgreSQL outage: the program's
// backends are terminated and its role may not log in, so every attempt
// fails until the outage ends; getRun logs, backs off and returns the run
// once the database is back. (The kill scenario above rarely makes that
// read fail: it follows the run's completion on a connection just used.)
func TestGetRunRidesOutOutage(t *testing.T) {
	admin := pgOrSkip(t)
	ctx := testCtx(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	role := "orders_role_" + hex.EncodeToString(b[:])
	schema := role + "_runs"
	for _, q := range []string{
		`CREATE ROLE ` + role + ` LOGIN`,
		`GRANT CREATE ON DATABASE test TO ` + role,
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		bg := context.Background()
		for _, q := range []string{
			`ALTER ROLE ` + role + ` LOGIN`,
			`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '` + role + `'`,
			`DROP SCHEMA IF EXISTS ` + schema + ` CASCADE`,
			`REVOKE CREATE ON DATABASE test FROM ` + role,
			`DROP OWNED BY ` + role,
			`DROP ROLE ` + role,
		} {
			if _, err := admin.Exec(bg, q); err != nil {
				t.Errorf("%s: %v", q, err)
			}
		}
	})
	pool, err := pgxpool.New(ctx, "postgres://"+role+"@127.0.0.1:5432/test?application_name="+role)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store, err := batutapg.New(ctx, pool, batutapg.Config{Schema: schema, DisableListen: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	o, err := batuta.New(batuta.Config{Store: store, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var retries atomic.Int64
	if err := o.Register(orderWorkflow(nil, &retries)); err != nil {
		t.Fatal(err)
	}
	runID, err := o.Submit(ctx, "order-placed", batuta.Event{ID: "outage-1", Data: []byte(`{"op":"insert","new":{"id":7}}`)})
	if err != nil {
		t.Fatal(err)
	}

	// The outage: no new logins for the role, its backends killed.
	for _, q := range []string{
		`ALTER ROLE ` + role + ` NOLOGIN`,
		`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '` + role + `'`,
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := o.GetRun(ctx, runID); err == nil {
		t.Fatal("GetRun succeeded during the outage: the test does not exercise it")
	}
	logs := &syncBuffer{}
	type result struct {
		r   *batuta.Run
		err error
	}
	got := make(chan result, 1)
	go func() {
		r, err := getRun(ctx, o, runID, slog.New(slog.NewTextHandler(logs, nil)))
		got <- result{r, err}
	}()
	// It keeps trying (and says so) while the outage lasts...
	for strings.Count(logs.String(), "retrying") < 3 {
		select {
		case res := <-got:
			t.Fatalf("getRun returned during the outage: %v", res.err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	// ...and returns the run once the database is back.
	if _, err := admin.Exec(ctx, `ALTER ROLE `+role+` LOGIN`); err != nil {
		t.Fatal(err)
	}
	res := <-got
	if res.err != nil {
		t.Fatalf("getRun after the outage: %v", res.err)
	}
	if res.r.ID != runID {
		t.Fatalf("getRun returned run %s, want %s", res.r.ID, runID)
	}
	if id, err := orderOf(res.r); err != nil || id != 7 {
		t.Fatalf("order of the run: %d, %v", id, err)
	}
}
