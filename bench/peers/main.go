// Command peers runs batuta beside two durable-workflow peers on the same
// databases, alternating sides round by round, and prints every round, the
// medians and the ratios:
//
//	steps   PostgreSQL: 5-step sequential workflows submitted open loop
//	        at -rate runs/s for -for, default settings on both sides:
//	        batuta (batutapg store) and DBOS Transact for Go (its
//	        PostgreSQL system database). Reported: the step boundary (end
//	        of step k to start of step k+1, four per run), submit to the
//	        first step, and submit to the end of the last step; p50/p99.
//	sqlite  SQLite burn-down: -n runs of a -sqlite-steps step sequential
//	        workflow created first, then drained: batuta (batutasqlite
//	        store) and go-workflows (its SQLite backend, in-process
//	        monoprocess mode, as its own benchmark runs it). Runs/s from
//	        the start of the workers to the end of the last run's last
//	        step.
//
// Every round uses a fresh schema (PostgreSQL) or database file (SQLite),
// dropped afterwards. Steps do nothing but note the time: what is measured
// is each engine's cost per durable step.
//
// Example (see BENCHMARKS.md, "Durable workflow peers"):
//
//	go run ./bench/peers -rounds 5
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"time"

	"github.com/batuta-dev/batuta/bench/internal/queuebench"
	"github.com/batuta-dev/batuta/bench/internal/stats"
)

type options struct {
	dsn       string
	dir       string
	scenarios []string
	sides     []string
	rounds    int
	rate      int
	dur       time.Duration
	n         int
	steps     int
	calls     bool // print the executor's store-call latencies (batuta, steps)
}

