// Package batutaamqp is the RabbitMQ adapter of batuta: a [batuta.Queue] on a
// RabbitMQ queue, through github.com/rabbitmq/amqp091-go, for the queue
// trigger ([batuta.NewQueueTrigger]) and for producers.
//
//	q, err := batutaamqp.Open(ctx, "amqp://user:pass@rabbit:5672/", batutaamqp.Config{Queue: "orders"})
//	...
//	defer q.Close()
//	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, DeadLetter: q.DeadLetters()})
//	...
//	err = orch.Bind("order-placed", trig)
//
// A service that already has a connection passes it to [New] (with
// Config.Redial to let the queue replace it after it drops).
//
// # Guarantees
//
// Delivery is at least once. [Queue.Publish] returns once the broker
// confirmed the message (publisher confirms) and did not return it as
// unroutable; messages are persistent. A delivery is removed only by
// [Queue.Ack] (manual acknowledgement); everything else brings it back:
// [Queue.Nack], the adapter's visibility timer, a closed consumer, a dropped
// connection. A crash between an ack being sent and the broker reading it
// redelivers an already processed message: the queue trigger uses the
// message ID as event ID, so the orchestrator deduplicates the run.
//
// # Message IDs
//
// The ID of a received message (the queue trigger's event ID, by which the
// orchestrator runs a message once however often it is delivered) is its
// message-id property; else the value of the header Config.IDHeader
// ("batuta-event-id" by default), for clients that cannot set message-id;
// else, with Config.ContentID, "sha256:" and the hash of its body and
// headers; else a random ID, logged once as a warning, which changes when
// the broker redelivers the message. The adapter writes the ID it derived
// into the message-id of every copy it republishes (delays, dead letters).
// See docs/queues-amqp.md, "Producing from other languages".
//
// Order: RabbitMQ queues are FIFO and one consumer receives messages in
// queue order until one is redelivered (a requeued or delayed message goes
// behind the others) or until the automatic prefetch grew (see
// Config.Prefetch), after which order holds per consumer.
//
// # Queue type and Delivery.Attempt
//
// The default queue type is quorum, the modern RabbitMQ default: it counts
// deliveries in x-delivery-count, so Delivery.Attempt is exact whatever
// brought the message back (Nack, visibility timer, closed consumer, lost
// connection), it enforces Config.DeliveryLimit as a broker-side backstop,
// and it dead-letters at least once. Attempt is the x-batuta-attempt
// header (the attempt number the adapter republished a message as, 1 if
// absent) plus the broker's count. Classic queues only flag redeliveries:
// the adapter then republishes on Nack and on the visibility timeout, so
// those count exactly, but a redelivery after a dropped connection counts as
// one however many there were.
//
// # Delayed redelivery
//
// RabbitMQ has no delayed redelivery without the delayed-message plugin.
// Nack(d, delay) with delay > 0 publishes a confirmed copy of the message
// (next attempt number in its header) to a wait queue, then acks the
// original. Wait queues are "<queue>.delay.<ms>", one per delay bucket
// (Config.DelayBuckets, 50 ms to 24 h by default), declared on first use
// with a message TTL of the bucket and the queue as dead-letter target
// through the default exchange: when the TTL expires the broker moves the
// message back (at least once for quorum queues). A delay is rounded up to
// the next bucket, so it is never shorter than asked; one TTL per queue
// keeps every wait queue FIFO (per-message TTLs would block behind a long
// one). Nack with no delay on a quorum queue is the broker's own requeue.
//
// # Visibility timeout
//
// RabbitMQ has none: an unacked message stays with its consumer until the
// channel closes (or the broker's consumer_timeout, 30 min by default,
// closes it). The adapter adds one, Config.VisibilityTimeout (30 s by
// default, negative to disable): a delivery held that long is given back
// to the broker for another consumer, with Attempt incremented, and its late
// Ack fails with [batuta.ErrLeaseLost]. Closing a handle gives its unsettled
// deliveries back at once.
//
// # Connection loss
//
// amqp091 does not reconnect by itself (its opt-in recovery reuses channels
// whose delivery tags restart, which would let a stale ack settle another
// message, so [Open] and [New] refuse it). The adapter watches its
// connection and channels and, when one drops, opens new ones with
// exponential backoff and jitter (Config.ReconnectMin/Max), redeclaring the
// topology. Receive and Publish wait for the reconnection (bounded by their
// ctx); a Publish whose confirmation was lost is sent again (at least
// once). Deliveries received before the drop are bound to the dead channel:
// settling them fails with [batuta.ErrLeaseLost] and sends nothing, and the
// broker redelivers their messages.
//
// # Shutdown
//
// [Queue.Close] stops at once: unsettled deliveries go back to the broker.
// [Queue.Shutdown] stops taking deliveries, lets the holders settle what
// they have until its ctx ends, then closes. Neither loses a message nor
// acks one twice.
package batutaamqp
