package batutaamqp

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/batuta-dev/batuta"
)

var _ batuta.BacklogReporter = (*Queue)(nil)

// Backlog implements batuta.BacklogReporter with passive declarations on
// a channel of its own: Pending is the message count RabbitMQ reports for
// the queue (ready messages, not those delivered and unacked) plus that
// of the wait queues this handle declared (messages waiting for a Nack
// delay). RabbitMQ's AMQP 0-9-1 interface tells neither the unacked
// count (InFlight is -1) nor the age of the oldest message (OldestKnown
// is false): the management plugin's HTTP API has both.
func (q *Queue) Backlog(ctx context.Context) (batuta.Backlog, error) {
	s, err := q.session(ctx, true)
	if err != nil {
		return batuta.Backlog{}, fmt.Errorf("batutaamqp: backlog of %q: %w", q.cfg.Queue, err)
	}
	s.mu.Lock()
	buckets := make([]time.Duration, 0, len(s.waitQueues))
	for b := range s.waitQueues {
		buckets = append(buckets, b)
	}
	s.mu.Unlock()
	slices.Sort(buckets)
	names := []string{q.cfg.Queue}
	for _, b := range buckets {
		names = append(names, q.cfg.waitQueueName(b))
	}
	ch, err := s.conn.Channel()
	if err != nil {
		return batuta.Backlog{}, fmt.Errorf("batutaamqp: backlog of %q: open channel: %w", q.cfg.Queue, err)
	}
	defer func() { _ = ch.Close() }()
	bl := batuta.Backlog{InFlight: -1}
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return batuta.Backlog{}, fmt.Errorf("batutaamqp: backlog of %q: %w", q.cfg.Queue, err)
		}
		qi, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		if err != nil {
			return batuta.Backlog{}, q.cfg.declareError("backlog: check queue", name, err)
		}
		bl.Pending += int64(qi.Messages)
	}
	return bl, nil
}
