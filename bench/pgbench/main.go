// Command pgbench runs batuta (PostgreSQL store) and River side by side on
// the same PostgreSQL, alternating batuta and River (A B A B ...) for a
// number of rounds, and prints each round, the medians and the ratio
// batuta/River.
//
// Scenarios (-scenarios, comma-separated):
//
//	burndown   N single-task runs (River: N no-op jobs inserted with
//	           InsertMany) created first, then drained; runs/s of the drain
//	sustained  producers submit (River: Insert) while the workers work,
//	           for -sustain; finished runs/s
//	latency    open-loop submits at -rate/s for -latency-for, default
//	           settings on both sides; submit-to-task-start p50/p99, and
//	           the server's floor at the same rate (a single-row INSERT
//	           that notifies a listener: insert -> listener told)
//	submitmany one SubmitMany of -batch single-task runs (River: one
//	           InsertMany of -batch jobs), -batches times on a fresh schema,
//	           nothing working them; runs/s of the calls
//	diamond    batuta only: N/10 runs of a 5-task diamond (a -> b,c,d -> e)
//	           drained by 1 and by 2 orchestrators; runs/s
//
// Example (figures and how to read them: BENCHMARKS.md):
//
//	go run ./bench/pgbench -n 200000 -rounds 5
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// showCost is the -cost flag.
var showCost bool

func main() {
	dsn := flag.String("dsn", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL connection string")
	n := flag.Int("n", 200000, "burn-down size (runs / jobs)")
	rounds := flag.Int("rounds", 5, "rounds per scenario (each runs batuta then River)")
	workers := flag.Int("workers", 1000, "batuta workers (Config.Workers) for burndown, sustained and diamond")
	riverWorkers := flag.Int("river-workers", 2000, "River MaxWorkers for burndown and sustained (river bench uses 2000)")
	sides := flag.String("sides", "batuta,river", "which sides to run (for a quick look at one)")
	producers := flag.Int("producers", 64, "producer goroutines in the sustained scenario (each submits one run / inserts one job at a time)")
	sustain := flag.Duration("sustain", 30*time.Second, "duration of the sustained scenario")
	rate := flag.Int("rate", 200, "submits per second in the latency scenario")
	latFor := flag.Duration("latency-for", 10*time.Second, "duration of the latency scenario")
	conns := flag.Int("conns", 20, "pool size on each side")
	batch := flag.Int("batch", 10000, "runs / jobs per SubmitMany / InsertMany call in the submitmany scenario")
	batches := flag.Int("batches", 5, "calls per round in the submitmany scenario")
	scenarios := flag.String("scenarios", "burndown,sustained,latency,submitmany,diamond", "scenarios to run")
	flag.BoolVar(&showCost, "cost", false, "burndown: also print WAL bytes and CPU time (this process, and the server backends of its pool, read from /proc) per run/job")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "pgbench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *dsn, *sides, *n, *rounds, *workers, *riverWorkers, *producers, *sustain, *rate, *latFor, int32(*conns), *batch, *batches, *scenarios); err != nil {
		fmt.Fprintln(os.Stderr, "pgbench:", err)
		os.Exit(1)
	}
}

