package batutaamqp

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Queue types accepted by Config.QueueType.
const (
	// QueueTypeQuorum is a replicated, Raft-based queue: the modern RabbitMQ
	// default. It counts deliveries (x-delivery-count), so Delivery.Attempt
	// is exact, enforces a delivery limit, and dead-letters at least once.
	QueueTypeQuorum = "quorum"
	// QueueTypeClassic is the older, single-node queue type. It only flags
	// redeliveries, so Attempt is exact only for redeliveries the adapter
	// makes itself (Nack, visibility timeout); see the package doc.
	QueueTypeClassic = "classic"
)

// Defaults of Config.
const (
	DefaultVisibilityTimeout    = 30 * time.Second
	DefaultDeliveryLimit        = 20
	DefaultReconnectMin         = 100 * time.Millisecond
	DefaultReconnectMax         = 10 * time.Second
	DefaultMaxInFlightPublishes = 1024
	DefaultDialTimeout          = 30 * time.Second
	// DefaultIDHeader is the header Config.IDHeader defaults to: the message
	// ID of a message published without the message-id property, e.g. by
	// amqp-publish -H "batuta-event-id: order-7".
	DefaultIDHeader = "batuta-event-id"
)

// DefaultDelayBuckets are the waits a Nack delay is rounded up to when
// Config.DelayBuckets is empty. Each bucket is one wait queue, created on
// first use.
var DefaultDelayBuckets = []time.Duration{
	50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second,
	time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 30 * time.Minute,
	time.Hour, 2 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour,
}

// maxNameLen bounds Config.Queue (and the other names) so that the longest
// derived name (a wait queue, "<queue>.delay.86400000") stays under
// RabbitMQ's 255-byte limit on queue names.
const maxNameLen = 200

