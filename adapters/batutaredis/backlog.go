package batutaredis

import (
	"context"
	"errors"
	"fmt"

	"github.com/batuta-dev/batuta"
	"github.com/redis/go-redis/v9"
)

var _ batuta.BacklogReporter = (*Queue)(nil)

// backlogCountMax bounds the entries Backlog counts one by one when the
// group's lag is unknown to Redis and acked entries stay in the stream.
const backlogCountMax = 10000

// Backlog implements batuta.BacklogReporter for the queue's consumer group,
// in two round trips: XINFO GROUPS (the group's lag, the entries not
// delivered to it yet, and its pending entries, delivered and not acked:
// InFlight), ZCARD of the delayed set (entries waiting for a Nack delay,
// counted in Pending) and XPENDING; then XRANGE for the first entry not
// delivered yet. Oldest is the time in the entry ID of the oldest entry
// pending or in flight (a nacked entry is re-added to the stream, so its
// time restarts; delayed entries are not looked at). When Redis does not
// know the group's lag (entries deleted after the group's position), the
// undelivered entries are the stream's length minus the pending ones if
// Ack deletes entries (the default), else counted, up to 10000.
func (q *Queue) Backlog(ctx context.Context) (batuta.Backlog, error) {
	pipe := q.rdb.Pipeline()
	groups := pipe.XInfoGroups(ctx, q.cfg.Stream)
	delayed := pipe.ZCard(ctx, q.keys[1])
	length := pipe.XLen(ctx, q.cfg.Stream)
	pending := pipe.XPending(ctx, q.cfg.Stream, q.cfg.Group)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return batuta.Backlog{}, fmt.Errorf("batutaredis: backlog of %q: %w", q.cfg.Stream, q.wrapErr(err))
	}
	var g *redis.XInfoGroup
	gs, _ := groups.Result()
	for i := range gs {
		if gs[i].Name == q.cfg.Group {
			g = &gs[i]
		}
	}
	if g == nil {
		return batuta.Backlog{}, fmt.Errorf("batutaredis: backlog of %q: no consumer group %q: %w", q.cfg.Stream, q.cfg.Group, ErrStreamNotFound)
	}
	undelivered := g.Lag
	if undelivered < 0 {
		if q.delDel == "1" {
			undelivered = max(length.Val()-g.Pending, 0)
		} else {
			xs, err := q.rdb.XRangeN(ctx, q.cfg.Stream, "("+g.LastDeliveredID, "+", backlogCountMax).Result()
			if err != nil {
				return batuta.Backlog{}, fmt.Errorf("batutaredis: backlog of %q: %w", q.cfg.Stream, q.wrapErr(err))
			}
			undelivered = int64(len(xs))
		}
	}
	bl := batuta.Backlog{Pending: undelivered + delayed.Val(), InFlight: g.Pending, OldestKnown: true}
	if p, err := pending.Result(); err == nil && p.Count > 0 {
		bl.Oldest = entryTime(p.Lower)
	}
	if undelivered > 0 {
		xs, err := q.rdb.XRangeN(ctx, q.cfg.Stream, "("+g.LastDeliveredID, "+", 1).Result()
		if err != nil {
			return batuta.Backlog{}, fmt.Errorf("batutaredis: backlog of %q: %w", q.cfg.Stream, q.wrapErr(err))
		}
		if len(xs) == 1 {
			if t := entryTime(xs[0].ID); bl.Oldest.IsZero() || t.Before(bl.Oldest) {
				bl.Oldest = t
			}
		}
	}
	return bl, nil
}
