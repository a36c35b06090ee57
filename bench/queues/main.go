// Command queues measures batuta's queue trigger over real brokers, Redis
// Streams (batutaredis) and NATS JetStream (batutanats), and runs the same
// workloads through github.com/hibiken/asynq on the same Redis, alternating
// sides round by round (batuta-redis, asynq, batuta-nats, batuta-redis, ...).
//
// Scenarios (-scenarios, comma-separated):
//
//	throughput  -n messages published while no consumer runs, then drained
//	            through the queue trigger into a one-task no-op workflow
//	            (asynq: -n tasks enqueued, then drained by a server), at
//	            each -concurrency: messages/s from consumer start to the
//	            last task start
//	latency     open-loop publishing at -rate/s for -latency-for, default
//	            settings everywhere (adapter, trigger, orchestrator; asynq
//	            server defaults): publish-to-task-start p50/p99
//
// batuta side at concurrency c: orchestrator Workers c with the in-memory
// store; the trigger holds at most c deliveries (c=1: Receivers 1,
// ReceiveMax 1; otherwise Receivers c/10 rounded up, ReceiveMax 10) and,
// the store being in-memory, acks each message after its run finished.
// asynq side: Config.Concurrency c.
//
// Every round uses a fresh stream / queue (random name), deleted after.
// Example (see docs/queues-bench.md):
//
//	go run ./bench/queues -rounds 3
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/batuta-dev/batuta/bench/internal/queuebench"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"
)

type options struct {
	redisURL    string
	natsURL     string
	sides       []string
	scenarios   []string
	n           int
	rounds      int
	concurrency []int
	rate        int
	latencyFor  time.Duration
	receiveMax  int
}

func main() {
	var o options
	sides := flag.String("sides", "batuta-redis,asynq,batuta-nats", "sides to run, in this order each round")
	scenarios := flag.String("scenarios", "throughput,latency", "scenarios to run")
	conc := flag.String("concurrency", "1,50", "concurrency levels for the throughput scenario")
	flag.StringVar(&o.redisURL, "redis", "redis://127.0.0.1:6379/0", "Redis URL (batuta-redis and asynq)")
	flag.StringVar(&o.natsURL, "nats", "nats://127.0.0.1:4222", "NATS URL (batuta-nats)")
	flag.IntVar(&o.n, "n", 20000, "messages per throughput round")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds per scenario (each runs every side once)")
	flag.IntVar(&o.rate, "rate", 200, "messages per second in the latency scenario")
	flag.DurationVar(&o.latencyFor, "latency-for", 10*time.Second, "duration of each latency round")
	flag.IntVar(&o.receiveMax, "receive-max", 10, "batuta throughput: QueueTriggerConfig.ReceiveMax at concurrency > 1 (Receivers = concurrency / receive-max, rounded up)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "queues: cpuprofile:", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	o.sides = split(*sides)
	o.scenarios = split(*scenarios)
	for _, s := range split(*conc) {
		c, err := strconv.Atoi(s)
		if err != nil || c < 1 {
			fmt.Fprintf(os.Stderr, "queues: bad -concurrency %q\n", s)
			os.Exit(2)
		}
		o.concurrency = append(o.concurrency, c)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "queues:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func split(s string) []string { return queuebench.Split(s) }

// A side is one system under test.
type side interface {
	name() string
	// throughput publishes n messages, then drains them at concurrency c,
	// and returns messages per second of the drain.
	throughput(ctx context.Context, n, c int) (float64, error)
	// latency publishes at rate/s for d with default settings and returns
	// the publish-to-task-start latencies.
	latency(ctx context.Context, rate int, d time.Duration) ([]time.Duration, error)
	close()
}

func newSide(ctx context.Context, name string, o options) (side, error) {
	switch name {
	case "batuta-redis":
		return newBatutaRedis(ctx, o.redisURL, o.receiveMax)
	case "batuta-nats":
		return newBatutaNATS(ctx, o.natsURL, o.receiveMax)
	case "asynq":
		return newAsynq(ctx, o.redisURL)
	}
	return nil, fmt.Errorf("unknown side %q (batuta-redis, batuta-nats, asynq)", name)
}

func run(ctx context.Context, o options) error {
	var sides []side
	for _, name := range o.sides {
		s, err := newSide(ctx, name, o)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		defer s.close()
		sides = append(sides, s)
	}
	fmt.Printf("queues bench: %s, GOMAXPROCS %d, sides %s\n", time.Now().Format(time.DateTime), gomaxprocs(), strings.Join(o.sides, ", "))

	if slices.Contains(o.scenarios, "throughput") {
		for _, c := range o.concurrency {
			res := map[string][]float64{}
			fmt.Printf("\n== throughput: %d messages, concurrency %d ==\n", o.n, c)
			for r := 1; r <= o.rounds; r++ {
				for _, s := range sides {
					mps, err := s.throughput(ctx, o.n, c)
					if err != nil {
						return fmt.Errorf("%s throughput c=%d: %w", s.name(), c, err)
					}
					res[s.name()] = append(res[s.name()], mps)
					fmt.Printf("round %d  %-13s %9.0f msg/s\n", r, s.name(), mps)
				}
			}
			fmt.Printf("-- median of %d rounds, concurrency %d --\n", o.rounds, c)
			for _, s := range sides {
				line := fmt.Sprintf("%-13s %9.0f msg/s", s.name(), median(res[s.name()]))
				if a := res["asynq"]; len(a) > 0 && s.name() != "asynq" {
					line += fmt.Sprintf("   x%.2f asynq (median of round ratios x%.2f)", median(res[s.name()])/median(a), pairedRatio(res[s.name()], a))
				}
				fmt.Println(line)
			}
		}
	}

	if slices.Contains(o.scenarios, "latency") {
		type lat struct{ p50, p99 []float64 }
		res := map[string]*lat{}
		fmt.Printf("\n== latency: open loop %d/s for %v, default settings ==\n", o.rate, o.latencyFor)
		for r := 1; r <= o.rounds; r++ {
			for _, s := range sides {
				ds, err := s.latency(ctx, o.rate, o.latencyFor)
				if err != nil {
					return fmt.Errorf("%s latency: %w", s.name(), err)
				}
				p50, p99 := percentile(ds, 50), percentile(ds, 99)
				l := res[s.name()]
				if l == nil {
					l = &lat{}
					res[s.name()] = l
				}
				l.p50 = append(l.p50, msf(p50))
				l.p99 = append(l.p99, msf(p99))
				fmt.Printf("round %d  %-13s p50 %9.3f ms   p99 %9.3f ms   (%d messages)\n", r, s.name(), msf(p50), msf(p99), len(ds))
			}
		}
		fmt.Printf("-- median of %d rounds --\n", o.rounds)
		for _, s := range sides {
			l := res[s.name()]
			line := fmt.Sprintf("%-13s p50 %9.3f ms   p99 %9.3f ms", s.name(), median(l.p50), median(l.p99))
			if a := res["asynq"]; a != nil && s.name() != "asynq" {
				line += fmt.Sprintf("   p50 x%.4f asynq", median(l.p50)/median(a.p50))
			}
			fmt.Println(line)
		}
	}
	return nil
}

// pairedRatio is the median over rounds of x[r]/y[r]: the two sides of a
// round ran one right after the other, so under a machine load that
// changes from round to round it is steadier than the ratio of medians.
func pairedRatio(x, y []float64) float64 {
	var rs []float64
	for i := range min(len(x), len(y)) {
		if y[i] > 0 {
			rs = append(rs, x[i]/y[i])
		}
	}
	return median(rs)
}
