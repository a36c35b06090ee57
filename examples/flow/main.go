// Command flow shows batuta's flow controls — delayed runs, priorities,
// concurrency keys (queue, cancel-in-progress, cancel-newest), task
// concurrency, rate limits, debounce and pause — and prints what it
// observed: high-water marks per key, starts per second per rate limit,
// the lateness of delayed runs, the wait of quiet keys behind a noisy one.
//
//	go run ./examples/flow                                   # in-memory store, one orchestrator
//	go run ./examples/flow -store postgres -instances 3      # three orchestrators on one database
//	go run ./examples/flow -store postgres -dsn postgres://user@host/db -instances 3
//
// With -instances N, N orchestrators share the store in this process, as
// N processes would share a database: every limit is held across them.
// With PostgreSQL the demo works in a schema of its own, dropped at the end.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/jackc/pgx/v5/pgxpool"
)

type options struct {
	store     string
	dsn       string
	instances int
	scale     int
	verbose   bool
}

func main() {
	var opt options
	flag.StringVar(&opt.store, "store", "memory", "store: memory or postgres")
	flag.StringVar(&opt.dsn, "dsn", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL DSN (with -store postgres)")
	flag.IntVar(&opt.instances, "instances", 1, "orchestrators sharing the store in this process")
	flag.IntVar(&opt.scale, "scale", 1, "multiply the number of runs of each demo")
	flag.BoolVar(&opt.verbose, "v", false, "log the orchestrators' warnings")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, opt, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "flow:", err)
		os.Exit(1)
	}
}

// cluster is N orchestrators sharing one store.
type cluster struct {
	os    []*batuta.Orchestrator
	stops []func()
}

// storeMaker returns a new store handle on the shared store: the same
// memory store, or a new batutapg.Store (own pool) per instance.
type storeMaker func(ctx context.Context) (batuta.Store, func(), error)

func run(ctx context.Context, opt options, out io.Writer) error {
	if opt.instances < 1 || opt.scale < 1 {
		return errors.New("-instances and -scale must be at least 1")
	}
	mk, cleanup, err := stores(ctx, opt)
	if err != nil {
		return err
	}
	defer cleanup()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if opt.verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	d := &demo{opt: opt, out: out, hw: newHighWater(), log: logger}
	c := &cluster{}
	defer func() {
		for i := len(c.stops) - 1; i >= 0; i-- {
			c.stops[i]()
		}
	}()
	for i := range opt.instances {
		st, closeStore, err := mk(ctx)
		if err != nil {
			return err
		}
		c.stops = append(c.stops, closeStore)
		o, err := batuta.New(batuta.Config{Store: st, Logger: logger, NodeID: fmt.Sprintf("instance-%d", i+1),
			Workers: 32, PollInterval: 200 * time.Millisecond})
		if err != nil {
			return err
		}
		if err := d.register(o); err != nil {
			return err
		}
		// Run's own ctx: the instances stop when the demo is done, not
		// halfway through a step when ctx (Ctrl-C) ends.
		runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan error, 1)
		go func() { done <- o.Run(runCtx) }()
		c.os = append(c.os, o)
		c.stops = append(c.stops, func() { cancel(); <-done })
	}
	d.c = c
	fmt.Fprintf(out, "store %s, %d instance(s)\n", opt.store, opt.instances)
	for _, step := range []struct {
		name string
		f    func(context.Context) error
	}{
		{"delayed runs", d.delayed},
		{"priorities", d.priorities},
		{"workflow concurrency (queue) and fairness", d.fairness},
		{"cancel strategies", d.cancelStrategies},
		{"task concurrency", d.taskConcurrency},
		{"rate limit", d.rateLimit},
		{"debounce", d.debounce},
		{"pause", d.pause},
	} {
		fmt.Fprintf(out, "\n== %s\n", step.name)
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := step.f(sctx)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", step.name, err)
		}
	}
	return nil
}

