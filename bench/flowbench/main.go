// Command flowbench measures the flow controls of the PostgreSQL store
// (issue 11) side by side with River, on one database, alternating the
// sides round by round, and prints each round, the medians and the ratios.
//
// The batuta side drives the Store interface directly with a minimal
// claim/complete loop (claimer goroutines: ClaimTasks, then CompleteTasks
// of what they got; NextDue and WorkAvailable when idle), the same loop
// with and without limits, so the ratios isolate the store's cost of the
// limits. (The orchestrator's Workflow.Concurrency / StartAt API was being
// built at the same time on another branch.)
//
// Scenarios (-scenarios, comma-separated):
//
//	throughput  -n single-task runs over -keys keys, workflow-level limit
//	            Max 1 per key (Queue), created with CreateRuns, then
//	            drained; the same without limits; River with one queue per
//	            key, MaxWorkers 1 each (River's open-source way to run at
//	            most one job of a key at a time). Runs/s and ratios.
//	fairness    1 key with -noisy queued runs and 100 keys with 10 each,
//	            Max 1 per key, the noisy key's runs created first: the
//	            quiet keys' wait (creation to claim), p50/p99.
//	delayed     -delayed runs (times -scale) with StartAt spread over a
//	            minute (times -scale): lateness (claim minus StartAt),
//	            p50/p99.
//
// Environment: FLOWBENCH_TIMES=1 prints, after each drain, its wall time
// and the claimers' summed time in ClaimTasks, CompleteTasks and idle
// waits; FLOWBENCH_COMPLETIONFLUSHES sets batutapg.Config.MaxCompletionFlushes.
//
// Example:
//
//	go run ./flowbench -rounds 3
//	go run ./flowbench -scenarios delayed -scale 0.2
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

const (
	batutaSchema = "flowbench_batuta"
	riverSchema  = "flowbench_river"
)

type options struct {
	n, keys, rounds, claimers, limit, noisy, delayed int
	scale                                            float64
	river                                            bool
	riverFetch                                       time.Duration
}

func main() {
	dsn := flag.String("dsn", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL connection string")
	var o options
	flag.IntVar(&o.n, "n", 20000, "throughput: runs (jobs) per side and round")
	flag.IntVar(&o.keys, "keys", 1000, "throughput: concurrency keys (Max 1 each)")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds (each runs every side once)")
	flag.IntVar(&o.claimers, "claimers", 8, "batuta claimer goroutines")
	flag.IntVar(&o.limit, "limit", 64, "batuta tasks per claim")
	flag.IntVar(&o.noisy, "noisy", 10000, "fairness: queued runs of the noisy key")
	flag.IntVar(&o.delayed, "delayed", 100000, "delayed: runs (times -scale)")
	flag.Float64Var(&o.scale, "scale", 1, "delayed: scales the number of runs and the minute they are spread over")
	flag.BoolVar(&o.river, "river", true, "throughput: run the River side")
	flag.DurationVar(&o.riverFetch, "river-fetch", time.Second, "River FetchPollInterval (its default; FetchCooldown is 2ms as in River's own benchmark). Each queue polls on its own: 1,000 queues polling every 20ms swamp the database")
	scenarios := flag.String("scenarios", "throughput,fairness,delayed", "scenarios to run")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cfg, err := pgxpool.ParseConfig(*dsn)
	if err == nil {
		cfg.MaxConns = 24
	}
	var pool *pgxpool.Pool
	if err == nil {
		pool, err = pgxpool.NewWithConfig(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "flowbench:", err)
		os.Exit(1)
	}
	defer pool.Close()
	fmt.Println("batuta side: the Store interface driven directly (own claim/complete loop), batutapg, schema " + batutaSchema)
	for _, sc := range strings.Split(*scenarios, ",") {
		var err error
		switch strings.TrimSpace(sc) {
		case "throughput":
			err = throughput(ctx, pool, o)
		case "fairness":
			err = fairness(ctx, pool, o)
		case "delayed":
			err = delayed(ctx, pool, o)
		default:
			err = fmt.Errorf("unknown scenario %q", sc)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "flowbench:", sc+":", err)
			os.Exit(1)
		}
	}
	_, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+batutaSchema+" CASCADE; DROP SCHEMA IF EXISTS "+riverSchema+" CASCADE")
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// freshStore drops the bench schema and returns a Store on a new one.
func freshStore(ctx context.Context, pool *pgxpool.Pool) (*batutapg.Store, error) {
	if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+batutaSchema+" CASCADE"); err != nil {
		return nil, err
	}
	pool.Reset()
	cfg := batutapg.Config{Schema: batutaSchema, Logger: quiet()}
	if v, err := strconv.Atoi(os.Getenv("FLOWBENCH_COMPLETIONFLUSHES")); err == nil {
		cfg.MaxCompletionFlushes = v
	}
	return batutapg.New(ctx, pool, cfg)
}

