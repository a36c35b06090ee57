package batutanats

import (
	"context"
	"errors"
	"fmt"

	"github.com/batuta-dev/batuta"
	"github.com/nats-io/nats.go/jetstream"
)

var _ batuta.BacklogReporter = (*Queue)(nil)

// Backlog implements batuta.BacklogReporter from the durable consumer's
// info: NumPending (messages not delivered yet) as Pending, NumAckPending
// (delivered and not acked, including those waiting for a Nack delay) as
// InFlight; then one message get for the first message of the queue's
// subject after the consumer's ack floor, whose stored time is Oldest.
func (q *Queue) Backlog(ctx context.Context) (batuta.Backlog, error) {
	info, err := q.cons.Info(ctx)
	if err != nil {
		return batuta.Backlog{}, fmt.Errorf("batutanats: backlog of %q: %w", q.cfg.Stream, q.wrapErr(err))
	}
	bl := batuta.Backlog{Pending: int64(info.NumPending), InFlight: int64(info.NumAckPending), OldestKnown: true}
	if bl.Pending == 0 && bl.InFlight == 0 {
		return bl, nil
	}
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	if err != nil {
		return batuta.Backlog{}, fmt.Errorf("batutanats: backlog of %q: %w", q.cfg.Stream, q.wrapErr(err))
	}
	m, err := st.GetMsg(ctx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(q.cfg.Subject))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		// Acked meanwhile.
	case err != nil:
		return batuta.Backlog{}, fmt.Errorf("batutanats: backlog of %q: oldest message: %w", q.cfg.Stream, q.wrapErr(err))
	default:
		bl.Oldest = m.Time
	}
	return bl, nil
}
