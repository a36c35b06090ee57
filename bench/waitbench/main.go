// Command waitbench measures the cost of durable waits (issue 13) on the
// in-memory store and on PostgreSQL: what runs waiting on timers and
// signals hold, how close to their time timers fire, and how fast a signal
// starts the next task.
//
// The waits are put in place through the Store contract (a claim of the
// waiting task completed with OutcomeWait, as the orchestrator does for a
// timer or a signal task), and woken through it (the due time passing, or
// Store.SendSignal, which Orchestrator.Signal calls); what happens next is
// the real orchestrator: its workers claim the woken task (or the task
// after the signal) and run its body, which records when it started.
//
// Scenarios (-scenarios, comma-separated):
//
//	waiting  -n runs waiting at once, half on a timer an hour away, half
//	         on a signal: memory per waiting run (memory store:
//	         runtime.MemStats HeapAlloc delta after GC / n), rows and
//	         bytes per run (PostgreSQL: count(*) and
//	         pg_total_relation_size of every table of the store's schema,
//	         indexes and TOAST included), and the CPU an orchestrator
//	         (default Config, the workflow registered) spends over -idle
//	         while they wait (getrusage of this process; with PostgreSQL
//	         also the server backends of its pool, from /proc).
//	timers   -timers single-task runs whose timers come due within one second, T to
//	         T+1s (T a few seconds after they are in place); an
//	         orchestrator started before T runs them: lateness (body
//	         start minus due time) p50/p99/max, and the spread from T to
//	         the last firing.
//	signals  -signals runs waiting for a signal, signaled one at a time:
//	         latency from SendSignal to the start of the task after the
//	         wait, p50/p99.
//
// Each scenario runs -rounds times on a fresh store (a new schema for
// PostgreSQL); the medians are printed last.
//
// Example:
//
//	go run ./waitbench -store memory -rounds 3
//	go run ./waitbench -store postgres -rounds 3
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
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

const schema = "waitbench"

type options struct {
	store, dsn              string
	n, timers, signals, rds int
	viaStore                bool // signals: call Store.SendSignal, not Orchestrator.Signal
	idle                    time.Duration
	lead                    time.Duration
	cpuprofile              string
	workers                 int
}

func main() {
	var o options
	flag.StringVar(&o.store, "store", "memory", "memory or postgres")
	flag.StringVar(&o.dsn, "dsn", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL connection string")
	flag.IntVar(&o.n, "n", 100000, "waiting: runs waiting at once")
	flag.IntVar(&o.timers, "timers", 10000, "timers: timers due within one second")
	flag.IntVar(&o.signals, "signals", 1000, "signals: signals sent, one at a time")
	flag.BoolVar(&o.viaStore, "signal-store", false, "signals: send with Store.SendSignal (as the previous version of this bench did) instead of Orchestrator.Signal, which lets the store claim the next task for a free worker")
	flag.IntVar(&o.rds, "rounds", 3, "rounds of each scenario")
	flag.DurationVar(&o.idle, "idle", 10*time.Second, "waiting: how long the CPU is measured")
	flag.DurationVar(&o.lead, "lead", 3*time.Second, "timers: T is this long after the timers are in place")
	flag.IntVar(&o.workers, "workers", 0, "the orchestrator's Config.Workers (and so ClaimBatch); 0: the default, max(16, 4*GOMAXPROCS)")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "waiting: write a CPU profile of the idle window to this file")
	scenarios := flag.String("scenarios", "waiting,timers,signals", "scenarios to run")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	b := &bench{o: o}
	if o.store == "postgres" {
		cfg, err := pgxpool.ParseConfig(o.dsn)
		if err == nil {
			cfg.MaxConns = 16
			b.pool, err = pgxpool.NewWithConfig(ctx, cfg)
		}
		if err == nil {
			err = b.pool.Ping(ctx)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "waitbench:", err)
			os.Exit(1)
		}
		defer b.pool.Close()
		defer func() { _, _ = b.pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE") }()
	} else if o.store != "memory" {
		fmt.Fprintln(os.Stderr, "waitbench: -store must be memory or postgres")
		os.Exit(2)
	}
	fmt.Printf("waitbench: store %s, GOMAXPROCS %d, %d rounds, Workers %d (0: default)\n", o.store, runtime.GOMAXPROCS(0), o.rds, o.workers)
	results := map[string][]float64{}
	var order []string
	record := func(k string, v float64) {
		if _, ok := results[k]; !ok {
			order = append(order, k)
		}
		results[k] = append(results[k], v)
	}
	for r := 1; r <= o.rds; r++ {
		for _, sc := range strings.Split(*scenarios, ",") {
			var err error
			switch sc = strings.TrimSpace(sc); sc {
			case "waiting":
				err = b.waiting(ctx, r, record)
			case "timers":
				err = b.timerRound(ctx, r, record)
			case "signals":
				err = b.signalRound(ctx, r, record)
			default:
				err = fmt.Errorf("unknown scenario %q", sc)
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "waitbench:", sc+":", err)
				os.Exit(1)
			}
		}
	}
	fmt.Printf("\nmedians of %d rounds (store %s):\n", o.rds, o.store)
	for _, k := range order {
		fmt.Printf("  %-40s %s\n", k, format(k, median(results[k])))
	}
}

