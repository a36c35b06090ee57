// Command worker shows a producer and competing workers on the in-memory
// queue. Two workers (two orchestrators, as two processes would be) consume
// the same queue through a queue trigger each and run the process-order
// function for every message. One message is poison: its handler fails on
// every attempt, so after the last attempt it lands in the dead-letter
// handler, while every other order is processed. A second, malformed
// message never becomes a run: the trigger dead-letters it at once.
//
//	go run ./examples/worker                 # in-memory queue
//	go run ./examples/worker -broker redis   # or nats, amqp (local servers; -url to choose)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
)

// Order is the message payload.
type Order struct {
	ID         int   `json:"id"`
	TotalCents int64 `json:"total_cents"`
}

const orders = 40

func main() {
	kind := flag.String("broker", "memory", "queue: memory, redis, nats or amqp")
	url := flag.String("url", "", "broker URL (default: the local server)")
	flag.Parse()
	if err := run(*kind, *url); err != nil {
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
}

func (d *deadLetters) HandleDeadLetter(_ context.Context, dl batuta.DeadLetter) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, dup := d.seen[dl.Event.ID]; dup {
		return nil
	}
	d.seen[dl.Event.ID] = dl
	fmt.Printf("dead letter: message %s (%s after %d attempts): %s\n", dl.Event.ID, dl.Reason, dl.Attempts, dl.Error)
	d.got <- struct{}{}
	return nil
}

func run(kind, url string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

	b, err := openBroker(kind, url)
	if err != nil {
		return err
	}
	defer b.cleanup(context.WithoutCancel(ctx))
	queue, err := b.open(ctx) // the producer's handle
	if err != nil {
		return err
	}
	defer queue.Close()
	dead := &deadLetters{seen: map[string]batuta.DeadLetter{}, got: make(chan struct{}, 4)}
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
	for w := range perWorker {
		o, err := batuta.New(batuta.Config{Logger: logger, Workers: 4})
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

	// The producer: orders, one poison order, one malformed message.
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
	fmt.Printf("broker %s: processed %d orders (worker 1: %d, worker 2: %d)\n",
		kind, processed.Load(), perWorker[0].Load(), perWorker[1].Load())
	ids := make([]string, 0, len(dead.seen))
	dead.mu.Lock()
	for id := range dead.seen {
		ids = append(ids, id)
	}
	dead.mu.Unlock()
	sort.Strings(ids)
	fmt.Printf("dead letters: %v\n", ids)
	if processed.Load() != orders-1 || len(ids) != 2 {
		return fmt.Errorf("want %d orders processed and 2 dead letters", orders-1)
	}
	return nil
}