// walBytes returns the server's current WAL position in bytes.
func walBytes(ctx context.Context, p *pgxpool.Pool) int64 {
	var n int64
	_ = p.QueryRow(ctx, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").Scan(&n)
	return n
}

func newPool(ctx context.Context, dsn string, conns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = conns
	cfg.MinConns = conns // all backends up front, so the CPU meter sees them
	return pgxpool.NewWithConfig(ctx, cfg)
}

func run(ctx context.Context, dsn, sides string, n, rounds, workers, riverWorkers, producers int, sustain time.Duration, rate int, latFor time.Duration, conns int32, batch, batches int, scenarios string) error {
	bp, err := newPool(ctx, dsn, conns)
	if err != nil {
		return err
	}
	defer bp.Close()
	rp, err := newPool(ctx, dsn, conns)
	if err != nil {
		return err
	}
	defer rp.Close()
	var version string
	if err := bp.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		return err
	}
	fmt.Printf("PostgreSQL %s; rounds %d; batuta workers %d, River workers %d (throughput scenarios); pool %d conns per side\n",
		version, rounds, workers, riverWorkers, conns)
	b := &batutaSide{pool: bp, workers: workers}
	r := &riverSide{pool: rp, workers: riverWorkers}
	doB, doR := strings.Contains(sides, "batuta"), strings.Contains(sides, "river")
	defer func() {
		cctx := context.WithoutCancel(ctx)
		_, _ = bp.Exec(cctx, `DROP SCHEMA IF EXISTS `+batutaSchema+` CASCADE`)
		_, _ = rp.Exec(cctx, `DROP SCHEMA IF EXISTS `+riverSchema+` CASCADE`)
	}()

	for _, sc := range strings.Split(scenarios, ",") {
		switch strings.TrimSpace(sc) {
		case "burndown":
			fmt.Printf("\n(a) burn-down: %d single-task runs / no-op jobs created first, then drained\n", n)
			var bs, rs, bsub, rins []float64
			for i := 1; i <= rounds; i++ {
				var bd, bsr, rd, rir float64
				if doB {
					if bd, bsr, err = b.burnDown(ctx, n); err != nil {
						return fmt.Errorf("batuta burn-down: %w", err)
					}
				}
				if doR {
					if rd, rir, err = r.burnDown(ctx, n); err != nil {
						return fmt.Errorf("river burn-down: %w", err)
					}
				}
				bs, rs, bsub, rins = append(bs, bd), append(rs, rd), append(bsub, bsr), append(rins, rir)
				fmt.Printf("  round %d: batuta %8.0f runs/s (submit %6.0f/s) | river %8.0f jobs/s (InsertMany %6.0f/s)\n", i, bd, bsr, rd, rir)
			}
			fmt.Printf("  median:  batuta %8.0f runs/s | river %8.0f jobs/s | ratio %.2f  (create: batuta Submit %0.f/s, river InsertMany %.0f/s)\n",
				median(bs), median(rs), median(bs)/median(rs), median(bsub), median(rins))
		case "sustained":
			fmt.Printf("\n(b) sustained: %d producers submitting while working, %s\n", producers, sustain)
			var bs, rs []float64
			for i := 1; i <= rounds; i++ {
				var bv, rv float64
				if doB {
					if bv, err = b.sustained(ctx, sustain, producers); err != nil {
						return fmt.Errorf("batuta sustained: %w", err)
					}
				}
				if doR {
					if rv, err = r.sustained(ctx, sustain, producers); err != nil {
						return fmt.Errorf("river sustained: %w", err)
					}
				}
				bs, rs = append(bs, bv), append(rs, rv)
				fmt.Printf("  round %d: batuta %8.0f runs/s | river %8.0f jobs/s\n", i, bv, rv)
			}
			fmt.Printf("  median:  batuta %8.0f runs/s | river %8.0f jobs/s | ratio %.2f\n", median(bs), median(rs), median(bs)/median(rs))
		case "latency":
			fmt.Printf("\n(c) latency: open loop %d/s for %s, default settings, submit -> task start\n", rate, latFor)
			var b50, b99, r50, r99, f50, f99 []float64
			for i := 1; i <= rounds; i++ {
				var bl, rl, fl []time.Duration
				if fl, err = floorLatency(ctx, bp, rate, latFor); err != nil {
					return fmt.Errorf("floor latency: %w", err)
				}
				if doB {
					if bl, err = b.latency(ctx, rate, latFor); err != nil {
						return fmt.Errorf("batuta latency: %w", err)
					}
				}
				if doR {
					if rl, err = r.latency(ctx, rate, latFor); err != nil {
						return fmt.Errorf("river latency: %w", err)
					}
				}
				msf := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
				b50, b99 = append(b50, msf(percentile(bl, 50))), append(b99, msf(percentile(bl, 99)))
				r50, r99 = append(r50, msf(percentile(rl, 50))), append(r99, msf(percentile(rl, 99)))
				f50, f99 = append(f50, msf(percentile(fl, 50))), append(f99, msf(percentile(fl, 99)))
				fmt.Printf("  round %d: batuta p50 %s p99 %s | river p50 %s p99 %s | floor p50 %s p99 %s\n", i,
					ms(b50[i-1]), ms(b99[i-1]), ms(r50[i-1]), ms(r99[i-1]), ms(f50[i-1]), ms(f99[i-1]))
			}
			fmt.Printf("  median:  batuta p50 %s p99 %s | river p50 %s p99 %s | floor p50 %s p99 %s (batuta/floor p50 %.2fx)\n",
				ms(median(b50)), ms(median(b99)), ms(median(r50)), ms(median(r99)), ms(median(f50)), ms(median(f99)), median(b50)/median(f50))
		case "submitmany":
			fmt.Printf("\n(e) submit many: %d calls of %d single-task runs (SubmitMany) / no-op jobs (InsertMany), nothing working them\n", batches, batch)
			var bs, rs []float64
			for i := 1; i <= rounds; i++ {
				var bv, rv float64
				runB := func() (err error) { bv, err = b.submitMany(ctx, batch, batches); return err }
				runR := func() (err error) { rv, err = r.submitMany(ctx, batch, batches); return err }
				// Alternate which side goes first: the second of a pair
				// finds the server's caches and WAL in another state.
				order := []func() error{}
				if doB {
					order = append(order, runB)
				}
				if doR {
					order = append(order, runR)
				}
				if i%2 == 0 {
					slices.Reverse(order)
				}
				for _, f := range order {
					if err := f(); err != nil {
						return fmt.Errorf("submitmany: %w", err)
					}
				}
				bs, rs = append(bs, bv), append(rs, rv)
				fmt.Printf("  round %d: batuta SubmitMany %8.0f runs/s | river InsertMany %8.0f jobs/s\n", i, bv, rv)
			}
			fmt.Printf("  median:  batuta %8.0f runs/s | river %8.0f jobs/s | ratio %.2f\n", median(bs), median(rs), median(bs)/median(rs))
		case "diamond":
			dn := max(n/10, 1000)
			fmt.Printf("\n(d) 5-task diamond (a -> b,c,d -> e), batuta only: %d runs created first, then drained\n", dn)
			var one, two []float64
			for i := 1; i <= rounds; i++ {
				d1, _, err := b.burnDownWorkflow(ctx, diamondWorkflow(), dn, 1, workers)
				if err != nil {
					return fmt.Errorf("diamond x1: %w", err)
				}
				d2, _, err := b.burnDownWorkflow(ctx, diamondWorkflow(), dn, 2, workers)
				if err != nil {
					return fmt.Errorf("diamond x2: %w", err)
				}
				one, two = append(one, d1), append(two, d2)
				fmt.Printf("  round %d: 1 instance %6.0f runs/s (%6.0f tasks/s) | 2 instances %6.0f runs/s\n", i, d1, 5*d1, d2)
			}
			fmt.Printf("  median:  1 instance %6.0f runs/s | 2 instances %6.0f runs/s\n", median(one), median(two))
		case "":
		default:
			return fmt.Errorf("unknown scenario %q", sc)
		}
	}
	return nil
}