type bench struct {
	o    options
	pool *pgxpool.Pool
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fresh returns an empty store.
func (b *bench) fresh(ctx context.Context) (batuta.Store, error) {
	if b.pool == nil {
		return batuta.NewMemoryStore(batuta.MemoryStoreConfig{}), nil
	}
	if _, err := b.pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
		return nil, err
	}
	b.pool.Reset()
	return batutapg.New(ctx, b.pool, batutapg.Config{Schema: schema, Logger: quiet()})
}

// The workflow every scenario uses: "wait" (a timer, or a signal "go"),
// then "next". The timers scenario's runs have "wait" alone (the firing is
// what it measures).
const wf = "waitbench"

func specs(sig, alone bool) []batuta.TaskSpec {
	s := []batuta.TaskSpec{{Name: "wait"}, {Name: "next", Deps: []int{0}}}
	if sig {
		s[0].Signal = "go"
	}
	if alone {
		s = s[:1]
	}
	return s
}

// startWaits creates runs (event data: the timer's due time in Unix
// nanoseconds; zero for a signal) and hands their "wait" task back with
// OutcomeWait, as the orchestrator does when a timer or signal task first
// runs. It returns the run IDs in creation order.
func startWaits(ctx context.Context, st batuta.Store, due []time.Time, alone bool) ([]string, error) {
	now := time.Now()
	ids := make([]string, len(due))
	for lo := 0; lo < len(due); lo += 1000 {
		hi := min(lo+1000, len(due))
		nrs := make([]batuta.NewRun, 0, hi-lo)
		for i := lo; i < hi; i++ {
			ids[i] = uuid.Must(uuid.NewV7()).String()
			var ns int64
			if !due[i].IsZero() {
				ns = due[i].UnixNano()
			}
			nrs = append(nrs, batuta.NewRun{ID: ids[i], Workflow: wf, CreatedAt: now, Tasks: specs(due[i].IsZero(), alone),
				Event: batuta.Event{ID: ids[i], Time: now, Data: []byte(strconv.FormatInt(ns, 10))}})
		}
		if _, err := st.CreateRuns(ctx, nrs); err != nil {
			return nil, err
		}
	}
	dueOf := make(map[string]time.Time, len(due))
	for i, id := range ids {
		dueOf[id] = due[i]
	}
	waited := 0
	for waited < len(due) {
		now := time.Now()
		cs, err := st.ClaimTasks(ctx, batuta.ClaimParams{Owner: "waitbench-setup", Workflows: []string{wf}, Limit: 1000, Now: now, LeaseUntil: now.Add(time.Hour)})
		if err != nil {
			return nil, err
		}
		if len(cs) == 0 {
			return nil, fmt.Errorf("only %d of %d waits in place: nothing left to claim", waited, len(due))
		}
		comps := make([]batuta.Completion, len(cs))
		for i, c := range cs {
			d := dueOf[c.RunID]
			what := "timer"
			if d.IsZero() {
				what = "signal go"
			}
			comps[i] = batuta.Completion{ClaimRef: c.Ref(), Attempt: c.Attempt, Outcome: batuta.OutcomeWait, RetryAt: d,
				WaitFor: what, StartedAt: now, FinishedAt: now}
		}
		res, err := st.CompleteTasks(ctx, comps)
		if err != nil {
			return nil, err
		}
		for _, r := range res {
			if r.Err != nil {
				return nil, r.Err
			}
		}
		waited += len(cs)
	}
	return ids, nil
}

