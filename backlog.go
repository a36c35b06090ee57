package batuta

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// A trigger's backlog is the work waiting at its source: messages of a
// queue not yet acknowledged, outbox rows not yet delivered. Sources that
// can tell it cheaply implement BacklogReporter; the dashboard's triggers
// page and batutaprom's batuta_trigger_backlog and
// batuta_trigger_lag_seconds read it through Orchestrator.Bindings
// (BindingInfo.Backlog), at the time they are looked at, with a short
// timeout.

// Backlog is the work waiting at a trigger's source, as the source tells
// it.
type Backlog struct {
	// Pending counts the events waiting at the source that no consumer
	// holds: queue messages ready or waiting for a redelivery delay,
	// outbox rows not yet claimed.
	Pending int64 `json:"pending"`
	// InFlight counts those a consumer holds and has not settled
	// (delivered and not acknowledged, leased); -1 when the source does
	// not tell.
	InFlight int64 `json:"in_flight"`
	// Oldest is when the oldest waiting event (pending or in flight)
	// entered the source; zero when nothing waits or the source does not
	// tell (OldestKnown).
	Oldest time.Time `json:"oldest,omitzero"`
	// OldestKnown reports that the source tells Oldest (which is then
	// zero only when nothing waits).
	OldestKnown bool `json:"oldest_known"`
}

// Lag is how long the oldest waiting event has waited at now: 0 when
// nothing waits or the source does not tell when it came (see
// OldestKnown), never negative.
func (b Backlog) Lag(now time.Time) time.Duration {
	if b.Oldest.IsZero() {
		return 0
	}
	return max(now.Sub(b.Oldest), 0)
}

// A BacklogReporter is a trigger or a Queue that can tell its backlog
// cheaply (one or two queries or broker calls that use the source's own
// counters or indexes). A QueueTrigger reports its queue's backlog when
// the queue is a BacklogReporter. Backlog must honour ctx: callers give
// it a short deadline.
type BacklogReporter interface {
	Backlog(ctx context.Context) (Backlog, error)
}

// ErrNoBacklog is returned (wrapped) by BindingInfo.ReadBacklog when the
// trigger's source does not tell its backlog.
var ErrNoBacklog = errors.New("batuta: the trigger's source does not tell its backlog")

// backlogReporter returns what tells trig's backlog: trig itself, or a
// QueueTrigger's queue; nil if nothing does.
func backlogReporter(trig Trigger) BacklogReporter {
	if t, ok := trig.(*QueueTrigger); ok {
		if r, ok := t.cfg.Queue.(BacklogReporter); ok {
			return r
		}
		return nil
	}
	if r, ok := trig.(BacklogReporter); ok {
		return r
	}
	return nil
}

// ReadBacklog asks the binding's source for its backlog, bounded by ctx.
// It fails with ErrNoBacklog if the source does not tell.
func (b BindingInfo) ReadBacklog(ctx context.Context) (Backlog, error) {
	if b.Backlog == nil {
		return Backlog{}, fmt.Errorf("%w (%s)", ErrNoBacklog, b.Kind)
	}
	bl, err := b.Backlog.Backlog(ctx)
	if err != nil {
		return Backlog{}, fmt.Errorf("batuta: backlog of the %s trigger of %s: %w", b.Kind, b.Workflow, err)
	}
	return bl, nil
}

// A BacklogReading is the answer of one binding to ReadBacklogs.
type BacklogReading struct {
	Backlog
	// Err is the source's error, ctx's when it did not answer in time,
	// or ErrNoBacklog when it does not tell.
	Err error
}

// ReadBacklogs asks every binding's source for its backlog at once and
// returns when all answered or ctx ended, whichever comes first (a source
// that did not answer by then reads as ctx's error): one slow source never
// holds up a page or a scrape for longer than ctx allows. The readings
// are in the order of bs.
func ReadBacklogs(ctx context.Context, bs []BindingInfo) []BacklogReading {
	out := make([]BacklogReading, len(bs))
	type answer struct {
		i int
		r BacklogReading
	}
	ch := make(chan answer, len(bs)) // buffered: a late answer never blocks
	waiting := 0
	for i, b := range bs {
		if b.Backlog == nil {
			out[i].Err = fmt.Errorf("%w (%s)", ErrNoBacklog, b.Kind)
			continue
		}
		waiting++
		go func() {
			bl, err := b.ReadBacklog(ctx)
			ch <- answer{i, BacklogReading{Backlog: bl, Err: err}}
		}()
	}
	answered := make([]bool, len(bs))
	for ; waiting > 0; waiting-- {
		select {
		case a := <-ch:
			out[a.i], answered[a.i] = a.r, true
		case <-ctx.Done():
			for i, b := range bs {
				if b.Backlog != nil && !answered[i] {
					out[i].Err = fmt.Errorf("batuta: backlog of the %s trigger of %s: %w", b.Kind, b.Workflow, ctx.Err())
				}
			}
			return out
		}
	}
	return out
}

var _ BacklogReporter = (*MemoryQueue)(nil)

// Backlog implements BacklogReporter: the messages not acked yet, those
// held by consumers as InFlight, and the Time of the oldest.
func (q *MemoryQueue) Backlog(ctx context.Context) (Backlog, error) {
	if err := ctx.Err(); err != nil {
		return Backlog{}, err
	}
	b := q.b
	b.mu.Lock()
	defer b.mu.Unlock()
	b.promote(b.cfg.Clock.Now())
	bl := Backlog{Pending: int64(b.count - b.inflight), InFlight: int64(b.inflight), OldestKnown: true}
	for _, e := range b.entriesLocked() {
		if bl.Oldest.IsZero() || e.msg.Time.Before(bl.Oldest) {
			bl.Oldest = e.msg.Time
		}
	}
	return bl, nil
}
