package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
)

// The in-memory queue: publish, receive, settle. A nacked message comes
// back with its Attempt incremented.
func ExampleMemoryQueue() {
	q, _ := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{VisibilityTimeout: 30 * time.Second})
	defer q.Close()
	ctx := context.Background()
	_ = q.Publish(ctx, batuta.Message{ID: "m-1", Body: []byte(`{"n":1}`)})

	ds, _ := q.Receive(ctx, 10)
	fmt.Println(ds[0].ID, string(ds[0].Body), ds[0].Attempt)
	_ = q.Nack(ctx, ds[0], 0) // not now: deliver it again

	ds, _ = q.Receive(ctx, 10)
	fmt.Println(ds[0].ID, ds[0].Attempt)
	_ = q.Ack(ctx, ds[0]) // done: gone for good
	fmt.Println(q.Len())
	// Output:
	// m-1 {"n":1} 1
	// m-1 2
	// 0
}

// The queue trigger feeds a function from a queue. Each message runs the
// function once; a message whose handler keeps failing ends in the
// function's dead-letter destination.
func ExampleNewQueueTrigger() {
	q, _ := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	defer q.Close()
	undeliverable, _ := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	defer undeliverable.Close()
	o, _ := batuta.New(batuta.Config{Logger: lambdaQuiet})
	dead := make(chan batuta.DeadLetter, 1)
	handled := make(chan string, 10)
	_ = batuta.RegisterFunc(o, batuta.FunctionConfig{
		Name:       "process-order",
		Retry:      batuta.RetryPolicy{MaxAttempts: 2, InitialDelay: time.Millisecond},
		DeadLetter: batuta.DeadLetterFunc(func(_ context.Context, dl batuta.DeadLetter) error { dead <- dl; return nil }),
	}, func(ctx context.Context, order string) (string, error) {
		if strings.HasPrefix(order, "poison") {
			return "", errors.New("cannot process " + order)
		}
		handled <- order
		return "ok", nil
	})
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue:      q,
		Receivers:  1,
		DeadLetter: batuta.DeadLetterQueue(undeliverable), // messages that cannot become runs
		Logger:     lambdaQuiet,
	})
	if err != nil {
		panic(err)
	}
	_ = o.Bind("process-order", trig)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	defer func() { stop(); <-done }()

	for _, body := range []string{`"order-1"`, `"poison-2"`, `"order-3"`} {
		_ = q.Publish(ctx, batuta.Message{ID: strings.Trim(body, `"`), Body: []byte(body)})
	}
	a, b := <-handled, <-handled
	dl := <-dead
	fmt.Println(min(a, b), max(a, b))
	fmt.Println(dl.Event.ID, dl.Attempts, dl.Error)
	// Output:
	// order-1 order-3
	// poison-2 2 cannot process poison-2
}