// orchestrator returns an orchestrator running on st, with the workflow
// registered, until ctx ends or stop is called: onWait runs as the body of
// a woken "wait" task (a timer fired), onNext as the body of "next".
func orchestrator(ctx context.Context, st batuta.Store, workers int, onWait, onNext func(*batuta.Input, time.Time)) (stop func() error, err error) {
	_, stop, err = runOrchestrator(ctx, st, workers, onWait, onNext)
	return stop, err
}

// runOrchestrator is orchestrator, returning the orchestrator too.
func runOrchestrator(ctx context.Context, st batuta.Store, workers int, onWait, onNext func(*batuta.Input, time.Time)) (*batuta.Orchestrator, func() error, error) {
	o, err := batuta.New(batuta.Config{Store: st, Logger: quiet(), MaxInFlightRuns: -1, Workers: workers})
	if err != nil {
		return nil, nil, err
	}
	body := func(f func(*batuta.Input, time.Time)) batuta.TaskFunc {
		return func(_ context.Context, in *batuta.Input) (any, error) {
			if f != nil {
				f(in, time.Now())
			}
			return nil, nil
		}
	}
	err = o.Register(&batuta.Workflow{Name: wf, Tasks: []batuta.Task{
		{Name: "wait", Run: body(onWait)},
		{Name: "next", Deps: []string{"wait"}, Run: body(onNext)},
	}})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	return o, func() error { cancel(); return <-done }, nil
}

