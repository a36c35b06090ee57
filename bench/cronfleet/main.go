// Command cronfleet measures many cron schedules bound in several processes
// on one PostgreSQL store: every instance binds every schedule (as an
// operator deploys the same binary N times), the store deduplicates each
// tick, and one instance runs it.
//
// For each scenario and overlap policy it creates a fresh database, starts
// the instances as child processes of itself, lets the schedules fire for
// -duration, and prints:
//
//   - exactness: ticks in the window that ran once, never, or more than once;
//   - fire skew (first task start − tick) percentiles, split into tick → run
//     created (as seen by the instance whose CreateRun made it) and run
//     created → task start;
//   - transactions per tick per schedule: the database's xact_commit delta
//     (pg_stat_database) over the window, divided by the ticks in it.
//
// Scenarios: "200x5s" (200 schedules "*/5 * * * * *") and "1000x1m" (1,000
// schedules "0 * * * * *"; give it -duration 3m or more), and "1000x10s", the
// same burst every 10 s for a quicker look.
//
//	cd bench && go run ./cronfleet -scenarios 200x5s -duration 60s
//	cd bench && go run ./cronfleet -scenarios 1000x1m -duration 3m
//
// CRONFLEET_DEBUG=1 prints each instance's store calls at exit;
// CRONFLEET_LOG=debug|info|warn sets the instances' log level (default error);
// CRONFLEET_TRACE=1 prints each ClaimTasks call of each instance (start,
// duration, limit, tasks claimed) to stderr;
// CRONFLEET_CPUPROFILE=<dir> writes each instance's CPU profile there;
// CRONFLEET_TICKS=1 prints each tick's skew percentiles to stderr;
// CRONFLEET_MAXFLUSHES and CRONFLEET_COMPLETIONFLUSHES set the instances'
// batutapg.Config.MaxFlushes and MaxCompletionFlushes.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/batuta-dev/batuta/bench/internal/stats"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

type scenario struct {
	name      string
	schedules int
	spec      string
	period    time.Duration
}

var scenarios = map[string]scenario{
	"200x5s":  {"200x5s", 200, "*/5 * * * * *", 5 * time.Second},
	"1000x1m": {"1000x1m", 1000, "0 * * * * *", time.Minute},
	// The same burst as 1000x1m every 10 s: more ticks per minute of
	// measurement, for a quicker look (the database keeps more runs).
	"1000x10s": {"1000x10s", 1000, "*/10 * * * * *", 10 * time.Second},
}

func main() {
	adminDSN := flag.String("dsn", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL connection string of an existing database (the bench creates its own next to it)")
	db := flag.String("db", "cronfleet", "name of the database the bench (re)creates for each run")
	scen := flag.String("scenarios", "200x5s", "comma-separated scenarios: 200x5s, 1000x1m, 1000x10s")
	overlaps := flag.String("overlap", "skip,allow", "comma-separated overlap policies: skip (the default policy), allow")
	duration := flag.Duration("duration", 60*time.Second, "measurement window per scenario and policy (1000x1m needs >= 3m)")
	instances := flag.Int("instances", 3, "orchestrator processes")
	conns := flag.Int("conns", 0, "pool size of each instance (0: pgxpool's default)")
	workers := flag.Int("workers", 0, "batuta.Config.Workers of each instance (0: the default)")
	// Child mode.
	child := flag.Bool("child", false, "internal: run one instance")
	node := flag.String("node", "", "internal: instance name")
	flag.Parse()
	if *child {
		if err := runChild(*adminDSN, *scen, *overlaps, *node, *conns, *workers); err != nil {
			log.Fatal(err)
		}
		return
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	fmt.Printf("cronfleet: %d instances, pool %d conns each (0 = pgxpool default), %d workers each (0 = default), window %s\n\n", *instances, *conns, *workers, *duration)
	fmt.Println("| scenario | overlap | ticks | exactly once | missing | duplicate | skew p50 | p99 | max | tick→fired p50 | p99 | tick→created p50 | p99 | created→start p50 | p99 | xact/tick/schedule |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, sn := range strings.Split(*scen, ",") {
		sc, ok := scenarios[strings.TrimSpace(sn)]
		if !ok {
			log.Fatalf("unknown scenario %q", sn)
		}
		for _, ov := range strings.Split(*overlaps, ",") {
			ov = strings.TrimSpace(ov)
			r, err := runScenario(ctx, *adminDSN, *db, sc, ov, *duration, *instances, *conns, *workers)
			if err != nil {
				log.Fatalf("%s/%s: %v", sc.name, ov, err)
			}
			fmt.Println(r)
		}
	}
}

// record is one line a child prints: a task start or a run creation.
type record struct {
	kind  byte // 'S' task start, 'C' run created (by this instance), 'F' tick fired (CreateRun called; the first of any instance counts)
	sched string
	tick  time.Time
	at    time.Time
}

func dbDSN(admin, db string) (string, error) {
	cfg, err := pgx.ParseConfig(admin)
	if err != nil {
		return "", err
	}
	// Rebuild the DSN with another database name.
	u := fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, db)
	if cfg.Password != "" {
		u = fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Password, cfg.Host, cfg.Port, db)
	}
	return u, nil
}