// Config configures a Queue. Only Queue is required; every other field has
// a documented default. A Config is read once by Open or New and may be
// reused.
type Config struct {
	// Queue is the RabbitMQ queue to publish to and consume from. Required:
	// 1 to 200 bytes of ASCII letters, digits, '.', '_', '-' and ':', not
	// starting with "amq." (reserved by the broker). Wait queues
	// ("<Queue>.delay.<ms>"), the dead-letter exchange and queue are named
	// after it.
	Queue string

	// QueueType is QueueTypeQuorum (default) or QueueTypeClassic. It is
	// used when the adapter declares the queue and its wait queues, and it
	// tells the adapter how the broker counts redeliveries. It must match
	// the existing queue's type.
	QueueType string

	// Passive makes the adapter declare nothing for the main queue: it
	// checks at start (and after every reconnect) that the queue exists and
	// fails with a clear error if not. Use it when the topology is owned
	// by infrastructure code or policies. The main queue's own dead-letter
	// settings then apply. Wait queues for Nack delays are still declared on
	// first use. Default false: the queue, the dead-letter exchange and the
	// dead-letter queue are declared (idempotently) at start and after
	// every reconnect.
	Passive bool

	// Prefetch is the consumer's QoS prefetch count: how many unacked
	// messages the broker pushes to this handle at most. Default 0 ties it
	// to the caller's concurrency: twice the deliveries the caller holds
	// plus the max of its Receive call, starting at twice the first max and
	// growing (never shrinking) with demand. A queue trigger with Receivers
	// r and ReceiveMax m works on at most r*m messages, so the prefetch
	// settles at 2*r*m: each message worked on has one ready behind it, and
	// a handle never holds many more messages than it can work on. Growing
	// adds a consumer (for the missing prefetch) on the same channel, since
	// RabbitMQ applies a new prefetch only to new consumers; order then
	// holds per consumer. A positive value is used as is, with one consumer.
	Prefetch int

	// VisibilityTimeout is how long a delivery handed out by Receive may
	// stay neither acked nor nacked before the adapter gives it back to the
	// broker (with its Attempt incremented), like the visibility timeout of
	// SQS or JetStream's AckWait. RabbitMQ itself has none: it redelivers
	// only when the consumer's channel closes (and closes a channel whose
	// delivery stays unacked past the broker's consumer_timeout, 30 min by
	// default). A late Ack of a timed-out delivery returns an error
	// wrapping batuta.ErrLeaseLost. Default 30 s; negative disables the
	// timer (redelivery on channel close only).
	VisibilityTimeout time.Duration

	// DeliveryLimit is the broker-side delivery limit of a quorum queue
	// (x-delivery-limit): a message redelivered more than DeliveryLimit
	// times without being settled by the adapter (a consumer that crashes
	// on it, say) is dead-lettered by the broker. It is a backstop: the
	// queue trigger's MaxDeliveries normally dead-letters first. Default 20;
	// negative sets no limit. Ignored for classic queues and when Passive.
	DeliveryLimit int

	// DeadLetterExchange receives messages the broker dead-letters from the
	// queue (delivery limit reached, rejected) and those given to
	// (*Queue).DeadLetter. Default "<Queue>.dlx" (a direct exchange).
	DeadLetterExchange string
	// DeadLetterQueue is bound to DeadLetterExchange with the queue's name
	// as routing key. Default "<Queue>.dead".
	DeadLetterQueue string

	// DeadLetterScanMax bounds how many messages of the dead-letter queue
	// a call of the queue's batuta.DeadLetterBox takes to list, redrive or
	// delete (see Queue.DeadLetterBox): the dead letters past it, in queue
	// order, are neither listed nor found until those before them are
	// redriven or deleted. Default DefaultDeadLetterScanMax (10000).
	DeadLetterScanMax int

	// DelayBuckets are the waits that Nack delays are rounded up to: a
	// delay d waits for the smallest bucket >= d (delays longer than the
	// largest bucket wait the largest). Each bucket is a wait queue whose
	// message TTL dead-letters messages back into the queue. Default
	// DefaultDelayBuckets (50 ms to 24 h).
	DelayBuckets []time.Duration

	// ReconnectMin and ReconnectMax bound the exponential backoff (with
	// jitter) between reconnection attempts after the connection or a
	// channel drops. Defaults 100 ms and 10 s.
	ReconnectMin time.Duration
	ReconnectMax time.Duration

	// MaxInFlightPublishes bounds the publishes waiting for their broker
	// confirmation at once; further Publish calls wait. Default 1024.
	MaxInFlightPublishes int

	// Redial, used by New, returns a fresh connection when the one New was
	// given has closed. Default nil: New cannot reconnect, and once its
	// connection closes every call fails (channels that close on a live
	// connection are still reopened). Open ignores Redial: it redials its
	// URL.
	Redial func(ctx context.Context) (*amqp.Connection, error)

	// AMQP is the amqp091 client configuration Open dials with (TLS, SASL,
	// heartbeat, vhost, properties). Its Recovery field must be nil: this
	// adapter reconnects by itself, because amqp091's recovery reuses
	// channels whose delivery tags restart, letting a stale Ack settle
	// another message. Default: the zero amqp.Config (amqp091's defaults).
	// If AMQP.Dial is nil, Open dials with DefaultDialTimeout and the ctx
	// of the attempt.
	AMQP amqp.Config

	// IDHeader names the header that gives a received message its ID when
	// the message has no message-id property (some clients, amqp-publish
	// among them, cannot set it). The ID of a received message is, in
	// order: the message-id property; else this header's value (a string);
	// else, with ContentID, a hash of the body and headers; else a random
	// ID. The queue trigger uses the ID as event ID, and the orchestrator
	// runs one event ID once: a message whose ID is random runs again when
	// the broker redelivers it. Default DefaultIDHeader
	// ("batuta-event-id"); "-" consults no header. Names starting with
	// "x-batuta-" are refused.
	IDHeader string

	// ContentID gives a message with neither a message-id nor the IDHeader
	// the ID "sha256:<64 hex digits>": the SHA-256 of its body and of the
	// headers named by ContentIDHeaders. A redelivery then keeps its ID
	// (and runs once), and so does a copy re-sent by the producer with
	// the same content; but two different messages with the same content
	// become one event, so enable it only when equal content means the
	// same message. Default false: such a message gets a random ID, and
	// the adapter logs a warning once per Queue.
	ContentID bool

	// ContentIDHeaders are the headers ContentID hashes with the body. A
	// listed header that a message lacks counts as absent (not as empty).
	// Default nil: every header shown in Message.Headers (the string
	// headers other than the broker's and the adapter's). List them to
	// leave out headers that differ between sends of one message, such
	// as a trace ID or a send timestamp.
	ContentIDHeaders []string

	// Logger receives reconnection and settlement warnings. Default
	// slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.QueueType == "" {
		c.QueueType = QueueTypeQuorum
	}
	if c.VisibilityTimeout == 0 {
		c.VisibilityTimeout = DefaultVisibilityTimeout
	}
	if c.DeliveryLimit == 0 {
		c.DeliveryLimit = DefaultDeliveryLimit
	}
	if c.DeadLetterExchange == "" {
		c.DeadLetterExchange = c.Queue + ".dlx"
	}
	if c.DeadLetterQueue == "" {
		c.DeadLetterQueue = c.Queue + ".dead"
	}
	if c.DeadLetterScanMax == 0 {
		c.DeadLetterScanMax = DefaultDeadLetterScanMax
	}
	if len(c.DelayBuckets) == 0 {
		c.DelayBuckets = DefaultDelayBuckets
	}
	c.DelayBuckets = slices.Clone(c.DelayBuckets)
	slices.Sort(c.DelayBuckets)
	c.DelayBuckets = slices.Compact(c.DelayBuckets)
	if c.ReconnectMin == 0 {
		c.ReconnectMin = DefaultReconnectMin
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = DefaultReconnectMax
	}
	if c.MaxInFlightPublishes == 0 {
		c.MaxInFlightPublishes = DefaultMaxInFlightPublishes
	}
	if c.IDHeader == "" {
		c.IDHeader = DefaultIDHeader
	}
	c.ContentIDHeaders = slices.Clone(c.ContentIDHeaders)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// validate checks a Config after withDefaults.