// stores returns a storeMaker for opt.store and a cleanup.
func stores(ctx context.Context, opt options) (storeMaker, func(), error) {
	switch opt.store {
	case "memory":
		st := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
		return func(context.Context) (batuta.Store, func(), error) { return st, func() {}, nil }, func() {}, nil
	case "postgres":
		var b [4]byte
		_, _ = rand.Read(b[:])
		schema := "batuta_flow_" + hex.EncodeToString(b[:])
		admin, err := pgxpool.New(ctx, opt.dsn)
		if err != nil {
			return nil, nil, fmt.Errorf("postgres: %w", err)
		}
		if err := admin.Ping(ctx); err != nil {
			admin.Close()
			return nil, nil, fmt.Errorf("postgres at %s: %w", opt.dsn, err)
		}
		mk := func(ctx context.Context) (batuta.Store, func(), error) {
			pool, err := pgxpool.New(ctx, opt.dsn)
			if err != nil {
				return nil, nil, err
			}
			s, err := batutapg.New(ctx, pool, batutapg.Config{Schema: schema})
			if err != nil {
				pool.Close()
				return nil, nil, err
			}
			return s, func() { _ = s.Close(); pool.Close() }, nil
		}
		dropCtx := context.WithoutCancel(ctx) // drop the schema even after Ctrl-C
		cleanup := func() {
			_, _ = admin.Exec(dropCtx, `DROP SCHEMA IF EXISTS "`+schema+`" CASCADE`)
			admin.Close()
		}
		return mk, cleanup, nil
	}
	return nil, nil, fmt.Errorf("unknown -store %q (want memory or postgres)", opt.store)
}

type demo struct {
	opt options
	out io.Writer
	log *slog.Logger
	c   *cluster
	hw  *highWater

	mu     sync.Mutex
	starts map[string][]time.Time // start times per label
	order  []int                  // priorities in start order
}

// any returns the i-th orchestrator, round-robin: submissions are spread
// over the instances.
func (d *demo) any(i int) *batuta.Orchestrator { return d.c.os[i%len(d.c.os)] }

func (d *demo) n(base int) int { return base * d.opt.scale }

func (d *demo) started(label string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.starts == nil {
		d.starts = map[string][]time.Time{}
	}
	d.starts[label] = append(d.starts[label], time.Now())
}

func (d *demo) startsOf(label string) []time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.starts[label])
}

func work(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// register declares the demo's workflows on o (every instance declares
// the same ones, as every process of a service would).
func (d *demo) register(o *batuta.Orchestrator) error {
	noop := func(context.Context, *batuta.Input) (any, error) { return nil, nil }
	subject := func(ev batuta.Event) string { return ev.Subject }
	wfs := []*batuta.Workflow{
		{Name: "reminder", Tasks: []batuta.Task{{Name: "send", Run: noop}}},
		{Name: "report", Tasks: []batuta.Task{{Name: "build", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			var p int
			_, _ = fmt.Sscan(in.Event().Subject, &p)
			d.mu.Lock()
			d.order = append(d.order, p)
			d.mu.Unlock()
			return nil, work(ctx, 2*time.Millisecond)
		}}}},
		{
			Name:        "sync-customer",
			Concurrency: &batuta.Concurrency{Key: subject, Max: 2},
			Tasks: []batuta.Task{
				{Name: "fetch", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
					d.hw.enter("sync-customer:" + in.Event().Subject)
					return nil, work(ctx, 3*time.Millisecond)
				}},
				{Name: "store", Deps: []string{"fetch"}, When: batuta.AllDone, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
					defer d.hw.leave("sync-customer:" + in.Event().Subject)
					return nil, work(ctx, 2*time.Millisecond)
				}},
			},
		},
		{
			Name:        "deploy",
			Concurrency: &batuta.Concurrency{Key: subject, Max: 1, Strategy: batuta.ConcurrencyCancelInProgress},
			Tasks: []batuta.Task{{Name: "roll-out", Retry: batuta.RetryPolicy{MaxAttempts: 1}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				return nil, work(ctx, 300*time.Millisecond)
			}}},
		},
		{
			Name:        "nightly-import",
			Concurrency: &batuta.Concurrency{Max: 1, Strategy: batuta.ConcurrencyCancelNewest},
			Tasks: []batuta.Task{{Name: "import", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				return nil, work(ctx, 300*time.Millisecond)
			}}},
		},
		{Name: "summarise", Tasks: []batuta.Task{
			{Name: "prepare", Run: noop},
			{Name: "call-llm", Deps: []string{"prepare"}, Concurrency: &batuta.Concurrency{Max: 3},
				Run: func(ctx context.Context, in *batuta.Input) (any, error) {
					d.hw.enter("summarise/call-llm")
					defer d.hw.leave("summarise/call-llm")
					return nil, work(ctx, 5*time.Millisecond)
				}},
		}},
		{Name: "charge", Tasks: []batuta.Task{{Name: "call-psp",
			RateLimit: &batuta.RateLimit{Name: "payment-api", Limit: 20, Per: time.Second, Burst: 5},
			Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				d.started("payment-api")
				return nil, nil
			}}}},
		{
			Name:     "reindex",
			Debounce: &batuta.Debounce{Key: subject, Window: 200 * time.Millisecond, MaxWait: 2 * time.Second},
			Tasks: []batuta.Task{{Name: "index", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				d.started("reindex:" + in.Event().Subject)
				return nil, nil
			}}},
		},
		{Name: "email", Tasks: []batuta.Task{{Name: "send", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			d.started("email")
			return nil, nil
		}}}},
	}
	for _, wf := range wfs {
		if err := o.Register(wf); err != nil {
			return err
		}
	}
	return nil
}

