// Command amqpbench measures batuta's queue trigger over RabbitMQ
// (batutaamqp), with the methodology of bench/queues so the figures compare
// with the Redis and NATS adapters':
//
//	throughput  -n messages published while no consumer runs, then drained
//	            through the queue trigger into a one-task no-op workflow,
//	            at each -concurrency: messages/s from consumer start to the
//	            last task start
//	latency     open-loop publishing at -rate/s for -latency-for, default
//	            settings everywhere (adapter, trigger, orchestrator):
//	            publish-to-task-start p50/p99
//
// At concurrency c: orchestrator Workers c with the in-memory store; the
// trigger holds at most c deliveries (c=1: Receivers 1, ReceiveMax 1;
// otherwise Receivers c/10 rounded up, ReceiveMax 10) and, the store being
// in-memory, acks each message after its run finished. The adapter keeps
// its defaults (quorum queue, prefetch following the trigger's demand, so
// it settles at c).
//
// Every round uses a fresh queue (random name), deleted after. Example
// (see docs/queues-amqp.md):
//
//	go run ./bench/amqpbench -n 10000 -rounds 3
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaamqp"
	"github.com/batuta-dev/batuta/bench/internal/queuebench"
	"github.com/batuta-dev/batuta/bench/internal/stats"
	amqp "github.com/rabbitmq/amqp091-go"
)

type options struct {
	url         string
	queueType   string
	prefetch    int
	scenarios   []string
	n           int
	rounds      int
	concurrency []int
	rate        int
	latencyFor  time.Duration
}

func main() {
	var o options
	scenarios := flag.String("scenarios", "throughput,latency", "scenarios to run")
	conc := flag.String("concurrency", "1,50", "concurrency levels for the throughput scenario")
	flag.StringVar(&o.url, "url", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL")
	flag.StringVar(&o.queueType, "queue-type", batutaamqp.QueueTypeQuorum, "quorum or classic")
	flag.IntVar(&o.prefetch, "prefetch", 0, "adapter Config.Prefetch for the throughput scenario (0: the default, following the trigger's demand)")
	flag.IntVar(&o.n, "n", 10000, "messages per throughput round")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds per scenario")
	flag.IntVar(&o.rate, "rate", 200, "messages per second in the latency scenario")
	flag.DurationVar(&o.latencyFor, "latency-for", 10*time.Second, "duration of each latency round")
	flag.Parse()
	o.scenarios = split(*scenarios)
	for _, s := range split(*conc) {
		c, err := strconv.Atoi(s)
		if err != nil || c < 1 {
			fmt.Fprintf(os.Stderr, "amqpbench: bad -concurrency %q\n", s)
			os.Exit(2)
		}
		o.concurrency = append(o.concurrency, c)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "amqpbench:", err)
		os.Exit(1)
	}
}

func split(s string) []string { return queuebench.Split(s) }

func run(ctx context.Context, o options) error {
	admin, err := amqp.Dial(o.url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer admin.Close()
	version, _ := admin.Properties["version"].(string)
	fmt.Printf("amqpbench: %s, GOMAXPROCS %d, RabbitMQ %s, %s queues\n",
		time.Now().Format(time.DateTime), runtime.GOMAXPROCS(0), version, o.queueType)
	b := &bench{o: o, admin: admin}

	if slices.Contains(o.scenarios, "throughput") {
		for _, c := range o.concurrency {
			var res []float64
			fmt.Printf("\n== throughput: %d messages, concurrency %d ==\n", o.n, c)
			for r := 1; r <= o.rounds; r++ {
				mps, err := b.throughput(ctx, o.n, c)
				if err != nil {
					return fmt.Errorf("throughput c=%d: %w", c, err)
				}
				res = append(res, mps)
				fmt.Printf("round %d  %9.0f msg/s\n", r, mps)
			}
			fmt.Printf("-- median of %d rounds, concurrency %d: %.0f msg/s\n", o.rounds, c, stats.Median(res))
		}
	}
	if slices.Contains(o.scenarios, "latency") {
		var p50s, p99s []float64
		fmt.Printf("\n== latency: open loop %d/s for %v, default settings ==\n", o.rate, o.latencyFor)
		for r := 1; r <= o.rounds; r++ {
			ds, err := b.latency(ctx, o.rate, o.latencyFor)
			if err != nil {
				return fmt.Errorf("latency: %w", err)
			}
			p50, p99 := stats.Percentile(ds, 50), stats.Percentile(ds, 99)
			p50s, p99s = append(p50s, stats.Millis(p50)), append(p99s, stats.Millis(p99))
			fmt.Printf("round %d  p50 %8.3f ms   p99 %8.3f ms   (%d messages)\n", r, stats.Millis(p50), stats.Millis(p99), len(ds))
		}
		fmt.Printf("-- median of %d rounds: p50 %.3f ms, p99 %.3f ms\n", o.rounds, stats.Median(p50s), stats.Median(p99s))
	}
	return nil
}

type bench struct {
	o     options
	admin *amqp.Connection
}

// open returns the queuebench.Open of a fresh queue, default adapter
// settings (prefetch aside); its cleanup deletes the queue.
func (b *bench) open(prefetch int) queuebench.Open {
	return func(ctx context.Context) (batuta.Queue, func(), error) {
		cfg := batutaamqp.Config{
			Queue:     "bench-" + queuebench.RandomName(),
			QueueType: b.o.queueType,
			Prefetch:  prefetch,
			Logger:    slog.New(slog.DiscardHandler),
		}
		q, err := batutaamqp.Open(ctx, b.o.url, cfg)
		if err != nil {
			return nil, nil, err
		}
		return q, func() { _ = batutaamqp.DeleteTopology(context.Background(), b.admin, cfg) }, nil
	}
}

// throughput: the trigger holds at most c deliveries (c=1: Receivers 1,
// ReceiveMax 1; otherwise Receivers c/10 rounded up, ReceiveMax 10).
func (b *bench) throughput(ctx context.Context, n, c int) (float64, error) {
	receivers, receiveMax := 1, 1
	if c > 1 {
		receiveMax = 10
		receivers = (c + receiveMax - 1) / receiveMax
	}
	return queuebench.Throughput(ctx, b.open(b.o.prefetch), n, c, receivers, receiveMax)
}

func (b *bench) latency(ctx context.Context, rate int, d time.Duration) ([]time.Duration, error) {
	return queuebench.Latency(ctx, b.open(0), rate, d)
}
