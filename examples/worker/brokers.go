package main

import (
	"context"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaamqp"
	"github.com/batuta-dev/batuta/adapters/batutanats"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
)

// broker opens handles on one queue: one for the producer and one per
// worker, as separate processes would, and removes the queue at the end.
type broker struct {
	open    func(ctx context.Context) (batuta.Queue, error)
	cleanup func(ctx context.Context)
}

// openBroker returns the broker named by -broker. Each run uses a queue of
// its own (a random name), deleted by cleanup.
func openBroker(kind, url string) (*broker, error) {
	name := fmt.Sprintf("batuta-worker-example-%d", time.Now().UnixNano())
	switch kind {
	case "memory":
		q, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{Capacity: 100, VisibilityTimeout: 30 * time.Second})
		if err != nil {
			return nil, err
		}
		return &broker{
			open:    func(context.Context) (batuta.Queue, error) { return q.Connect(), nil },
			cleanup: func(context.Context) {},
		}, nil
	case "redis":
		if url == "" {
			url = "redis://127.0.0.1:6379"
		}
		cfg := batutaredis.Config{Stream: name}
		return &broker{
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
