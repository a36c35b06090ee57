package batutaamqp_test

import (
	"context"
	"log"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaamqp"
	amqp "github.com/rabbitmq/amqp091-go"
)

// A queue trigger over RabbitMQ: messages on "orders" start runs of the
// order-placed workflow; messages that fail MaxDeliveries times go to
// "orders.dead". (Needs a broker, so it is compiled, not run.)
func Example() {
	ctx := context.Background()
	q, err := batutaamqp.Open(ctx, "amqp://guest:guest@127.0.0.1:5672/", batutaamqp.Config{Queue: "orders"})
	if err != nil {
		log.Fatal(err) // the URL's password is redacted in err
	}
	defer q.Close()

	orch, err := batuta.New(batuta.Config{})
	if err != nil {
		log.Fatal(err)
	}
	// ... orch.Register(orderPlaced) ...
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, DeadLetter: q.DeadLetters()})
	if err != nil {
		log.Fatal(err)
	}
	if err := orch.Bind("order-placed", trig); err != nil {
		log.Fatal(err)
	}
	// A producer elsewhere:
	if err := q.Publish(ctx, batuta.Message{ID: "order-42", Body: []byte(`{"order":42}`)}); err != nil {
		log.Fatal(err)
	}
	_ = orch.Run(ctx)
}

// New reuses a connection the service already has; Redial lets the queue
// replace it if it closes.
func ExampleNew() {
	ctx := context.Background()
	url := "amqp://guest:guest@127.0.0.1:5672/"
	conn, err := amqp.Dial(url)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	q, err := batutaamqp.New(ctx, conn, batutaamqp.Config{
		Queue:  "orders",
		Redial: func(context.Context) (*amqp.Connection, error) { return amqp.Dial(url) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()
	// Graceful stop: let the holders settle what they have, then close
	// (bound the wait with a ctx deadline).
	defer q.Shutdown(ctx)
}
