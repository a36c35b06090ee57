// Command worker shows a producer and competing workers on a queue. Two
// workers (two orchestrators, as two processes would be) consume the same
// queue through a queue trigger each and run the process-order function for
// every message. One message is poison: its handler fails on every attempt,
// so after the last attempt it lands in the dead-letter handler, while every
// other order is processed. A second, malformed message never becomes a
// run: the trigger dead-letters it at once.
//
//	go run ./examples/worker                 # in-memory queue
//	go run ./examples/worker -broker redis   # or nats, amqp (local servers; -url to choose)
//
// With -serve it runs no demo producer: the workers consume until SIGINT or
// SIGTERM, printing each message, so that another producer (redis-cli
// XADD, examples/worker/producers/nats_pub.py, amqp-publish) can drive
// them. -queue NAME fixes the queue (Redis stream NAME, NATS stream NAME
// with subject batuta.NAME, RabbitMQ queue NAME) and keeps it at exit; the
// README's "Examples" section has the commands.
//
//	go run ./examples/worker -broker redis -serve -queue orders
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
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/batuta-dev/batuta"
)

// Order is the message payload.
type Order struct {
	ID         int   `json:"id"`
	TotalCents int64 `json:"total_cents"`
}

const orders = 40

// options are the command-line flags.
type options struct {
	broker string // memory, redis, nats or amqp
	url    string // broker URL; "" for the local server
	queue  string // fixed queue name; "" for a random one, deleted at exit
	serve  bool   // consume until ctx ends instead of running the demo
}

