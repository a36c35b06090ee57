// Package batutanats is a batuta.Queue on NATS JetStream (nats-io/nats.go,
// the jetstream package), so a batuta queue trigger can consume a stream
// through a durable pull consumer.
//
// # How messages move
//
// Publish publishes to Config.Subject and waits for the stream's
// acknowledgement (PubAck), with the message ID as Nats-Msg-Id so the
// stream drops a duplicate publish within its duplicate window (2 minutes
// by default): a Publish retried after a lost PubAck stores the message
// once. Receive pulls from a durable consumer (Config.Consumer) with explicit
// acks: a FetchNoWait for what is ready, else a Fetch of one message that
// waits up to Config.PollWait. Ack waits for the server's confirmation
// (DoubleAck). Nack(delay) is a NAK with that delay (NakWithDelay), so the
// server redelivers it no sooner. A delivery that is neither acked nor nacked
// is redelivered by the server after Config.AckWait, the visibility
// timeout; long handlers keep it with Extend (an in-progress ack).
// Delivery.Attempt is the server's delivery count (NumDelivered).
//
// # Guarantees
//
// Delivery is at least once. A single consumer receives new messages in
// stream order, but a redelivery comes out of order, so the adapter does not
// promise ordering. JetStream acks by stream sequence: unlike batutaredis,
// a late Ack of a delivery that was already redelivered acks the message
// for its new holder too (who then sees its own Ack succeed or fail with
// "already acknowledged" harmlessly).
//
// # Stream and consumer
//
// Unless Config.NoCreate, New creates the stream if it is missing (work-queue
// retention, so acked messages are removed; subjects Config.Subject and
// Config.DeadLetterSubject; file storage; limits from Config) and creates or
// updates the durable consumer (pull, explicit ack, AckWait,
// MaxDeliver, filter Config.Subject). An existing stream is never
// modified, only checked: it must capture Config.Subject. With NoCreate,
// New fails with ErrStreamNotFound unless both exist.
//
// # Dead letters
//
// The queue trigger dead-letters by Delivery.Attempt through its own
// DeadLetterHandler. The adapter can also do it by itself: with
// Config.MaxDeliveries set, the server stops redelivering after
// MaxDeliveries+1 deliveries (MaxDeliver), and the adapter publishes a
// message whose delivery count went past MaxDeliveries (a consumer crashed
// on it each time) to Config.DeadLetterSubject, with the reason in the
// Batuta-Dead-Reason header, and acks it. DeadLetter does the same on
// demand. A dead letter that the added headers push over the server's
// max_payload has its body cut to fit (headers batuta-dead-letter-truncated,
// -body-size, -body-sha256 and Batuta-Dead-Source-Seq say what was cut and
// where it came from); the reason is cut to 1 KiB.
//
// Publish refuses a body over Config.MaxBodyBytes, or over what the
// server's max_payload leaves after the headers, with a
// *batuta.PayloadTooLargeError whose Limit is the room left, so
// batuta.DeadLetterQueue over a batutanats queue cuts an oversized dead
// letter to fit instead of failing its hand-off.
package batutanats