func (d *demo) waitAll(ctx context.Context, ids []string) ([]*batuta.Run, error) {
	out := make([]*batuta.Run, len(ids))
	for i, id := range ids {
		r, err := d.any(i).Wait(ctx, id)
		if err != nil {
			return nil, err
		}
		out[i] = r
	}
	return out, nil
}

// delayed schedules runs over two seconds and reports how late they
// started (first attempt's start minus the asked start time).
func (d *demo) delayed(ctx context.Context) error {
	n := d.n(300)
	base := time.Now().Add(200 * time.Millisecond)
	ids := make([]string, n)
	ats := make([]time.Time, n)
	for i := range n {
		at := base.Add(time.Duration(i) * 2 * time.Second / time.Duration(n))
		ats[i] = at
		id, err := d.any(i).Submit(ctx, "reminder", batuta.Event{}, batuta.StartAt(at))
		if err != nil {
			return err
		}
		ids[i] = id
	}
	runs, err := d.waitAll(ctx, ids)
	if err != nil {
		return err
	}
	var late []time.Duration
	early, overdue := 0, 0
	for i, r := range runs {
		if r.StartAt.IsZero() {
			if !r.CreatedAt.Before(ats[i]) {
				// Its time had passed when it was submitted (a slow
				// machine): a StartAt in the past means now.
				overdue++
				continue
			}
			return fmt.Errorf("run %s shows no StartAt: this store does not implement delayed runs", r.ID)
		}
		l := r.Task("send").Attempts[0].StartedAt.Sub(r.StartAt)
		if l < 0 {
			early++
		}
		late = append(late, l)
	}
	fmt.Fprintf(d.out, "%d runs scheduled over 2s: lateness p50 %v, p99 %v, max %v; started early: %d\n",
		n, pct(late, 50), pct(late, 99), pct(late, 100), early)
	if overdue > 0 {
		fmt.Fprintf(d.out, "(%d runs were submitted after their start time had passed, so they started at once; not counted)\n", overdue)
	}
	return nil
}