// waiting: n runs waiting at once; what they hold, and the CPU spent
// while they wait.
func (b *bench) waiting(ctx context.Context, round int, record func(string, float64)) error {
	n := b.o.n
	st, err := b.fresh(ctx)
	if err != nil {
		return err
	}
	due := make([]time.Time, n)
	far := time.Now().Add(time.Hour)
	for i := 0; i < n; i += 2 {
		due[i] = far // even: timers; odd: signals
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	t0 := time.Now()
	if _, err := startWaits(ctx, st, due, false); err != nil {
		return err
	}
	setup := time.Since(t0)
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	fmt.Printf("\nround %d waiting: %d runs waiting (%d on timers, %d on signals), put in place in %s\n", round, n, (n+1)/2, n/2, setup.Round(time.Millisecond))
	if b.pool == nil {
		per := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
		fmt.Printf("  memory store: %.0f bytes of heap per waiting run (HeapAlloc after GC, %d runs)\n", per, n)
		record("waiting: heap bytes per run (memory)", per)
	} else {
		rows, bytes, detail, err := b.tableSizes(ctx)
		if err != nil {
			return err
		}
		fmt.Printf("  postgres: %.2f rows and %.0f bytes (tables + indexes + TOAST) per waiting run; %s\n", float64(rows)/float64(n), float64(bytes)/float64(n), detail)
		record("waiting: rows per run (postgres)", float64(rows)/float64(n))
		record("waiting: bytes per run (postgres)", float64(bytes)/float64(n))
	}
	stop, err := orchestrator(ctx, st, b.o.workers, nil, nil)
	if err != nil {
		return err
	}
	// Let it start (ask the store for the next due time, listen), and
	// return the setup's garbage to the OS now (else the runtime's
	// scavenger does it during the window: CPU that is not the wait's),
	// then measure.
	time.Sleep(time.Second)
	debug.FreeOSMemory()
	var pids []int
	if b.pool != nil {
		pids = backendPIDs(ctx, b.pool)
	}
	if b.o.cpuprofile != "" {
		f, err := os.Create(b.o.cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	self0, srv0 := selfCPU(), serverCPU(pids)
	w0 := time.Now()
	time.Sleep(b.o.idle)
	wall := time.Since(w0)
	self, srv := selfCPU()-self0, serverCPU(pids)-srv0
	if b.o.cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	if err := stop(); err != nil {
		return err
	}
	fmt.Printf("  CPU while they wait, over %s: this process %s (%.2f%% of one core)", wall.Round(time.Millisecond), self, 100*self.Seconds()/wall.Seconds())
	record("waiting: process CPU % of a core", 100*self.Seconds()/wall.Seconds())
	if b.pool != nil {
		fmt.Printf(", PostgreSQL backends of its pool %s (%d backends)", srv, len(pids))
		record("waiting: server CPU % of a core", 100*srv.Seconds()/wall.Seconds())
	}
	fmt.Println()
	runtime.KeepAlive(st)
	return nil
}

// tableSizes counts the rows and bytes of every table of the schema.
func (b *bench) tableSizes(ctx context.Context) (rows, bytes int64, detail string, err error) {
	q, err := b.pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename`, schema)
	if err != nil {
		return 0, 0, "", err
	}
	var tables []string
	for q.Next() {
		var t string
		if err := q.Scan(&t); err != nil {
			q.Close()
			return 0, 0, "", err
		}
		tables = append(tables, t)
	}
	q.Close()
	if err := q.Err(); err != nil {
		return 0, 0, "", err
	}
	var parts []string
	for _, t := range tables {
		var r, sz int64
		qt := schema + `."` + t + `"`
		if err := b.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+qt+`), pg_total_relation_size('`+qt+`')`).Scan(&r, &sz); err != nil {
			return 0, 0, "", err
		}
		if r == 0 {
			continue
		}
		rows += r
		bytes += sz
		parts = append(parts, fmt.Sprintf("%s %d rows %s", t, r, mib(sz)))
	}
	return rows, bytes, strings.Join(parts, ", "), nil
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// timerRound: timers due within one second.
func (b *bench) timerRound(ctx context.Context, round int, record func(string, float64)) error {
	n := b.o.timers
	st, err := b.fresh(ctx)
	if err != nil {
		return err
	}
	// The timers' second starts lead after they are in place; put them in
	// place with a guess, and start over later if the setup took longer.
	est := 2*time.Second + time.Duration(n)*time.Millisecond/2
	T := time.Now().Add(est + b.o.lead)
	due := make([]time.Time, n)
	for i := range due {
		due[i] = T.Add(time.Duration(i) * time.Second / time.Duration(n))
	}
	t0 := time.Now()
	if _, err := startWaits(ctx, st, due, true); err != nil {
		return err
	}
	if time.Until(T) < time.Second {
		return fmt.Errorf("putting %d timers in place took %s, past the planned start; raise -lead", n, time.Since(t0))
	}
	var mu sync.Mutex
	late := make([]time.Duration, 0, n)
	fired := make([]time.Duration, 0, n)
	var last time.Time
	all := make(chan struct{})
	stop, err := orchestrator(ctx, st, b.o.workers, func(in *batuta.Input, at time.Time) {
		ns, _ := strconv.ParseInt(string(in.Event().Data), 10, 64)
		mu.Lock()
		defer mu.Unlock()
		late = append(late, at.Sub(time.Unix(0, ns)))
		fired = append(fired, at.Sub(T))
		if at.After(last) {
			last = at
		}
		if len(late) == n {
			close(all)
		}
	}, nil)
	if err != nil {
		return err
	}
	defer func() { _ = stop() }()
	wait := time.NewTimer(time.Until(T) + time.Minute)
	defer wait.Stop()
	select {
	case <-all:
	case <-wait.C:
		mu.Lock()
		got := len(late)
		mu.Unlock()
		return fmt.Errorf("only %d of %d timers fired within a minute of their second", got, n)
	case <-ctx.Done():
		return ctx.Err()
	}
	mu.Lock()
	ls := slices.Clone(late)
	span := last.Sub(T)
	mu.Unlock()
	if os.Getenv("WAITBENCH_DEBUG") != "" {
		var hist [30]int
		for _, f := range fired {
			hist[min(max(int(f/(100*time.Millisecond)), 0), len(hist)-1)]++
		}
		fmt.Println("  firings per 100 ms after T:", hist)
	}
	early := 0
	for _, l := range ls {
		if l < 0 {
			early++
		}
	}
	fmt.Printf("\nround %d timers: %d timers due from T to T+1s: lateness p50 %s p99 %s max %s; last fired T+%s; early: %d\n",
		round, n, pct(ls, .5), pct(ls, .99), pct(ls, 1), span.Round(time.Millisecond), early)
	record("timers: lateness p50 ms", ms(pct(ls, .5)))
	record("timers: lateness p99 ms", ms(pct(ls, .99)))
	record("timers: lateness max ms", ms(pct(ls, 1)))
	record("timers: last fired, ms after T", ms(span))
	if early > 0 {
		return fmt.Errorf("%d timers fired before their time", early)
	}
	return nil
}

// signalRound: signals sent one at a time; latency to the next task.
func (b *bench) signalRound(ctx context.Context, round int, record func(string, float64)) error {
	n := b.o.signals
	st, err := b.fresh(ctx)
	if err != nil {
		return err
	}
	ids, err := startWaits(ctx, st, make([]time.Time, n), false)
	if err != nil {
		return err
	}
	started := make(chan time.Time, 1)
	o, stop, err := runOrchestrator(ctx, st, b.o.workers, nil, func(_ *batuta.Input, at time.Time) { started <- at })
	if err != nil {
		return err
	}
	defer func() { _ = stop() }()
	time.Sleep(500 * time.Millisecond) // the orchestrator settles (listening)
	lat := make([]time.Duration, 0, n)
	send := make([]time.Duration, 0, n)
	for _, id := range ids {
		t0 := time.Now()
		if b.o.viaStore {
			res, err := st.SendSignal(ctx, batuta.SignalSend{RunID: id, Name: "go", Data: sigData(st), SentAt: t0})
			if err != nil {
				return err
			}
			if !res.Delivered {
				return fmt.Errorf("signal to run %s was buffered, not delivered: its task was not waiting", id)
			}
		} else if err := o.Signal(ctx, id, "go", map[string]any{"ok": true}); err != nil {
			return err
		}
		send = append(send, time.Since(t0))
		select {
		case at := <-started:
			lat = append(lat, at.Sub(t0))
		case <-time.After(30 * time.Second):
			return errors.New("the next task did not start within 30s of its signal")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	fmt.Printf("\nround %d signals: %d signals, SendSignal to the next task's start: p50 %s p99 %s max %s (the SendSignal call alone: p50 %s p99 %s)\n",
		round, n, pct(lat, .5), pct(lat, .99), pct(lat, 1), pct(send, .5), pct(send, .99))
	record("signals: SendSignal call p50 ms", ms(pct(send, .5)))
	record("signals: to next task p50 ms", ms(pct(lat, .5)))
	record("signals: to next task p99 ms", ms(pct(lat, .99)))
	return nil
}

// sigData is a signal's payload as the store takes it.
func sigData(st batuta.Store) any {
	if st.Durable() {
		return json.RawMessage(`{"ok":true}`)
	}
	return map[string]bool{"ok": true}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func format(k string, v float64) string {
	if strings.Contains(k, "ms") {
		return fmt.Sprintf("%.3f ms", v)
	}
	if strings.Contains(k, "%") {
		return fmt.Sprintf("%.3f%%", v)
	}
	if strings.Contains(k, "rows") {
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// backendPIDs holds every connection of the pool at once (opening the
// missing ones) and returns their server process IDs.
func backendPIDs(ctx context.Context, p *pgxpool.Pool) []int {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second) // the store's listener may hold one
	defer cancel()
	var pids []int
	var held []*pgxpool.Conn
	for i := int32(0); i < p.Config().MaxConns; i++ {
		c, err := p.Acquire(ctx)
		if err != nil {
			break
		}
		held = append(held, c)
		pids = append(pids, int(c.Conn().PgConn().PID()))
	}
	for _, c := range held {
		c.Release()
	}
	return pids
}

// serverCPU sums the CPU time of the given processes (/proc; only when the
// server runs on this machine).
func serverCPU(pids []int) time.Duration {
	var t time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		stt, _ := strconv.ParseInt(f[12], 10, 64)
		t += time.Duration(ut+stt) * 10 * time.Millisecond // USER_HZ = 100
	}
	return t
}