func main() {
	var opt options
	flag.StringVar(&opt.broker, "broker", "memory", "queue: memory, redis, nats or amqp")
	flag.StringVar(&opt.url, "url", "", "broker URL (default: the local server)")
	flag.StringVar(&opt.queue, "queue", "", "queue name: Redis stream, NATS stream (subject batuta.NAME) or RabbitMQ queue; "+
		"kept at exit (default: a random name, deleted at exit)")
	flag.BoolVar(&opt.serve, "serve", false, "no demo: consume until SIGINT/SIGTERM, printing each message (feed it with "+
		"redis-cli XADD, examples/worker/producers/nats_pub.py or amqp-publish)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opt, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

// deadLetters is the dead-letter handler: here it prints and keeps the
// letters; a real one would write to a table, a queue (batuta.DeadLetterQueue)
// or a ticketing system.
type deadLetters struct {
	mu   sync.Mutex
	seen map[string]batuta.DeadLetter // by event ID: a dead letter may repeat after a crash
	got  chan struct{}
	out  io.Writer
}

func (d *deadLetters) HandleDeadLetter(_ context.Context, dl batuta.DeadLetter) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, dup := d.seen[dl.Event.ID]; dup {
		return nil
	}
	d.seen[dl.Event.ID] = dl
	fmt.Fprintf(d.out, "dead letter: message %s (%s after %d attempts): %s\n", dl.Event.ID, dl.Reason, dl.Attempts, dl.Error)
	select {
	case d.got <- struct{}{}:
	default: // -serve: nobody counts them
	}
	return nil
}

// run runs the demo, or with opt.serve the workers alone until ctx ends,
// writing what happens to out.
func run(ctx context.Context, opt options, out io.Writer) error {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	if opt.serve && opt.broker == "memory" {
		return errors.New("-serve needs a broker another program can write to: -broker redis, nats or amqp")
	}

	b, err := openBroker(opt.broker, opt.url, opt.queue)
	if err != nil {
		return err
	}
	defer b.cleanup(context.WithoutCancel(ctx))
	dead := &deadLetters{seen: map[string]batuta.DeadLetter{}, got: make(chan struct{}, 4), out: out}
	var processed atomic.Int64
	perWorker := make([]atomic.Int64, 2)

	// Two workers, each an orchestrator with its own connection (handle)
	// to the queue.
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var handles []batuta.Queue
	defer func() {
		cancel()
		wg.Wait() // the workers stop first, then their queue handles close
		for _, h := range handles {
			h.Close()
		}
	}()
	// The workers share one store, as two processes would share one
	// database (batutapg): a message delivered to both, or sent twice with
	// the same ID, starts one run.
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	for w := range perWorker {
		o, err := batuta.New(batuta.Config{Store: store, Logger: logger, Workers: 4})
		if err != nil {
			return err
		}
		err = batuta.RegisterFunc(o, batuta.FunctionConfig{
			Name:        "process-order",
			Concurrency: 2,
			Timeout:     5 * time.Second,
			Retry:       batuta.RetryPolicy{MaxAttempts: 3, InitialDelay: 10 * time.Millisecond},
			DeadLetter:  dead,
		}, func(ctx context.Context, order Order) (string, error) {
			if order.TotalCents < 0 {
				return "", fmt.Errorf("order %d: negative total %d", order.ID, order.TotalCents)
			}
			processed.Add(1)
			perWorker[w].Add(1)
			if opt.serve {
				in, _ := batuta.InputFromContext(ctx)
				ev := in.Event()
				fmt.Fprintf(out, "worker %d: processed order %d (message %s, type %q, total %d cents)\n",
					w+1, order.ID, ev.ID, ev.Type, order.TotalCents)
			}
			return "order " + strconv.Itoa(order.ID) + " packed", nil
		})
		if err != nil {
			return err
		}
		wq, err := b.open(ctx) // each worker its own handle, as its own process would
		if err != nil {
			return err
		}
		handles = append(handles, wq)
		trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
			Queue:         wq,
			Receivers:     2,
			MaxDeliveries: 5,
			DeadLetter:    dead,
			Logger:        logger,
			// Reject what is not an order before it becomes a run.
			Event: func(d batuta.Delivery) (batuta.Event, error) {
				if opt.serve {
					fmt.Fprintf(out, "worker %d: received message %s (attempt %d)\n", w+1, d.ID, d.Attempt)
				}
				if !json.Valid(d.Body) {
					return batuta.Event{}, errors.New("body is not JSON")
				}
				return batuta.DefaultQueueEvent(d, "queue/orders"), nil
			},
		})
		if err != nil {
			return err
		}
		if err := o.Bind("process-order", trig); err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := o.Run(runCtx); err != nil {
				fmt.Fprintln(os.Stderr, "worker:", err)
			}
		}()
	}

	if opt.serve {
		fmt.Fprintf(out, "serving %s; stop with Ctrl-C or SIGTERM\n", b.describe)
		<-ctx.Done()
		cancel()
		wg.Wait()
		dead.mu.Lock()
		n := len(dead.seen)
		dead.mu.Unlock()
		fmt.Fprintf(out, "stopped: processed %d orders (worker 1: %d, worker 2: %d), %d dead letters\n",
			processed.Load(), perWorker[0].Load(), perWorker[1].Load(), n)
		return nil
	}

	// The producer: orders, one poison order, one malformed message.
	queue, err := b.open(ctx) // the producer's handle
	if err != nil {
		return err
	}
	defer queue.Close()
	for i := 1; i <= orders; i++ {
		total := int64(100 * i)
		if i == 13 {
			total = -1 // poison
		}
		body, _ := json.Marshal(Order{ID: i, TotalCents: total})
		if err := queue.Publish(ctx, batuta.Message{ID: fmt.Sprintf("order-%d", i), Body: body}); err != nil {
			return err
		}
	}
	if err := queue.Publish(ctx, batuta.Message{ID: "garbage-1", Body: []byte("<xml>not an order</xml>")}); err != nil {
		return err
	}

	deadline := time.After(30 * time.Second)
	for range 2 {
		select {
		case <-dead.got:
		case <-deadline:
			return errors.New("timed out waiting for the dead letters")
		}
	}
	for processed.Load() < orders-1 {
		select {
		case <-deadline:
			return fmt.Errorf("timed out: %d orders processed", processed.Load())
		case <-time.After(5 * time.Millisecond): // polling a counter for the demo's exit
		}
	}
	fmt.Fprintf(out, "broker %s: processed %d orders (worker 1: %d, worker 2: %d)\n",
		opt.broker, processed.Load(), perWorker[0].Load(), perWorker[1].Load())
	ids := make([]string, 0, len(dead.seen))
	dead.mu.Lock()
	for id := range dead.seen {
		ids = append(ids, id)
	}
	dead.mu.Unlock()
	sort.Strings(ids)
	fmt.Fprintf(out, "dead letters: %v\n", ids)
	if processed.Load() != orders-1 || len(ids) != 2 {
		return fmt.Errorf("want %d orders processed and 2 dead letters", orders-1)
	}
	return nil
}
