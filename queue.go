package batuta

import (
	"context"
	"time"
)

// A Message is what a producer publishes to a Queue.
type Message struct {
	// ID identifies the message. If empty, Publish assigns a unique one.
	// The queue trigger uses it as the Event ID, so a redelivered message
	// is deduplicated by the orchestrator.
	ID string
	// Body is the payload (JSON by convention). It may be empty.
	Body []byte
	// Headers are string attributes carried with the message.
	Headers map[string]string
	// Time is when the message was first published. Publish sets it if
	// zero. The queue trigger's maximum message age counts from it.
	Time time.Time
}

// A Delivery is one receipt of a message by a consumer. It must be settled
// exactly once, with Queue.Ack or Queue.Nack; an unsettled delivery is
// redelivered after the queue's visibility timeout (or when the consumer
// closes), never lost.
type Delivery struct {
	Message
	// Attempt counts deliveries of this message, from 1.
	Attempt int
	// Receipt is the adapter's handle for settling the delivery (a stream
	// entry ID, a JetStream message, a delivery tag). Callers treat it as
	// opaque.
	Receipt any
}

// A Queue is a message broker seen by batuta: publish, receive with explicit
// settlement, close. The in-memory queue (NewMemoryQueue) lives in the core;
// batutaredis, batutanats and batutaamqp adapt real brokers. Every Queue
// passes the conformance suite in package batutatest.
//
// Delivery is at least once. Ordering is not promised unless an adapter
// documents it. All methods are safe for concurrent use.
type Queue interface {
	// Publish sends msg durably (as durable as the broker is: the call
	// returns once the broker confirmed it).
	Publish(ctx context.Context, msg Message) error
	// Receive blocks until at least one message is available, ctx ends, or
	// the queue is closed, and returns up to max deliveries (max >= 1).
	// After Close it returns ErrClosed.
	Receive(ctx context.Context, max int) ([]Delivery, error)
	// Ack settles a delivery: the message is gone for good.
	Ack(ctx context.Context, d Delivery) error
	// Nack settles a delivery for redelivery after delay (0: as soon as
	// possible), with its Attempt incremented.
	Nack(ctx context.Context, d Delivery, delay time.Duration) error
	// Close stops the queue's consumers: pending Receive calls return
	// ErrClosed, unsettled deliveries become available to other consumers.
	// It does not delete the queue or its messages.
	Close() error
}

// An Extender is a Queue that can keep a delivery invisible longer: Extend
// restarts the visibility timeout of a delivery its consumer still holds
// (Redis: XCLAIM of the entry to itself; JetStream: an in-progress ack).
// It returns an error matching ErrLeaseLost when the delivery is no longer
// held. The queue trigger calls it while a delivery waits for its run to
// finish, so a run longer than the visibility timeout is not redelivered.
type Extender interface {
	Extend(ctx context.Context, d Delivery) error
}