func (c Config) validate() error {
	if err := validateName("Queue", c.Queue); err != nil {
		return err
	}
	if c.QueueType != QueueTypeQuorum && c.QueueType != QueueTypeClassic {
		return &batuta.ConfigError{Field: "QueueType", Reason: fmt.Sprintf("%q is neither %q nor %q", c.QueueType, QueueTypeQuorum, QueueTypeClassic)}
	}
	if c.Prefetch < 0 || c.Prefetch > 65535 {
		return &batuta.ConfigError{Field: "Prefetch", Reason: "must be between 0 and 65535"}
	}
	if err := validateName("DeadLetterExchange", c.DeadLetterExchange); err != nil {
		return err
	}
	if err := validateName("DeadLetterQueue", c.DeadLetterQueue); err != nil {
		return err
	}
	if c.DeadLetterQueue == c.Queue {
		return &batuta.ConfigError{Field: "DeadLetterQueue", Reason: "must differ from Queue"}
	}
	if c.DeadLetterScanMax < 0 {
		return &batuta.ConfigError{Field: "DeadLetterScanMax", Reason: "must not be negative"}
	}
	for _, b := range c.DelayBuckets {
		if b < time.Millisecond || b > 24*time.Hour*49 {
			return &batuta.ConfigError{Field: "DelayBuckets", Reason: fmt.Sprintf("bucket %v is outside 1ms..49 days", b)}
		}
	}
	if c.ReconnectMin < 0 {
		return &batuta.ConfigError{Field: "ReconnectMin", Reason: "must not be negative"}
	}
	if c.ReconnectMax < c.ReconnectMin {
		return &batuta.ConfigError{Field: "ReconnectMax", Reason: "must not be less than ReconnectMin"}
	}
	if c.MaxInFlightPublishes < 0 {
		return &batuta.ConfigError{Field: "MaxInFlightPublishes", Reason: "must not be negative"}
	}
	if strings.HasPrefix(c.IDHeader, reservedPrefix) || brokerHeader(c.IDHeader) {
		return &batuta.ConfigError{Field: "IDHeader", Reason: fmt.Sprintf("%q is a header the adapter or the broker sets", c.IDHeader)}
	}
	if c.AMQP.Recovery != nil {
		return &batuta.ConfigError{Field: "AMQP.Recovery", Reason: "must be nil: the adapter reconnects by itself (amqp091 recovery reuses channels whose delivery tags restart)"}
	}
	return nil
}

// validateName checks a queue or exchange name: RabbitMQ accepts almost any
// UTF-8 up to 255 bytes, but names end up in logs, management URLs and
// policies' regular expressions, so the adapter keeps to a plain subset.
func validateName(field, name string) error {
	bad := func(reason string) error {
		return fmt.Errorf("batutaamqp: %w: %s %q: %s", batuta.ErrInvalidIdentifier, field, name, reason)
	}
	switch {
	case name == "":
		return &batuta.ConfigError{Field: field, Reason: "is required"}
	case len(name) > maxNameLen:
		return bad(fmt.Sprintf("longer than %d bytes", maxNameLen))
	case strings.HasPrefix(name, "amq."):
		return bad(`the "amq." prefix is reserved by RabbitMQ`)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == ':') {
			return bad(fmt.Sprintf("byte %d (%q) is not a letter, digit, '.', '_', '-' or ':'", i, c))
		}
	}
	return nil
}
