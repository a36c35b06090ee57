// Package batutaredis is a batuta.Queue on Redis Streams (redis/go-redis/v9,
// Redis 6.2 or later), so a batuta queue trigger can consume a stream with a
// consumer group.
//
// # How messages move
//
// Publish appends an entry to the stream (XADD, trimmed with MAXLEN ~ when
// Config.MaxLen is set). Receive reads new entries for this handle's
// consumer in the group (XREADGROUP ... >). Ack settles an entry (XACK, and
// XDEL unless Config.RetainAcked, so the stream holds only unsettled
// messages). A delivery that is neither acked nor nacked stays in the
// group's pending entries list (PEL); once it has been idle for
// Config.VisibilityTimeout, any consumer of the group takes it over and
// delivers it again. Long handlers keep it with Extend. The take-over is
// XAUTOCLAIM's min-idle claim, done as XPENDING ... IDLE + XCLAIM in one Lua
// script, every Config.ClaimInterval: unlike XAUTOCLAIM it reports the
// delivery counts (needed for Delivery.Attempt) in the same round trip and
// has no cursor that a busy consumer's new deliveries keep ahead of.
//
// One read takes up to Config.ReadAhead entries beyond what Receive asked
// for (default 16) and keeps them for the next Receive calls, so a
// consumer that receives one message at a time does not pay a round trip
// per message; while a read found entries, the next one is made without
// blocking on the caller's goroutine. The handle extends the visibility of
// the entries it keeps (XCLAIM ... JUSTID every VisibilityTimeout/3) and
// Close hands them back without counting a delivery.
//
// With Config.MaxDeliveries, an entry about to be delivered once too often
// is moved to the dead-letter stream by the adapter itself; if that move
// fails, the entry is parked in the delayed set for
// Config.DeadLetterParkDelay (default 1 h) and the failure logged at error
// level, so a broken dead-letter stream costs one try per park delay.
//
// Nack(delay) re-adds a copy of the entry and acks the original, atomically
// in one Lua script: at once to the end of the stream when delay is 0, or
// into a companion sorted set "{<stream>}:delayed" scored by the due time
// (Redis server time), from which it is moved back into the stream when due.
// The copy carries the number of deliveries spent so far in its "attempts"
// field, so Delivery.Attempt keeps counting across copies: Attempt =
// attempts + the entry's delivery count in the PEL. Why a copy rather than
// leaving the entry pending: a pending entry can only be made visible again
// by idling it past the visibility timeout, so a delayed nack would be
// bounded below by the visibility timeout and above by the next claim scan;
// a scored set gives an exact, durable "not before" time, survives the
// consumer's death (any consumer moves due entries) and the one-script
// move cannot lose or duplicate the message.
//
// # Guarantees
//
// Delivery is at least once: a message is removed only by Ack, and a
// consumer that dies leaves its deliveries in the PEL for the others. A
// single consumer receives new messages in publish order, but redeliveries
// (nack, visibility timeout, a closed consumer) join the back of the stream,
// so the adapter does not promise ordering. Ack, Nack and Extend are fenced:
// they act only if the delivery is still held by this handle with the same
// delivery count, and otherwise fail with batuta.ErrLeaseLost (the message
// was taken over after the visibility timeout and is being handled
// elsewhere).
//
// Config.MaxLen trims the oldest entries whatever their state: a cap below
// the backlog drops unconsumed messages. It is off by default; with the
// default Ack (XACK + XDEL) the stream holds only unsettled messages anyway.
//
// # Keys
//
// The stream key is Config.Stream. The delayed set is "{<stream>}:delayed",
// which hashes to the same cluster slot as the stream, so the Lua scripts
// work on Redis Cluster. Dead letters go to Config.DeadLetterStream
// (default "<stream>:dead"), moved whole (Redis takes up to its
// proto-max-bulk-len, 512 MB), with the reason cut to 1 KiB. Publish
// refuses a body over Config.MaxBodyBytes with a
// *batuta.PayloadTooLargeError, so batuta.DeadLetterQueue over a
// batutaredis queue cuts an oversized dead letter to that limit (with its
// original size and hash in headers) instead of failing its hand-off.
//
// # Entry format
//
// Fields: "id" (Message.ID), "body", "time" (RFC 3339, nanoseconds),
// "headers" (a JSON object, omitted when empty) and "attempts" (deliveries
// spent by earlier copies, absent for a fresh message). Entries written by
// other producers are accepted: a missing or empty "id" becomes the stream
// entry ID (kept by every redelivery and re-added copy), a missing "time"
// the entry ID's timestamp, and unknown fields become headers. See
// docs/queues-redis-nats.md, "Producing from other languages".
package batutaredis