func xactCommit(ctx context.Context, c *pgx.Conn, db string) (int64, error) {
	var n int64
	err := c.QueryRow(ctx, "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", db).Scan(&n)
	return n, err
}

func runScenario(ctx context.Context, adminDSN, db string, sc scenario, overlap string, window time.Duration, instances, conns, workers int) (string, error) {
	admin, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return "", err
	}
	defer admin.Close(context.WithoutCancel(ctx))
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{db}.Sanitize()+" WITH (FORCE)"); err != nil {
		return "", err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
		return "", err
	}
	dsn, err := dbDSN(adminDSN, db)
	if err != nil {
		return "", err
	}
	// Migrate once, so the instances start together on a ready schema.
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return "", err
	}
	st, err := batutapg.New(ctx, pool, batutapg.Config{Logger: slog.New(slog.DiscardHandler), DisableListen: true, LivenessInterval: -1})
	if err != nil {
		pool.Close()
		return "", err
	}
	_ = st.Close()
	pool.Close()

	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	var (
		mu   sync.Mutex
		recs []record
		wg   sync.WaitGroup
	)
	ready := make(chan string, instances)
	var cmds []*exec.Cmd
	var stdins []io.Closer
	for i := 0; i < instances; i++ {
		cmd := exec.Command(exe, "-child", "-dsn", dsn, "-scenarios", sc.name, "-overlap", overlap,
			"-node", fmt.Sprintf("n%d", i), "-conns", strconv.Itoa(conns), "-workers", strconv.Itoa(workers))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return "", err
		}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return "", err
		}
		stdins = append(stdins, stdin) // closing it (or the bench dying) stops the child
		if err := cmd.Start(); err != nil {
			return "", err
		}
		cmds = append(cmds, cmd)
		wg.Add(1)
		go func() {
			defer wg.Done()
			readChild(out, ready, &mu, &recs)
		}()
	}
	stop := func() {
		for _, c := range stdins {
			_ = c.Close()
		}
		wg.Wait()
		for _, c := range cmds {
			_ = c.Wait()
		}
	}
	for i := 0; i < instances; i++ {
		select {
		case <-ready:
		case <-time.After(60 * time.Second):
			stop()
			return "", errors.New("instances did not start within 60s")
		case <-ctx.Done():
			stop()
			return "", ctx.Err()
		}
	}
	// The window starts at the first tick at least one period after all
	// instances are up (the first tick after start-up is warm-up).
	now := time.Now()
	t0 := now.Truncate(sc.period).Add(2 * sc.period)
	t1 := t0.Add(window)
	// xact_commit is sampled half a period before t0 and t1: between ticks,
	// when the stats of the previous tick's transactions have been flushed.
	sleepUntil(ctx, t0.Add(-sc.period/2))
	x0, err := xactCommit(ctx, admin, db)
	if err != nil {
		stop()
		return "", err
	}
	sleepUntil(ctx, t1.Add(-sc.period/2))
	x1, err := xactCommit(ctx, admin, db)
	if err != nil {
		stop()
		return "", err
	}
	stop()
	if ctx.Err() != nil {
		return "", ctx.Err()
	}

	type key struct {
		sched string
		tick  int64
	}
	var toFire []time.Duration
	starts := map[key]int{}
	first := map[key]time.Time{}
	created := map[key]time.Time{}
	fired := map[key]time.Time{}
	var ticks []int64
	for t := t0; t.Before(t1.Add(-sc.period / 2)); t = t.Add(sc.period) {
		ticks = append(ticks, t.UnixNano())
	}
	inWindow := func(t time.Time) bool { return !t.Before(t0) && t.Before(t1.Add(-sc.period/2)) }
	for _, r := range recs {
		if !inWindow(r.tick) {
			continue
		}
		k := key{r.sched, r.tick.UnixNano()}
		switch r.kind {
		case 'S':
			starts[k]++
			if f, ok := first[k]; !ok || r.at.Before(f) {
				first[k] = r.at
			}
		case 'C':
			if c, ok := created[k]; !ok || r.at.Before(c) {
				created[k] = r.at
			}
		case 'F':
			// The first instance to fire the tick (the others may fire
			// it later, as a fallback).
			if f, ok := fired[k]; !ok || r.at.Before(f) {
				fired[k] = r.at
			}
		}
	}
	var once, missing, dup int
	var skew, toCreated, toStart []time.Duration
	perTick := map[int64][]time.Duration{}
	for i := 0; i < sc.schedules; i++ {
		name := schedName(i)
		for _, t := range ticks {
			k := key{name, t}
			switch n := starts[k]; {
			case n == 0:
				missing++
				continue
			case n == 1:
				once++
			default:
				dup++
			}
			tick := time.Unix(0, t)
			skew = append(skew, first[k].Sub(tick))
			perTick[t] = append(perTick[t], first[k].Sub(tick))
			if f, ok := fired[k]; ok {
				toFire = append(toFire, f.Sub(tick))
			}
			if c, ok := created[k]; ok {
				toCreated = append(toCreated, c.Sub(tick))
				toStart = append(toStart, first[k].Sub(c))
			}
		}
	}
	if os.Getenv("CRONFLEET_TICKS") != "" {
		for _, t := range ticks {
			d := perTick[t]
			fmt.Fprintf(os.Stderr, "TICK %s %s: %d started, skew p50 %.1f p99 %.1f max %.1f ms\n", sc.name, time.Unix(0, t).Format("15:04:05"), len(d),
				stats.Millis(stats.Percentile(d, 50)), stats.Millis(stats.Percentile(d, 99)), stats.Millis(stats.Percentile(d, 100)))
		}
	}
	total := sc.schedules * len(ticks)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", stats.Millis(d)) }
	xpt := float64(x1-x0) / float64(max(total, 1))
	return fmt.Sprintf("| %s | %s | %d | %d | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f |",
		sc.name, overlap, total, once, missing, dup,
		ms(stats.Percentile(skew, 50)), ms(stats.Percentile(skew, 99)), ms(stats.Percentile(skew, 100)),
		ms(stats.Percentile(toFire, 50)), ms(stats.Percentile(toFire, 99)),
		ms(stats.Percentile(toCreated, 50)), ms(stats.Percentile(toCreated, 99)),
		ms(stats.Percentile(toStart, 50)), ms(stats.Percentile(toStart, 99)), xpt), nil
}