func oneTask() []batuta.TaskSpec { return []batuta.TaskSpec{{Name: "t"}} }

func newRun(wf string, i int, at time.Time) batuta.NewRun {
	return batuta.NewRun{ID: uuid.Must(uuid.NewV7()).String(), Workflow: wf, Event: batuta.Event{ID: fmt.Sprint(i), Time: at},
		Tasks: oneTask(), CreatedAt: at}
}

// createAll records runs with CreateRuns, chunk by chunk, and returns the
// creation rate.
func createAll(ctx context.Context, st batuta.Store, runs []batuta.NewRun) (float64, error) {
	t0 := time.Now()
	for i := 0; i < len(runs); i += 5000 {
		if _, err := st.CreateRuns(ctx, runs[i:min(i+5000, len(runs))]); err != nil {
			return 0, err
		}
	}
	return float64(len(runs)) / time.Since(t0).Seconds(), nil
}

// drain runs o.claimers claim/complete loops until want runs finished;
// onClaim sees every claim as it is returned.
func drain(ctx context.Context, st *batutapg.Store, wf string, want int, o options, onClaim func(batuta.Claim, time.Time)) error {
	var done, claimNs, compNs, idleNs, idles atomic.Int64
	t0 := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, o.claimers)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for w := 0; w < o.claimers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("flowbench-%d", w)
			var comps []batuta.Completion
			for done.Load() < int64(want) && ctx.Err() == nil {
				now := time.Now()
				tClaim := now
				cs, err := st.ClaimTasks(ctx, batuta.ClaimParams{Owner: owner, Workflows: []string{wf}, Limit: o.limit, Now: now, LeaseUntil: now.Add(time.Minute)})
				if err != nil {
					errc <- err
					cancel()
					return
				}
				if len(cs) == 0 {
					ti := time.Now()
					idle(ctx, st, wf)
					idleNs.Add(int64(time.Since(ti)))
					idles.Add(1)
					continue
				}
				at := time.Now()
				comps = comps[:0]
				for _, c := range cs {
					if onClaim != nil {
						onClaim(c, at)
					}
					comps = append(comps, batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: c.Attempt, StartedAt: at, FinishedAt: at})
				}
				claimNs.Add(int64(time.Since(tClaim)))
				tc := time.Now()
				res, err := st.CompleteTasks(ctx, comps)
				compNs.Add(int64(time.Since(tc)))
				if err != nil {
					errc <- err
					cancel()
					return
				}
				for _, r := range res {
					if r.Err != nil {
						errc <- r.Err
						cancel()
						return
					}
					if r.RunFinished != "" {
						done.Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	if os.Getenv("FLOWBENCH_TIMES") != "" {
		fmt.Printf("    wall %v; claimers' time: claim %v, complete %v, idle %v (%d times)\n", time.Since(t0), time.Duration(claimNs.Load()), time.Duration(compNs.Load()), time.Duration(idleNs.Load()), idles.Load())
	}
	select {
	case err := <-errc:
		return err
	default:
		return ctx.Err()
	}
}

// idle waits for work: until the next delayed task is due (NextDue), a
// notification, or 20 ms.
func idle(ctx context.Context, st *batutapg.Store, wf string) {
	wait := 20 * time.Millisecond
	if due, err := st.NextDue(ctx, []string{wf}, time.Now()); err == nil && !due.IsZero() {
		wait = min(wait, max(time.Until(due), 0))
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-st.WorkAvailable():
	case <-ctx.Done():
	}
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

// throughput: limited vs unlimited vs River, alternating.
func throughput(ctx context.Context, pool *pgxpool.Pool, o options) error {
	fmt.Printf("\nthroughput: %d single-task runs over %d keys (Max 1 per key), %d claimers x %d per claim\n", o.n, o.keys, o.claimers, o.limit)
	var lim, unl, riv, limC, unlC, rivC []float64
	for r := 1; r <= o.rounds; r++ {
		for _, limited := range []bool{true, false} {
			st, err := freshStore(ctx, pool)
			if err != nil {
				return err
			}
			now := time.Now()
			runs := make([]batuta.NewRun, o.n)
			for i := range runs {
				runs[i] = newRun("tp", i, now)
				if limited {
					runs[i].Concurrency = &batuta.ConcurrencySpec{Key: fmt.Sprintf("tp:k%d", i%o.keys), Max: 1}
				}
			}
			cr, err := createAll(ctx, st, runs)
			if err != nil {
				st.Close()
				return err
			}
			t0 := time.Now()
			err = drain(ctx, st, "tp", o.n, o, nil)
			rate := float64(o.n) / time.Since(t0).Seconds()
			st.Close()
			if err != nil {
				return err
			}
			name := "unlimited"
			if limited {
				name = "limited  "
				lim, limC = append(lim, rate), append(limC, cr)
			} else {
				unl, unlC = append(unl, rate), append(unlC, cr)
			}
			fmt.Printf("  round %d batuta %s %8.0f runs/s (CreateRuns %7.0f runs/s)\n", r, name, rate, cr)
		}
		if o.river {
			rate, ins, err := riverThroughput(ctx, pool, o)
			if err != nil {
				return err
			}
			riv, rivC = append(riv, rate), append(rivC, ins)
			fmt.Printf("  round %d river  queue/key %8.0f jobs/s (InsertMany %7.0f jobs/s)\n", r, rate, ins)
		}
	}
	fmt.Printf("  median: batuta limited %.0f runs/s, unlimited %.0f runs/s: limited/unlimited %.2fx\n", median(lim), median(unl), median(lim)/median(unl))
	fmt.Printf("          create: CreateRuns %.0f runs/s (limited), %.0f runs/s (unlimited)\n", median(limC), median(unlC))
	if len(riv) > 0 {
		fmt.Printf("          River (one queue per key, MaxWorkers 1) %.0f jobs/s: batuta limited/River %.2fx; InsertMany %.0f jobs/s: CreateRuns/InsertMany %.2fx\n",
			median(riv), median(lim)/median(riv), median(rivC), median(unlC)/median(rivC))
	}
	return nil
}

type noopArgs struct{}

func (noopArgs) Kind() string { return "noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
}

func (noopWorker) Work(context.Context, *river.Job[noopArgs]) error { return nil }

// riverThroughput inserts o.n jobs spread over o.keys queues (InsertMany)
// and drains them with a client that runs each queue with MaxWorkers 1.
func riverThroughput(ctx context.Context, pool *pgxpool.Pool, o options) (float64, float64, error) {
	if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+riverSchema+" CASCADE; CREATE SCHEMA "+riverSchema); err != nil {
		return 0, 0, err
	}
	pool.Reset()
	m, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: riverSchema, Logger: quiet()})
	if err != nil {
		return 0, 0, err
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return 0, 0, err
	}
	ws := river.NewWorkers()
	river.AddWorker(ws, &noopWorker{})
	queues := make(map[string]river.QueueConfig, o.keys)
	for k := 0; k < o.keys; k++ {
		queues[fmt.Sprintf("k%d", k)] = river.QueueConfig{MaxWorkers: 1}
	}
	c, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Schema: riverSchema, Logger: quiet(), Queues: queues, Workers: ws,
		FetchCooldown: 2 * time.Millisecond, FetchPollInterval: o.riverFetch,
	})
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	params := make([]river.InsertManyParams, 0, 5000)
	for i := 0; i < o.n; i += 5000 {
		params = params[:0]
		for k := i; k < min(o.n, i+5000); k++ {
			params = append(params, river.InsertManyParams{Args: noopArgs{}, InsertOpts: &river.InsertOpts{Queue: fmt.Sprintf("k%d", k%o.keys)}})
		}
		if _, err := c.InsertMany(ctx, params); err != nil {
			return 0, 0, err
		}
	}
	ins := float64(o.n) / time.Since(t0).Seconds()
	events, cancel := c.SubscribeConfig(&river.SubscribeConfig{ChanSize: o.n + 16, Kinds: []river.EventKind{river.EventKindJobCompleted}})
	defer cancel()
	start := time.Now()
	if err := c.Start(ctx); err != nil {
		return 0, 0, err
	}
	for n := 0; n < o.n; n++ {
		select {
		case <-events:
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
	}
	el := time.Since(start)
	if err := c.Stop(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return 0, 0, err
	}
	return float64(o.n) / el.Seconds(), ins, nil
}

