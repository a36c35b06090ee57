package main

import (
	"context"
	"fmt"
	neturl "net/url"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaamqp"
	"github.com/batuta-dev/batuta/adapters/batutanats"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
)

// broker opens handles on one queue: one for the producer and one per
// worker, as separate processes would, and removes the queue at the end
// unless it was named with -queue.
type broker struct {
	open     func(ctx context.Context) (batuta.Queue, error)
	cleanup  func(ctx context.Context)
	describe string // the queue, and how another producer writes to it
}

// openBroker returns the broker named by -broker, on the queue name: a
// queue the caller keeps, or if name is "" a queue of this run's own (a
// random name), deleted by cleanup.
func openBroker(kind, url, name string) (*broker, error) {
	keep := name != ""
	if !keep {
		name = fmt.Sprintf("batuta-worker-example-%d", time.Now().UnixNano())
	}
	b, err := openNamed(kind, url, name)
	if err != nil {
		return nil, err
	}
	if keep {
		b.cleanup = func(context.Context) {}
	}
	return b, nil
}

func openNamed(kind, url, name string) (*broker, error) {
	switch kind {
	case "memory":
		q, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{Capacity: 100, VisibilityTimeout: 30 * time.Second})
		if err != nil {
			return nil, err
		}
		return &broker{
			open:     func(context.Context) (batuta.Queue, error) { return q.Connect(), nil },
			cleanup:  func(context.Context) {},
			describe: "the in-memory queue",
		}, nil
	case "redis":
		if url == "" {
			url = "redis://127.0.0.1:6379"
		}
		cfg := batutaredis.Config{Stream: name}
		return &broker{
			describe: fmt.Sprintf("Redis stream %q (group %q) at %s; add messages with: redis-cli XADD %s '*' id order-1 type order.created body '{\"id\":1,\"total_cents\":100}'",
				name, "batuta", redact(url), name),
			open: func(ctx context.Context) (batuta.Queue, error) { return batutaredis.Open(ctx, url, cfg) },
			cleanup: func(ctx context.Context) {
				opt, err := redis.ParseURL(url)
				if err != nil {
					return
				}
				c := redis.NewClient(opt)
				defer c.Close()
				keys, _ := c.Keys(ctx, "*"+name+"*").Result()
				if len(keys) > 0 {
					c.Del(ctx, keys...)
				}
			},
		}, nil
	case "nats":
		if url == "" {
			url = "nats://127.0.0.1:4222"
		}
		cfg := batutanats.Config{Stream: name}
		var first *batutanats.Queue
		return &broker{
			describe: fmt.Sprintf("NATS stream %q, subject %q at %s; publish with: python3 examples/worker/producers/nats_pub.py -H 'Nats-Msg-Id: order-1' -H 'type: order.created' batuta.%s '{\"id\":1,\"total_cents\":100}'",
				name, "batuta."+name, redact(url), name),
			open: func(ctx context.Context) (batuta.Queue, error) {
				q, err := batutanats.Open(ctx, url, cfg)
				if err == nil && first == nil {
					first = q
				}
				return q, err
			},
			cleanup: func(ctx context.Context) {
				if first != nil {
					_ = first.JetStream().DeleteStream(ctx, name)
				}
			},
		}, nil
	case "amqp":
		if url == "" {
			url = "amqp://guest:guest@127.0.0.1:5672/"
		}
		cfg := batutaamqp.Config{Queue: name}
		return &broker{
			describe: fmt.Sprintf("RabbitMQ queue %q at %s; publish with: amqp-publish -r %s -p -H 'batuta-event-id: order-1' -H 'type: order.created' -b '{\"id\":1,\"total_cents\":100}'",
				name, redact(url), name),
			open: func(ctx context.Context) (batuta.Queue, error) { return batutaamqp.Open(ctx, url, cfg) },
			cleanup: func(ctx context.Context) {
				conn, err := amqp.Dial(url)
				if err != nil {
					return
				}
				defer conn.Close()
				_ = batutaamqp.DeleteTopology(ctx, conn, cfg)
			},
		}, nil
	}
	return nil, fmt.Errorf("unknown -broker %q (want memory, redis, nats or amqp)", kind)
}

// redact hides the password of a broker URL in what the worker prints.
func redact(u string) string {
	p, err := neturl.Parse(u)
	if err != nil {
		return "the broker"
	}
	return p.Redacted()
}