func sleepUntil(ctx context.Context, t time.Time) {
	select {
	case <-time.After(time.Until(t)):
	case <-ctx.Done():
	}
}

func readChild(out io.Reader, ready chan<- string, mu *sync.Mutex, recs *[]record) {
	sc := bufio.NewScanner(out)
	var local []record
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "READY" {
			ready <- f[1]
			continue
		}
		if len(f) != 4 || (f[0] != "S" && f[0] != "C" && f[0] != "F") {
			continue
		}
		tick, err1 := strconv.ParseInt(f[2], 10, 64)
		at, err2 := strconv.ParseInt(f[3], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		local = append(local, record{kind: f[0][0], sched: f[1], tick: time.Unix(0, tick), at: time.Unix(0, at)})
	}
	mu.Lock()
	*recs = append(*recs, local...)
	mu.Unlock()
}

func schedName(i int) string { return fmt.Sprintf("s%04d", i) }

// createdHooks reports the runs this instance created.
type createdHooks struct {
	batuta.NopHooks
	out chan<- string
}

func (h createdHooks) RunStarted(_ context.Context, r batuta.RunInfo) {
	now := time.Now()
	// RunInfo has no event: the tick is in the event ID, cron/<name>/<tick>.
	parts := strings.SplitN(r.EventID, "/", 3)
	if len(parts) != 3 {
		return
	}
	tick, err := time.Parse(time.RFC3339Nano, parts[2])
	if err != nil {
		return
	}
	h.out <- fmt.Sprintf("C %s %d %d", parts[1], tick.UnixNano(), now.UnixNano())
}

