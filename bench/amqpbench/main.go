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
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaamqp"
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

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

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

// open returns a queue handle on a fresh queue, default adapter settings,
// (prefetch aside), and a func that closes it and deletes the queue.
func (b *bench) open(ctx context.Context, prefetch int) (*batutaamqp.Queue, func(), error) {
	cfg := batutaamqp.Config{
		Queue:     "bench-" + strings.ToLower(rand.Text()[:12]),
		QueueType: b.o.queueType,
		Prefetch:  prefetch,
		Logger:    slog.New(slog.DiscardHandler),
	}
	q, err := batutaamqp.Open(ctx, b.o.url, cfg)
	if err != nil {
		return nil, nil, err
	}
	return q, func() {
		_ = q.Close()
		_ = batutaamqp.DeleteTopology(context.Background(), b.admin, cfg)
	}, nil
}

// publishAll publishes n messages with 32 publishers.
func publishAll(ctx context.Context, q batuta.Queue, n int) error {
	const publishers = 32
	var wg sync.WaitGroup
	errc := make(chan error, publishers)
	for p := range publishers {
		wg.Go(func() {
			for i := p; i < n; i += publishers {
				if err := q.Publish(ctx, batuta.Message{ID: "m-" + strconv.Itoa(i), Body: []byte(`{}`)}); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// runTrigger runs an orchestrator with one no-op workflow fed by a queue
// trigger over q until stop is closed. task is called at each task start.
func runTrigger(ctx context.Context, q batuta.Queue, ocfg batuta.Config, tcfg batuta.QueueTriggerConfig,
	task func(in *batuta.Input), started func(), stop <-chan struct{}) error {
	ocfg.Logger = slog.New(slog.DiscardHandler)
	o, err := batuta.New(ocfg)
	if err != nil {
		return err
	}
	wf := &batuta.Workflow{Name: "bench", Tasks: []batuta.Task{{
		Name: "noop",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			task(in)
			return nil, nil
		},
	}}}
	if err := o.Register(wf); err != nil {
		return err
	}
	tcfg.Queue = q
	tcfg.DeadLetter = batuta.DeadLetterFunc(func(ctx context.Context, dl batuta.DeadLetter) error {
		return fmt.Errorf("unexpected dead letter: %s %s", dl.Reason, dl.Error)
	})
	tcfg.Logger = slog.New(slog.DiscardHandler)
	t, err := batuta.NewQueueTrigger(tcfg)
	if err != nil {
		return err
	}
	if err := o.Bind("bench", t); err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	started()
	go func() { done <- o.Run(rctx) }()
	select {
	case <-stop:
	case <-ctx.Done():
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

func (b *bench) throughput(ctx context.Context, n, c int) (float64, error) {
	q, cleanup, err := b.open(ctx, b.o.prefetch)
	if err != nil {
		return 0, err
	}
	defer cleanup()
	if err := publishAll(ctx, q, n); err != nil {
		return 0, fmt.Errorf("prefill: %w", err)
	}
	receivers, receiveMax := 1, 1
	if c > 1 {
		receiveMax = 10
		receivers = (c + receiveMax - 1) / receiveMax
	}
	var (
		count   atomic.Int64
		start   time.Time
		last    atomic.Int64 // unix nanos of the n-th task start
		stop    = make(chan struct{})
		stopped sync.Once
	)
	err = runTrigger(ctx, q,
		batuta.Config{
			Store:           batuta.NewMemoryStore(batuta.MemoryStoreConfig{KeepFinished: 1000}),
			Workers:         c,
			MaxInFlightRuns: -1,
			NoLogHooks:      true,
		},
		batuta.QueueTriggerConfig{Receivers: receivers, ReceiveMax: receiveMax},
		func(*batuta.Input) {
			if count.Add(1) == int64(n) {
				last.Store(time.Now().UnixNano())
				stopped.Do(func() { close(stop) })
			}
		},
		func() { start = time.Now() },
		stop)
	if err != nil {
		return 0, err
	}
	elapsed := time.Duration(last.Load() - start.UnixNano())
	return float64(n) / elapsed.Seconds(), nil
}

func (b *bench) latency(ctx context.Context, rate int, d time.Duration) ([]time.Duration, error) {
	q, cleanup, err := b.open(ctx, 0)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	total := int(float64(rate) * d.Seconds())
	var (
		mu      sync.Mutex
		lats    = make([]time.Duration, 0, total)
		warm    = make(chan struct{})
		warmed  sync.Once
		stop    = make(chan struct{})
		stopped sync.Once
	)
	task := func(in *batuta.Input) {
		now := time.Now()
		var sent int64
		if err := json.Unmarshal(in.Event().Data, &sent); err != nil || sent == 0 {
			warmed.Do(func() { close(warm) })
			return
		}
		mu.Lock()
		lats = append(lats, now.Sub(time.Unix(0, sent)))
		full := len(lats) == total
		mu.Unlock()
		if full {
			stopped.Do(func() { close(stop) })
		}
	}
	errc := make(chan error, 1)
	go func() {
		// Default settings: orchestrator, trigger and adapter defaults.
		errc <- runTrigger(ctx, q, batuta.Config{}, batuta.QueueTriggerConfig{}, task, func() {}, stop)
	}()
	if err := q.Publish(ctx, batuta.Message{ID: "warm", Body: []byte(`0`)}); err != nil {
		return nil, err
	}
	select {
	case <-warm:
	case err := <-errc:
		return nil, fmt.Errorf("trigger stopped during warm-up: %w", err)
	case <-time.After(30 * time.Second):
		return nil, errors.New("warm-up message not processed within 30s")
	}
	if err := openLoop(ctx, rate, total, func(i int) error {
		sent := time.Now()
		return q.Publish(ctx, batuta.Message{ID: "m-" + strconv.Itoa(i), Body: fmt.Appendf(nil, "%d", sent.UnixNano())})
	}); err != nil {
		return nil, err
	}
	select {
	case <-stop:
	case <-time.After(60 * time.Second):
		mu.Lock()
		got := len(lats)
		mu.Unlock()
		return nil, fmt.Errorf("only %d of %d messages processed within 60s of the last publish", got, total)
	}
	if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
		return nil, err
	}
	return lats, nil
}

// openLoop calls publish total times at rate per second on a fixed
// schedule, each call in its own goroutine so a slow call does not delay
// the next (open loop).
func openLoop(ctx context.Context, rate, total int, publish func(i int) error) error {
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for i := range total {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				wg.Wait()
				return ctx.Err()
			}
		}
		wg.Go(func() {
			if err := publish(i); err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	return nil
}
