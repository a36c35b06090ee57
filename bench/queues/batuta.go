package main

import (
	"context"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutanats"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/batuta-dev/batuta/bench/internal/queuebench"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// batutaSide runs the queue trigger over one broker adapter.
type batutaSide struct {
	label string
	// open returns a queue handle on a fresh queue named name (default
	// adapter settings) and a func that deletes the queue.
	open func(ctx context.Context, name string) (batuta.Queue, func(), error)
	free func()
	// receiveMax is QueueTriggerConfig.ReceiveMax at concurrency > 1.
	receiveMax int
}

func (s *batutaSide) name() string { return s.label }
func (s *batutaSide) close()       { s.free() }

func newBatutaRedis(ctx context.Context, url string, receiveMax int) (*batutaSide, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	admin := redis.NewClient(opts)
	if err := admin.Ping(ctx).Err(); err != nil {
		_ = admin.Close()
		return nil, err
	}
	return &batutaSide{
		label:      "batuta-redis",
		receiveMax: receiveMax,
		open: func(ctx context.Context, name string) (batuta.Queue, func(), error) {
			q, err := batutaredis.Open(ctx, url, batutaredis.Config{Stream: "bench:" + name})
			if err != nil {
				return nil, nil, err
			}
			return q, func() {
				_ = admin.Del(context.Background(), "bench:"+name, "{bench:"+name+"}:delayed", "bench:"+name+":dead").Err()
			}, nil
		},
		free: func() { _ = admin.Close() },
	}, nil
}

func newBatutaNATS(ctx context.Context, url string, receiveMax int) (*batutaSide, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &batutaSide{
		label:      "batuta-nats",
		receiveMax: receiveMax,
		open: func(ctx context.Context, name string) (batuta.Queue, func(), error) {
			stream := "bench_" + name
			q, err := batutanats.Open(ctx, url, batutanats.Config{Stream: stream})
			if err != nil {
				return nil, nil, err
			}
			return q, func() { _ = js.DeleteStream(context.Background(), stream) }, nil
		},
		free: nc.Close,
	}, nil
}

func randomName() string { return queuebench.RandomName() }

func openLoop(ctx context.Context, rate, total int, publish func(i int) error) error {
	return queuebench.OpenLoop(ctx, rate, total, publish)
}

// fresh returns the queuebench.Open of a fresh queue of this side.
func (s *batutaSide) fresh(ctx context.Context) (batuta.Queue, func(), error) {
	return s.open(ctx, randomName())
}

func (s *batutaSide) throughput(ctx context.Context, n, c int) (float64, error) {
	receivers, receiveMax := 1, 1
	if c > 1 {
		receiveMax = min(max(s.receiveMax, 1), c)
		receivers = (c + receiveMax - 1) / receiveMax
	}
	return queuebench.Throughput(ctx, s.fresh, n, c, receivers, receiveMax)
}

func (s *batutaSide) latency(ctx context.Context, rate int, d time.Duration) ([]time.Duration, error) {
	return queuebench.Latency(ctx, s.fresh, rate, d)
}