func runChild(dsn, scen, overlap, node string, conns, workers int) error {
	sc, ok := scenarios[scen]
	if !ok {
		return fmt.Errorf("unknown scenario %q", scen)
	}
	// CRONFLEET_CPUPROFILE=<dir> writes each instance's CPU profile to
	// <dir>/<node>.pprof (go tool pprof reads it).
	if dir := os.Getenv("CRONFLEET_CPUPROFILE"); dir != "" {
		f, err := os.Create(filepath.Join(dir, node+".pprof"))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var action batuta.OverlapAction
	switch overlap {
	case "skip":
		action = batuta.OverlapSkip
	case "allow":
		action = batuta.OverlapAllow
	default:
		return fmt.Errorf("unknown overlap %q", overlap)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	go func() { // the parent closes stdin (or dies): stop
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return err
	}
	if conns > 0 {
		cfg.MaxConns = int32(conns)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	level := slog.LevelError
	if v := os.Getenv("CRONFLEET_LOG"); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			return fmt.Errorf("CRONFLEET_LOG: %w", err)
		}
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("node", node)
	// Experiments: the store's flush slots (0 keeps its defaults).
	mf, _ := strconv.Atoi(os.Getenv("CRONFLEET_MAXFLUSHES"))
	mcf, _ := strconv.Atoi(os.Getenv("CRONFLEET_COMPLETIONFLUSHES"))
	st, err := batutapg.New(ctx, pool, batutapg.Config{Logger: logger, ManualMigrate: true, MaxFlushes: mf, MaxCompletionFlushes: mcf})
	if err != nil {
		return err
	}
	defer st.Close()

	lines := make(chan string, 1<<16)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		w := bufio.NewWriter(os.Stdout)
		for l := range lines {
			// A failed write to stdout shows at the final Flush's error
			// (bufio keeps the first error); nothing to do per line.
			_, _ = w.WriteString(l)
			_ = w.WriteByte('\n')
			if len(lines) == 0 {
				w.Flush()
			}
		}
		w.Flush()
	}()
	cst := &countingStore{Store: st, fires: lines, node: node, trace: os.Getenv("CRONFLEET_TRACE") != ""}
	defer func() {
		if os.Getenv("CRONFLEET_DEBUG") != "" {
			fmt.Fprintf(os.Stderr, "%s: GetRun %d CreateRun %d (CreateRuns calls %d) ClaimTasks %d RecordTick %d\n", node, cst.gets.Load(), cst.creates.Load(), cst.batches.Load(), cst.claims.Load(), cst.ticks.Load())
		}
	}()
	o, err := batuta.New(batuta.Config{Store: cst, Logger: logger, NoLogHooks: true, NodeID: node, Workers: workers,
		Hooks: []batuta.Hooks{createdHooks{out: lines}}})
	if err != nil {
		return err
	}
	err = o.Register(&batuta.Workflow{Name: "tick", Tasks: []batuta.Task{{
		Name: "start",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			now := time.Now()
			ev := in.Event()
			lines <- fmt.Sprintf("S %s %d %d", ev.Metadata[batuta.CronMetaSchedule], ev.Time.UnixNano(), now.UnixNano())
			return nil, nil
		},
	}}})
	if err != nil {
		return err
	}
	for i := 0; i < sc.schedules; i++ {
		tr, err := batuta.NewCron(batuta.CronConfig{Name: schedName(i), Spec: sc.spec, Logger: logger,
			Overlap: batuta.OverlapPolicy{Action: action}})
		if err != nil {
			return err
		}
		if err := o.Bind("tick", tr); err != nil {
			return err
		}
	}
	lines <- "READY " + node
	err = o.Run(ctx)
	close(lines)
	<-writerDone
	return err
}

