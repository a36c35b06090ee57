package batutanats_test

import (
	"context"
	"log"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutanats"
)

// A queue trigger over a JetStream stream: each message on subject
// batuta.orders starts a run of process-order; a message that fails
// MaxDeliveries times goes to the "orders_dead" stream. (Needs a server, so
// it is compiled, not run.)
func Example() {
	ctx := context.Background()
	q, err := batutanats.Open(ctx, "nats://127.0.0.1:4222", batutanats.Config{Stream: "orders"})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()
	dead, err := batutanats.Open(ctx, "nats://127.0.0.1:4222", batutanats.Config{Stream: "orders_dead"})
	if err != nil {
		log.Fatal(err)
	}
	defer dead.Close()

	o, err := batuta.New(batuta.Config{})
	if err != nil {
		log.Fatal(err)
	}
	err = o.Register(&batuta.Workflow{Name: "process-order", Tasks: []batuta.Task{{
		Name: "process",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			msg, err := batuta.QueueMessageFrom(in.Event())
			if err != nil {
				return nil, err
			}
			return len(msg.Body), nil
		},
	}}})
	if err != nil {
		log.Fatal(err)
	}
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: q, Receivers: 4, MaxDeliveries: 5,
		DeadLetter: batuta.DeadLetterQueue(dead),
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := o.Bind("process-order", trig); err != nil {
		log.Fatal(err)
	}
	if err := q.Publish(ctx, batuta.Message{ID: "order-42", Body: []byte(`{"order":42}`)}); err != nil {
		log.Fatal(err)
	}
	_ = o.Run(ctx) // until ctx ends
}
