package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// floorLatency is the floor under the latency scenario on this server: at
// the same open-loop rate, each "submit" is one durable single-row INSERT
// that notifies a listener in its transaction (one round trip, one commit
// that waits for the WAL flush), and the latency is the time until the
// listening connection hears of it. Nothing that records work durably
// before another goroutine starts it can do better on this machine.
func floorLatency(ctx context.Context, pool *pgxpool.Pool, rate int, d time.Duration) ([]time.Duration, error) {
	const table = "pgbench_floor"
	if _, err := pool.Exec(ctx, `DROP TABLE IF EXISTS `+table+`; CREATE TABLE `+table+` (id bigserial PRIMARY KEY, sent bigint NOT NULL)`); err != nil {
		return nil, err
	}
	defer func() { _, _ = pool.Exec(context.WithoutCancel(ctx), `DROP TABLE IF EXISTS `+table) }()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `LISTEN `+table); err != nil {
		return nil, err
	}
	n := int(float64(rate) * d.Seconds())
	var mu sync.Mutex
	lat := make([]time.Duration, 0, n)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	listened := make(chan error, 1)
	go func() {
		for got := 0; got < n; got++ {
			nt, err := conn.Conn().WaitForNotification(lctx)
			if err != nil {
				listened <- err
				return
			}
			now := time.Now()
			sent, err := strconv.ParseInt(nt.Payload, 10, 64)
			if err != nil {
				listened <- err
				return
			}
			mu.Lock()
			lat = append(lat, now.Sub(time.Unix(0, sent)))
			mu.Unlock()
		}
		listened <- nil
	}()
	err = openLoop(ctx, rate, n, func(ctx context.Context, sent time.Time) error {
		_, err := pool.Exec(ctx, `WITH i AS (INSERT INTO `+table+` (sent) VALUES ($1) RETURNING sent) SELECT pg_notify('`+table+`', sent::text) FROM i`, sent.UnixNano())
		return err
	})
	if err != nil {
		return nil, err
	}
	select {
	case err := <-listened:
		if err != nil {
			return nil, fmt.Errorf("floor: listen: %w", err)
		}
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("floor: notifications missing after 30 s")
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]time.Duration(nil), lat...), nil
}