// countingStore counts the store calls of one instance (CRONFLEET_DEBUG=1
// prints them at exit).
type countingStore struct {
	*batutapg.Store
	gets, creates, batches, claims, ticks atomic.Int64
	node                                  string
	trace                                 bool          // CRONFLEET_TRACE
	fires                                 chan<- string // "F" records: CreateRun called
}

func (c *countingStore) GetRun(ctx context.Context, id string) (*batuta.Run, error) {
	c.gets.Add(1)
	return c.Store.GetRun(ctx, id)
}

func (c *countingStore) CreateRun(ctx context.Context, nr batuta.NewRun) (string, bool, error) {
	c.creates.Add(1)
	if c.fires != nil {
		c.fires <- fmt.Sprintf("F %s %d %d", nr.Event.Metadata[batuta.CronMetaSchedule], nr.Event.Time.UnixNano(), time.Now().UnixNano())
	}
	return c.Store.CreateRun(ctx, nr)
}

func (c *countingStore) CreateRuns(ctx context.Context, nrs []batuta.NewRun) ([]batuta.CreateResult, error) {
	c.countFires(nrs)
	return c.Store.CreateRuns(ctx, nrs)
}

// CreateRunsAndClaim is CreateRuns claiming in the same transaction (the
// cron trigger's batches when workers are free): counted as CreateRuns.
func (c *countingStore) CreateRunsAndClaim(ctx context.Context, nrs []batuta.NewRun, p batuta.ClaimParams) ([]batuta.CreateResult, []batuta.Claim, error) {
	c.countFires(nrs)
	return c.Store.CreateRunsAndClaim(ctx, nrs, p)
}

func (c *countingStore) countFires(nrs []batuta.NewRun) {
	c.creates.Add(int64(len(nrs)))
	c.batches.Add(1)
	if c.fires != nil {
		now := time.Now().UnixNano()
		for _, nr := range nrs {
			c.fires <- fmt.Sprintf("F %s %d %d", nr.Event.Metadata[batuta.CronMetaSchedule], nr.Event.Time.UnixNano(), now)
		}
	}
}

func (c *countingStore) ClaimTasks(ctx context.Context, p batuta.ClaimParams) ([]batuta.Claim, error) {
	c.claims.Add(1)
	t0 := time.Now()
	cs, err := c.Store.ClaimTasks(ctx, p)
	if c.trace {
		fmt.Fprintf(os.Stderr, "TRACE claim %s start=%s dur=%s limit=%d got=%d err=%v\n", c.node, t0.Format("05.000000"), time.Since(t0), p.Limit, len(cs), err)
	}
	return cs, err
}

func (c *countingStore) RecordTick(ctx context.Context, s string, t time.Time) (bool, error) {
	c.ticks.Add(1)
	return c.Store.RecordTick(ctx, s, t)
}

// CompleteTasksAndClaim is traced like ClaimTasks (CRONFLEET_TRACE).
func (c *countingStore) CompleteTasksAndClaim(ctx context.Context, cs []batuta.Completion, p batuta.ClaimParams) ([]batuta.CompleteResult, []batuta.Claim, error) {
	t0 := time.Now()
	res, claims, err := c.Store.CompleteTasksAndClaim(ctx, cs, p)
	if c.trace {
		fmt.Fprintf(os.Stderr, "TRACE complete %s start=%s dur=%s n=%d limit=%d got=%d err=%v\n", c.node, t0.Format("05.000000"), time.Since(t0), len(cs), p.Limit, len(claims), err)
	}
	return res, claims, err
}

// CompleteTasks is traced like ClaimTasks (CRONFLEET_TRACE).
func (c *countingStore) CompleteTasks(ctx context.Context, cs []batuta.Completion) ([]batuta.CompleteResult, error) {
	t0 := time.Now()
	res, err := c.Store.CompleteTasks(ctx, cs)
	if c.trace {
		fmt.Fprintf(os.Stderr, "TRACE complete %s start=%s dur=%s n=%d limit=0 got=0 err=%v\n", c.node, t0.Format("05.000000"), time.Since(t0), len(cs), err)
	}
	return res, err
}