// fairness: quiet keys' waits behind a noisy key.
func fairness(ctx context.Context, pool *pgxpool.Pool, o options) error {
	fmt.Printf("\nfairness: 1 key with %d queued runs (created first), 100 keys with 10 each, Max 1 per key\n", o.noisy)
	var p50s, p99s []float64
	for r := 1; r <= o.rounds; r++ {
		st, err := freshStore(ctx, pool)
		if err != nil {
			return err
		}
		now := time.Now()
		var runs []batuta.NewRun
		quiet := map[string]bool{}
		for i := 0; i < o.noisy; i++ {
			nr := newRun("fair", i, now)
			nr.Concurrency = &batuta.ConcurrencySpec{Key: "fair:noisy", Max: 1}
			runs = append(runs, nr)
		}
		for k := 0; k < 100; k++ {
			for i := 0; i < 10; i++ {
				nr := newRun("fair", o.noisy+k*10+i, now)
				nr.Concurrency = &batuta.ConcurrencySpec{Key: fmt.Sprintf("fair:q%d", k), Max: 1}
				runs = append(runs, nr)
				quiet[nr.ID] = true
			}
		}
		if _, err := createAll(ctx, st, runs); err != nil {
			st.Close()
			return err
		}
		start := time.Now()
		var mu sync.Mutex
		var waits []time.Duration
		var noisyDone atomic.Int64
		noisyAtQuietEnd := int64(-1)
		// The round ends when the last quiet run started (the noisy key's
		// backlog would take 10,000 sequential runs to drain).
		dctx, quietDone := context.WithCancel(ctx)
		err = drain(dctx, st, "fair", len(runs), o, func(c batuta.Claim, at time.Time) {
			if !quiet[c.RunID] {
				noisyDone.Add(1)
				return
			}
			mu.Lock()
			waits = append(waits, at.Sub(start))
			if len(waits) == 1000 {
				noisyAtQuietEnd = noisyDone.Load()
				quietDone()
			}
			mu.Unlock()
		})
		quietDone()
		st.Close()
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		p50, p99 := pct(waits, 0.5), pct(waits, 0.99)
		p50s, p99s = append(p50s, float64(p50)), append(p99s, float64(p99))
		fmt.Printf("  round %d quiet keys' wait p50 %v p99 %v (max %v); the noisy key had started %d runs when the last quiet run started\n",
			r, p50.Round(time.Microsecond), p99.Round(time.Microsecond), pct(waits, 1).Round(time.Microsecond), noisyAtQuietEnd)
	}
	fmt.Printf("  median: quiet keys' wait p50 %v, p99 %v\n", time.Duration(median(p50s)).Round(time.Microsecond), time.Duration(median(p99s)).Round(time.Microsecond))
	return nil
}

