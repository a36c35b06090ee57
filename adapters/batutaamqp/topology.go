package batutaamqp

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/batuta-dev/batuta"
	amqp "github.com/rabbitmq/amqp091-go"
)

// ErrQueueNotFound is returned (wrapped) when the queue does not exist: at
// Open or New with Config.Passive, or when a publish is returned by the
// broker as unroutable because the queue was deleted. It is the core's
// batuta.ErrQueueNotFound, so callers can match it whatever the broker.
var ErrQueueNotFound = batuta.ErrQueueNotFound

// mainQueueArgs are the arguments the adapter declares the queue with.
func (c *Config) mainQueueArgs() amqp.Table {
	args := amqp.Table{
		"x-queue-type":           c.QueueType,
		"x-dead-letter-exchange": c.DeadLetterExchange,
	}
	if c.QueueType == QueueTypeQuorum {
		// Dead-letter at least once: the broker keeps a message until the
		// dead-letter queue confirmed it. Requires reject-publish overflow.
		args["x-dead-letter-strategy"] = "at-least-once"
		args["x-overflow"] = "reject-publish"
		if c.DeliveryLimit > 0 {
			args["x-delivery-limit"] = int64(c.DeliveryLimit)
		}
	}
	return args
}

// waitQueueName names the wait queue of a delay bucket.
func (c *Config) waitQueueName(bucket time.Duration) string {
	return c.Queue + ".delay." + strconv.FormatInt(bucket.Milliseconds(), 10)
}

// waitQueueArgs: messages wait bucket long, then the broker dead-letters
// them through the default exchange back into the queue.
func (c *Config) waitQueueArgs(bucket time.Duration) amqp.Table {
	args := amqp.Table{
		"x-queue-type":              c.QueueType,
		"x-message-ttl":             bucket.Milliseconds(),
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": c.Queue,
	}
	if c.QueueType == QueueTypeQuorum {
		args["x-dead-letter-strategy"] = "at-least-once"
		args["x-overflow"] = "reject-publish"
	}
	return args
}

// bucketFor rounds a delay up to a delay bucket.
func (c *Config) bucketFor(delay time.Duration) time.Duration {
	i, _ := slices.BinarySearch(c.DelayBuckets, delay)
	if i == len(c.DelayBuckets) {
		i--
	}
	return c.DelayBuckets[i]
}

// declareTopology declares (or, when Passive, checks) the queue and its
// dead-letter exchange and queue on a channel of its own, so that a refused
// declaration (which closes the channel) cannot take a working channel
// down.
func (c *Config) declareTopology(conn *amqp.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("batutaamqp: open channel: %w", err)
	}
	defer func() { _ = ch.Close() }()
	if c.Passive {
		if _, err := ch.QueueDeclarePassive(c.Queue, true, false, false, false, nil); err != nil {
			return c.declareError("check queue", c.Queue, err)
		}
		return nil
	}
	if err := ch.ExchangeDeclare(c.DeadLetterExchange, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
		return c.declareError("declare dead-letter exchange", c.DeadLetterExchange, err)
	}
	if _, err := ch.QueueDeclare(c.DeadLetterQueue, true, false, false, false, amqp.Table{"x-queue-type": c.QueueType}); err != nil {
		return c.declareError("declare dead-letter queue", c.DeadLetterQueue, err)
	}
	if err := ch.QueueBind(c.DeadLetterQueue, c.Queue, c.DeadLetterExchange, false, nil); err != nil {
		return c.declareError("bind dead-letter queue", c.DeadLetterQueue, err)
	}
	if _, err := ch.QueueDeclare(c.Queue, true, false, false, false, c.mainQueueArgs()); err != nil {
		return c.declareError("declare queue", c.Queue, err)
	}
	return nil
}

// declareWaitQueue declares the wait queue of a delay bucket on a channel
// of its own.
func (c *Config) declareWaitQueue(conn *amqp.Connection, bucket time.Duration) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("batutaamqp: open channel: %w", err)
	}
	defer func() { _ = ch.Close() }()
	name := c.waitQueueName(bucket)
	if _, err := ch.QueueDeclare(name, true, false, false, false, c.waitQueueArgs(bucket)); err != nil {
		return c.declareError("declare wait queue", name, err)
	}
	return nil
}

// declareError explains the two refusals users meet: a missing queue
// (passive check) and an existing queue declared with other arguments.
func (c *Config) declareError(op, name string, err error) error {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp.NotFound:
			return fmt.Errorf("batutaamqp: %s: %q does not exist (Config.Passive is set, so the adapter does not declare it): %w: %w", op, name, ErrQueueNotFound, err)
		case amqp.PreconditionFailed:
			return fmt.Errorf("batutaamqp: %s %q: it exists with other settings than Config asks for "+
				"(queue type, dead-letter exchange, delivery limit or TTL): delete it, align Config, or set Config.Passive: %w", op, name, err)
		case amqp.AccessRefused:
			return fmt.Errorf("batutaamqp: %s %q: access refused (check the user's configure/write/read permissions on the vhost): %w", op, name, err)
		}
	}
	return fmt.Errorf("batutaamqp: %s %q: %w", op, name, err)
}

// DeleteTopology deletes everything the adapter declares for cfg: the
// queue with its messages, every wait queue of cfg's delay buckets, the
// dead-letter queue and the dead-letter exchange. Names that do not exist
// are skipped. It is meant for tests and for retiring a queue; the Queue
// handles on it should be closed first. conn is not closed. ctx is checked
// between deletions.
func DeleteTopology(ctx context.Context, conn *amqp.Connection, cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("batutaamqp: delete topology: open channel: %w", err)
	}
	defer func() { _ = ch.Close() }()
	queues := []string{cfg.Queue}
	for _, b := range cfg.DelayBuckets {
		queues = append(queues, cfg.waitQueueName(b))
	}
	queues = append(queues, cfg.DeadLetterQueue)
	for _, name := range queues {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("batutaamqp: delete topology: %w", err)
		}
		if _, err := ch.QueueDelete(name, false, false, false); err != nil {
			return fmt.Errorf("batutaamqp: delete queue %q: %w", name, err)
		}
	}
	if err := ch.ExchangeDelete(cfg.DeadLetterExchange, false, false); err != nil {
		return fmt.Errorf("batutaamqp: delete exchange %q: %w", cfg.DeadLetterExchange, err)
	}
	return nil
}