// priorities pauses the workflow, queues runs of three priorities, resumes
// it and prints the order they started in.
func (d *demo) priorities(ctx context.Context) error {
	o := d.c.os[0]
	if err := o.Pause(ctx, "report"); err != nil {
		return err
	}
	var ids []string
	for i := range d.n(60) {
		p := []int{0, 5, 10}[i%3]
		id, err := d.any(i).Submit(ctx, "report", batuta.Event{Subject: fmt.Sprint(p)}, batuta.WithPriority(p))
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	if err := o.Resume(ctx, "report"); err != nil {
		return err
	}
	if _, err := d.waitAll(ctx, ids); err != nil {
		return err
	}
	d.mu.Lock()
	order := slices.Clone(d.order)
	d.mu.Unlock()
	third := len(order) / 3
	for _, part := range []struct {
		name string
		s    []int
	}{{"first third", order[:third]}, {"last third", order[len(order)-third:]}} {
		count := map[int]int{}
		for _, p := range part.s {
			count[p]++
		}
		fmt.Fprintf(d.out, "%s of the starts: priority 10: %d, 5: %d, 0: %d\n", part.name, count[10], count[5], count[0])
	}
	return nil
}

// fairness runs a noisy key with many runs and quiet keys with few under
// Max 2 per key, and prints the high-water mark per key and the quiet
// keys' wait.
func (d *demo) fairness(ctx context.Context) error {
	type sub struct{ key string }
	var subs []sub
	for range d.n(200) {
		subs = append(subs, sub{"noisy"})
	}
	for k := range 20 {
		for range 3 {
			subs = append(subs, sub{fmt.Sprintf("quiet-%02d", k)})
		}
	}
	var ids []string
	for i, s := range subs {
		id, err := d.any(i).Submit(ctx, "sync-customer", batuta.Event{Subject: s.key})
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	runs, err := d.waitAll(ctx, ids)
	if err != nil {
		return err
	}
	var quiet, noisy []time.Duration
	for _, r := range runs {
		wait := r.Task("fetch").Attempts[0].StartedAt.Sub(r.CreatedAt)
		if r.Event.Subject == "noisy" {
			noisy = append(noisy, wait)
		} else {
			quiet = append(quiet, wait)
		}
	}
	marks := d.hw.max("sync-customer:")
	worst := 0
	for _, v := range marks {
		worst = max(worst, v)
	}
	fmt.Fprintf(d.out, "Max 2 per key over %d keys: highest high-water mark %d (noisy %d, quiet-00 %d)\n",
		len(marks), worst, marks["sync-customer:noisy"], marks["sync-customer:quiet-00"])
	fmt.Fprintf(d.out, "wait to start: %d noisy-key runs p50 %v p99 %v; %d quiet-key runs p50 %v p99 %v\n",
		len(noisy), pct(noisy, 50), pct(noisy, 99), len(quiet), pct(quiet, 50), pct(quiet, 99))
	return nil
}

// cancelStrategies shows CancelInProgress (a new deploy of a branch
// cancels the running one) and CancelNewest (an import while one runs is
// refused).
func (d *demo) cancelStrategies(ctx context.Context) error {
	var ids []string
	for i := range 3 {
		id, err := d.any(i).Submit(ctx, "deploy", batuta.Event{Subject: "main", ID: fmt.Sprintf("deploy-main-%d", i)})
		if err != nil {
			return err
		}
		ids = append(ids, id)
		if err := work(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	runs, err := d.waitAll(ctx, ids)
	if err != nil {
		return err
	}
	var states []string
	for _, r := range runs {
		states = append(states, string(r.State))
	}
	fmt.Fprintf(d.out, "deploy (CancelInProgress, Max 1): three pushes to one branch end %s\n", strings.Join(states, ", "))
	ids = ids[:0]
	for i := range 3 {
		id, err := d.any(i).Submit(ctx, "nightly-import", batuta.Event{ID: fmt.Sprintf("import-%d", i)})
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	if runs, err = d.waitAll(ctx, ids); err != nil {
		return err
	}
	states = states[:0]
	for _, r := range runs {
		states = append(states, string(r.State))
	}
	fmt.Fprintf(d.out, "nightly-import (CancelNewest, Max 1): three submits end %s (%s)\n", strings.Join(states, ", "), runs[len(runs)-1].Error)
	return nil
}

// taskConcurrency runs many runs whose call-llm task is limited to 3 at
// once, and prints the high-water mark.
func (d *demo) taskConcurrency(ctx context.Context) error {
	evs := make([]batuta.Event, d.n(100))
	ids, err := d.c.os[0].SubmitMany(ctx, "summarise", evs)
	if err != nil {
		return err
	}
	if _, err := d.waitAll(ctx, ids); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "%d runs (SubmitMany, one round trip): call-llm (Max 3) high-water mark %d\n",
		len(ids), d.hw.max("summarise/call-llm")["summarise/call-llm"])
	return nil
}

// rateLimit starts runs of a task limited to 20 per second (burst 5) and
// prints the most starts seen in any one-second window and the mean rate.
func (d *demo) rateLimit(ctx context.Context) error {
	n := d.n(80)
	evs := make([]batuta.Event, n)
	ids, err := d.c.os[0].SubmitMany(ctx, "charge", evs)
	if err != nil {
		return err
	}
	if _, err := d.waitAll(ctx, ids); err != nil {
		return err
	}
	starts := d.startsOf("payment-api")
	sort.Slice(starts, func(i, j int) bool { return starts[i].Before(starts[j]) })
	most := 0
	for i := range starts {
		c := 0
		for j := i; j < len(starts) && starts[j].Sub(starts[i]) < time.Second; j++ {
			c++
		}
		most = max(most, c)
	}
	span := starts[len(starts)-1].Sub(starts[0])
	fmt.Fprintf(d.out, "payment-api (20/s, burst 5): %d starts in %v, %.1f/s after the burst; most in any 1s window: %d (24 slots at most are granted)\n",
		len(starts), span.Round(time.Millisecond), float64(len(starts)-5)/span.Seconds(), most)
	return nil
}

// debounce sends bursts of events for three keys and prints how many runs
// each key got and which event they carried.
func (d *demo) debounce(ctx context.Context) error {
	ids := map[string]bool{}
	for i := range d.n(30) {
		key := []string{"products", "users", "orders"}[i%3]
		id, err := d.any(i).Submit(ctx, "reindex", batuta.Event{ID: fmt.Sprintf("change-%d", i), Subject: key})
		if err != nil {
			return err
		}
		ids[id] = true
		if err := work(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
	var list []string
	for id := range ids {
		list = append(list, id)
	}
	runs, err := d.waitAll(ctx, list)
	if err != nil {
		return err
	}
	var carried []string
	for _, r := range runs {
		carried = append(carried, r.Event.Subject+"<-"+r.Event.ID)
	}
	sort.Strings(carried)
	fmt.Fprintf(d.out, "%d events over 3 keys made %d runs, each with its key's last event: %s\n",
		d.n(30), len(runs), strings.Join(carried, " "))
	return nil
}

// pause pauses the email workflow, submits runs, shows none started, then
// resumes it.
func (d *demo) pause(ctx context.Context) error {
	o := d.c.os[0]
	if err := o.Pause(ctx, "email"); err != nil {
		return err
	}
	paused, err := o.Paused(ctx)
	if err != nil {
		return err
	}
	var ids []string
	for i := range d.n(10) {
		id, err := d.any(i).Submit(ctx, "email", batuta.Event{})
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	if err := work(ctx, 500*time.Millisecond); err != nil { // a demo, not a test: let the instances poll
		return err
	}
	fmt.Fprintf(d.out, "paused %v: %d runs accepted, %d started in 500ms\n", paused, len(ids), len(d.startsOf("email")))
	resumed := time.Now()
	if err := o.Resume(ctx, "email"); err != nil {
		return err
	}
	if _, err := d.waitAll(ctx, ids); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "resumed: all %d finished %v after Resume\n", len(ids), time.Since(resumed).Round(time.Millisecond))
	return nil
}

// pct returns the p-th percentile of ds (p = 100: the max).
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s) - 1) * p / 100
	return s[i].Round(10 * time.Microsecond)
}

// highWater tracks how many of something are in progress at once, per key.
type highWater struct {
	mu   sync.Mutex
	cur  map[string]int
	high map[string]int
}

func newHighWater() *highWater { return &highWater{cur: map[string]int{}, high: map[string]int{}} }

func (h *highWater) enter(k string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cur[k]++
	h.high[k] = max(h.high[k], h.cur[k])
}

func (h *highWater) leave(k string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cur[k]--
}

// max returns the high-water marks of the keys starting with prefix.
func (h *highWater) max(prefix string) map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]int{}
	for k, v := range h.high {
		if strings.HasPrefix(k, prefix) {
			out[k] = v
		}
	}
	return out
}