func main() {
	var o options
	flag.StringVar(&o.dsn, "dsn", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL connection string (steps)")
	flag.StringVar(&o.dir, "dir", os.TempDir(), "directory for the SQLite files (sqlite)")
	scen := flag.String("scenarios", "steps,sqlite", "scenarios to run")
	sides := flag.String("sides", "batuta,dbos,go-workflows", "sides to run (each scenario runs the ones it knows)")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds per scenario (each runs every side once)")
	flag.IntVar(&o.rate, "rate", 100, "steps: runs submitted per second")
	flag.DurationVar(&o.dur, "for", 10*time.Second, "steps: how long each round submits")
	flag.IntVar(&o.n, "n", 2000, "sqlite: runs per burn-down round")
	flag.IntVar(&o.steps, "sqlite-steps", 1, "sqlite: steps per workflow")
	flag.BoolVar(&o.calls, "storecalls", false, "steps: print the p50/p99 of batuta's claim and complete store calls per round (a StoreHooks)")
	flag.Parse()
	o.scenarios = queuebench.Split(*scen)
	o.sides = queuebench.Split(*sides)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "peers:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	fmt.Printf("peers bench: %s, sides %v\n", time.Now().Format(time.DateTime), o.sides)
	if slices.Contains(o.scenarios, "steps") {
		if err := runSteps(ctx, o); err != nil {
			return err
		}
	}
	if slices.Contains(o.scenarios, "sqlite") {
		if err := runSQLite(ctx, o); err != nil {
			return err
		}
	}
	return nil
}

// stepSide is one engine of the steps scenario.
type stepSide struct {
	name string
	// round submits rate runs/s for d and returns the step clock.
	round func(ctx context.Context, o options) (*clock, error)
}

func runSteps(ctx context.Context, o options) error {
	var sides []stepSide
	for _, s := range o.sides {
		switch s {
		case "batuta":
			sides = append(sides, stepSide{"batuta-pg", batutaSteps})
		case "dbos":
			sides = append(sides, stepSide{"dbos", dbosSteps})
		}
	}
	type res struct{ gap50, gap99, first50, first99, run50, run99 []float64 }
	all := map[string]*res{}
	fmt.Printf("\n== steps: 5-step sequential workflows, open loop %d runs/s for %v, PostgreSQL ==\n", o.rate, o.dur)
	for r := 1; r <= o.rounds; r++ {
		for _, s := range sides {
			c, err := s.round(ctx, o)
			if err != nil {
				return fmt.Errorf("%s steps: %w", s.name, err)
			}
			gaps, first, whole := c.summary()
			x := all[s.name]
			if x == nil {
				x = &res{}
				all[s.name] = x
			}
			x.gap50 = append(x.gap50, msf(stats.Percentile(gaps, 50)))
			x.gap99 = append(x.gap99, msf(stats.Percentile(gaps, 99)))
			x.first50 = append(x.first50, msf(stats.Percentile(first, 50)))
			x.first99 = append(x.first99, msf(stats.Percentile(first, 99)))
			x.run50 = append(x.run50, msf(stats.Percentile(whole, 50)))
			x.run99 = append(x.run99, msf(stats.Percentile(whole, 99)))
			fmt.Printf("round %d  %-10s step p50 %7.3f p99 %7.3f ms | first step p50 %7.3f p99 %7.3f ms | run p50 %7.3f p99 %7.3f ms (%d runs)\n",
				r, s.name, msf(stats.Percentile(gaps, 50)), msf(stats.Percentile(gaps, 99)),
				msf(stats.Percentile(first, 50)), msf(stats.Percentile(first, 99)),
				msf(stats.Percentile(whole, 50)), msf(stats.Percentile(whole, 99)), len(whole))
		}
	}
	fmt.Printf("-- median of %d rounds (ms) --\n", o.rounds)
	for _, s := range sides {
		x := all[s.name]
		fmt.Printf("%-10s step p50 %7.3f p99 %7.3f | first step p50 %7.3f p99 %7.3f | run p50 %7.3f p99 %7.3f\n", s.name,
			stats.Median(x.gap50), stats.Median(x.gap99), stats.Median(x.first50), stats.Median(x.first99),
			stats.Median(x.run50), stats.Median(x.run99))
	}
	if b, d := all["batuta-pg"], all["dbos"]; b != nil && d != nil {
		fmt.Printf("batuta / dbos (below 1: batuta lower): step p50 %.2fx p99 %.2fx, run p50 %.2fx p99 %.2fx\n",
			stats.Median(b.gap50)/stats.Median(d.gap50), stats.Median(b.gap99)/stats.Median(d.gap99),
			stats.Median(b.run50)/stats.Median(d.run50), stats.Median(b.run99)/stats.Median(d.run99))
	}
	return nil
}

// burnSide is one engine of the sqlite scenario.
type burnSide struct {
	name  string
	round func(ctx context.Context, o options) (float64, error)
}

func runSQLite(ctx context.Context, o options) error {
	var sides []burnSide
	for _, s := range o.sides {
		switch s {
		case "batuta":
			sides = append(sides, burnSide{"batuta-sqlite", batutaSQLite})
		case "go-workflows":
			sides = append(sides, burnSide{"go-workflows", goWorkflowsSQLite})
		}
	}
	res := map[string][]float64{}
	fmt.Printf("\n== sqlite: burn-down of %d runs of a %d-step workflow, SQLite file ==\n", o.n, o.steps)
	for r := 1; r <= o.rounds; r++ {
		for _, s := range sides {
			rps, err := s.round(ctx, o)
			if err != nil {
				return fmt.Errorf("%s sqlite: %w", s.name, err)
			}
			res[s.name] = append(res[s.name], rps)
			fmt.Printf("round %d  %-14s %9.0f runs/s\n", r, s.name, rps)
		}
	}
	fmt.Printf("-- median of %d rounds --\n", o.rounds)
	for _, s := range sides {
		line := fmt.Sprintf("%-14s %9.0f runs/s", s.name, stats.Median(res[s.name]))
		if g := res["go-workflows"]; len(g) > 0 && s.name != "go-workflows" {
			line += fmt.Sprintf("   x%.2f go-workflows", stats.Median(res[s.name])/stats.Median(g))
		}
		fmt.Println(line)
	}
	return nil
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
