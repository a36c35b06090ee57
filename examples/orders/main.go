// Command orders is batuta's seed scenario: an order is placed -> validate,
// charge, then send a confirmation email and reserve stock in parallel ->
// mark complete. It submits a handful of orders, waits for their runs and
// prints each run's task states.
//
//	go run ./examples/orders
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
)

// Order is the event payload.
type Order struct {
	ID         int64  `json:"id"`
	Customer   string `json:"customer"`
	TotalCents int64  `json:"total_cents"`
}

// Charge is the output of the charge task.
type Charge struct {
	PaymentID string `json:"payment_id"`
	Amount    int64  `json:"amount"`
}

func main() {
	n := flag.Int("n", 5, "orders to place")
	flag.Parse()
	if err := run(*n); err != nil {
		fmt.Fprintln(os.Stderr, "orders:", err)
		os.Exit(1)
	}
}

// orderWorkflow builds the order-placed workflow. flaky makes the payment
// provider fail on the first try of every third order, to show retries.
func orderWorkflow(flaky *atomic.Int64) *batuta.Workflow {
	return &batuta.Workflow{
		Name:    "order-placed",
		Timeout: time.Minute,
		Tasks: []batuta.Task{
			{Name: "validate", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				o, err := batuta.EventData[Order](in)
				if err != nil {
					return nil, batuta.Permanent(err)
				}
				if o.TotalCents <= 0 {
					return nil, batuta.Permanent(fmt.Errorf("order %d: total must be positive", o.ID))
				}
				return o, nil
			}},
			{Name: "charge", Deps: []string{"validate"},
				Retry: batuta.RetryPolicy{MaxAttempts: 3, InitialDelay: 10 * time.Millisecond},
				Run: func(ctx context.Context, in *batuta.Input) (any, error) {
					o, err := batuta.Output[Order](in, "validate")
					if err != nil {
						return nil, err
					}
					if o.ID%3 == 0 && in.Attempt() == 1 {
						flaky.Add(1)
						return nil, errors.New("payment provider timed out")
					}
					// in.IdempotencyKey() is what a real payment API gets, so a retry never charges twice.
					return Charge{PaymentID: "pay_" + in.IdempotencyKey()[:8], Amount: o.TotalCents}, nil
				}},
			{Name: "send-email", Deps: []string{"charge"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				c, err := batuta.Output[Charge](in, "charge")
				return fmt.Sprintf("receipt for %s sent", c.PaymentID), err
			}},
			{Name: "reserve-stock", Deps: []string{"charge"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				return "reserved", nil
			}},
			{Name: "complete", Deps: []string{"send-email", "reserve-stock"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				return "done", nil
			}},
		},
	}
}

func run(n int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var flaky atomic.Int64
	o, err := batuta.New(batuta.Config{Logger: logger})
	if err != nil {
		return err
	}
	if err := o.Register(orderWorkflow(&flaky)); err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(runCtx) }()
	defer func() { cancel(); <-done }()

	var ids []string
	for i := 1; i <= n; i++ {
		data := fmt.Sprintf(`{"id":%d,"customer":"customer-%d","total_cents":%d}`, i, i, 1000*i)
		id, err := o.Submit(ctx, "order-placed", batuta.Event{
			ID: fmt.Sprintf("order-%d", i), Source: "examples/orders", Type: "order.placed", Data: []byte(data),
		})
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	waitCtx, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	defer cancelWait()
	failed := 0
	for _, id := range ids {
		r, err := o.Wait(waitCtx, id)
		if err != nil {
			return err
		}
		printRun(r)
		if r.State != batuta.RunSucceeded {
			failed++
		}
	}
	fmt.Printf("%d runs, %d failed, %d payment retries\n", len(ids), failed, flaky.Load())
	if failed > 0 {
		return fmt.Errorf("%d runs failed", failed)
	}
	return nil
}

func printRun(r *batuta.Run) {
	fmt.Printf("run %s (%s) %s in %s\n", r.ID, r.Event.ID, r.State, r.FinishedAt.Sub(r.CreatedAt).Round(time.Microsecond))
	for _, t := range r.Tasks {
		extra := ""
		if len(t.Attempts) > 1 {
			extra = fmt.Sprintf(" after %d attempts", len(t.Attempts))
		}
		if t.Error != "" {
			extra += " error: " + strings.SplitN(t.Error, "\n", 2)[0]
		}
		fmt.Printf("  %-14s %-9s%s\n", t.Name, t.State, extra)
	}
}
