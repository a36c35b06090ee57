package batutaredis_test

import (
	"context"
	"log"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
)

// A queue trigger over a Redis stream: each message on "orders" starts a
// run of process-order; a message that fails MaxDeliveries times goes to
// the "orders:dead" stream. (Needs a server, so it is compiled, not run.)
func Example() {
	ctx := context.Background()
	q, err := batutaredis.Open(ctx, "redis://127.0.0.1:6379", batutaredis.Config{Stream: "orders"})
	if err != nil {
		log.Fatal(err) // the URL's password is redacted in err
	}
	defer q.Close()
	dead, err := batutaredis.Open(ctx, "redis://127.0.0.1:6379", batutaredis.Config{Stream: "orders:dead"})
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
	// A producer elsewhere (or redis-cli XADD, see docs/queues-redis-nats.md):
	if err := q.Publish(ctx, batuta.Message{ID: "order-42", Body: []byte(`{"order":42}`)}); err != nil {
		log.Fatal(err)
	}
	_ = o.Run(ctx) // until ctx ends
}