// delayed: lateness of runs with StartAt spread over a minute.
func delayed(ctx context.Context, pool *pgxpool.Pool, o options) error {
	n := int(float64(o.delayed) * o.scale)
	span := time.Duration(float64(time.Minute) * o.scale)
	fmt.Printf("\ndelayed: %d runs with StartAt spread over %v (%.0f/s)\n", n, span, float64(n)/span.Seconds())
	var p50s, p99s []float64
	for r := 1; r <= o.rounds; r++ {
		st, err := freshStore(ctx, pool)
		if err != nil {
			return err
		}
		now := time.Now()
		first := now.Add(5 * time.Second) // creating them takes a few seconds
		runs := make([]batuta.NewRun, n)
		startAt := make(map[string]time.Time, n)
		for i := range runs {
			runs[i] = newRun("later", i, now)
			runs[i].StartAt = first.Add(time.Duration(i) * span / time.Duration(n))
			startAt[runs[i].ID] = runs[i].StartAt
		}
		cr, err := createAll(ctx, st, runs)
		if err != nil {
			st.Close()
			return err
		}
		if time.Now().After(first) {
			st.Close()
			return fmt.Errorf("creating %d runs took past the first start time (%.0f runs/s): use a smaller -scale", n, cr)
		}
		var mu sync.Mutex
		late := make([]time.Duration, 0, n)
		err = drain(ctx, st, "later", n, o, func(c batuta.Claim, at time.Time) {
			mu.Lock()
			late = append(late, at.Sub(startAt[c.RunID]))
			mu.Unlock()
		})
		st.Close()
		if err != nil {
			return err
		}
		p50, p99 := pct(late, 0.5), pct(late, 0.99)
		p50s, p99s = append(p50s, float64(p50)), append(p99s, float64(p99))
		fmt.Printf("  round %d lateness p50 %v p99 %v max %v (created at %.0f runs/s)\n", r, p50.Round(time.Microsecond), p99.Round(time.Microsecond),
			pct(late, 1).Round(time.Microsecond), cr)
	}
	fmt.Printf("  median: lateness p50 %v, p99 %v\n", time.Duration(median(p50s)).Round(time.Microsecond), time.Duration(median(p99s)).Round(time.Microsecond))
	return nil
}
