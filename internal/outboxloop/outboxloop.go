// Package outboxloop is the database-independent consumer of a
// transactional outbox table, shared by the outbox Triggers of the database
// adapters (batutapg, batutamysql, batutasqlite).
//
// A consumer claims rows under a lease in batches (Driver.Claim), fires
// each as a batuta.Event in row order, and deletes a row only after its
// event was accepted: at once with a durable Store, after its run finished
// with a non-durable one (see Tracking). It renews the leases of the rows
// it holds every Lease/3, polls with an adaptive interval (cut short by a
// wake channel), backs off after errors, bounds the rows it holds while
// runs finish (MaxWaiting), marks rows whose event can never be accepted
// dead (batuta.ErrPayloadTooLarge, batuta.ErrInvalidPayload), and on
// shutdown deletes what was delivered and releases the rest.
//
// The SQL lives in the adapters, behind Driver; so do the wake-up sources
// (PostgreSQL's LISTEN, Trigger.Wake) and database-specific checks.
package outboxloop

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
)

// MinBackoff is the first pause after an error; it doubles up to
// Config.MaxBackoff.
const MinBackoff = 10 * time.Millisecond

// CleanupTimeout bounds the statements a consumer runs after its ctx ended
// (deleting delivered rows, releasing the others).
const CleanupTimeout = 5 * time.Second

// Row is one claimed outbox row and the event built from it.
type Row[ID cmp.Ordered] struct {
	// ID is the row's key, as the Driver's other methods take it.
	ID ID
	// Event is the event to fire for the row, unless Err is set.
	Event batuta.Event
	// Err is why the event could not be built. A row whose Err wraps
	// batuta.ErrInvalidPayload is marked dead; any other Err is handled as
	// a refused fire (the row is released and the consumer backs off).
	Err error
}

// Driver is the database-specific half of a consumer: the statements on
// its outbox. One Driver serves one consumer (one Run call): it knows the
// consumer's claim token and only touches rows claimed with it. Claim,
// Delete, Release and MarkDead are called from one goroutine at a time;
// Renew runs concurrently with them, from the lease heartbeat. Errors are
// returned unwrapped; Run adds the package and outbox names.
type Driver[ID cmp.Ordered] interface {
	// Claim leases up to n free rows (not dead, never leased or lease
	// expired) to this consumer and returns them, in any order. A failed
	// claim must not leave rows claimed, or only rows that come back when
	// their lease expires.
	Claim(ctx context.Context, n int) ([]Row[ID], error)
	// Renew extends the leases of ids (all claimed by this consumer) by
	// the lease duration from now.
	Renew(ctx context.Context, ids []ID) error
	// Delete deletes delivered rows ids.
	Delete(ctx context.Context, ids []ID) error
	// Release hands rows ids back (clears their lease) so any consumer
	// claims them again at once.
	Release(ctx context.Context, ids []ID) error
	// MarkDead keeps row id out of future claims (sets dead_at and
	// last_error from cause) and releases it.
	MarkDead(ctx context.Context, id ID, cause error) error
}

// Sink is where a consumer fires events: a FireFunc (Fire) or the
// orchestrator's Runs (Tracking). The zero Sink is not usable.
type Sink struct {
	fire func(context.Context, batuta.Event) (string, error)
	wait batuta.Runs // non-nil: delete rows only after their run finished
}

// Fire returns a Sink that calls fire; rows are deleted as soon as fire
// accepted them (as for a durable Store).
func Fire(fire batuta.FireFunc) Sink {
	return Sink{fire: func(ctx context.Context, ev batuta.Event) (string, error) {
		return "", fire(ctx, ev)
	}}
}

// Tracking returns a Sink that fires through runs: with a non-durable Store
// (runs.Durable() false) a row is deleted only after its run finished.
func Tracking(runs batuta.Runs) Sink {
	if runs.Durable() {
		return Sink{fire: runs.Fire}
	}
	return Sink{fire: runs.Fire, wait: runs}
}

// Config configures one consumer. Driver, Sink and the sizes are required;
// the adapters apply their own defaults and validation before Run.
type Config[ID cmp.Ordered] struct {
	// Driver runs the consumer's statements.
	Driver Driver[ID]
	// Sink receives the events.
	Sink Sink
	// Wake, if not nil, cuts a poll wait short: a value on it means rows
	// may be waiting. A value that arrives before a claim starts is
	// covered by that claim and consumed by it.
	Wake <-chan struct{}
	// Package prefixes error and log messages, e.g. "batutapg".
	Package string
	// Outbox names the outbox in error messages.
	Outbox string
	// BatchSize is how many rows one claim takes at most (positive).
	BatchSize int
	// MaxWaiting bounds the rows held while their runs finish (with a
	// Tracking Sink in front of a non-durable Store only).
	MaxWaiting int
	// MinPollInterval is the pause after a claim that found rows but not a
	// full batch (after a full batch there is none); MaxPollInterval caps
	// the pause, which doubles from MinPollInterval at each empty claim.
	// Equal values give a fixed poll interval.
	MinPollInterval, MaxPollInterval time.Duration
	// Lease is the claim lease; leases are renewed every Lease/3.
	Lease time.Duration
	// MaxBackoff caps the pause after an error; pauses start at MinBackoff
	// and double.
	MaxBackoff time.Duration
	// Logger receives warnings (retried errors), errors (dead rows) and
	// debug messages (backoff on batuta.ErrBusy). Default slog.Default().
	Logger *slog.Logger
}

// Run consumes the outbox until ctx ends, then deletes what was delivered
// and releases the rest (within CleanupTimeout), and returns ctx.Err().
// All goroutines it starts have ended when it returns.
func Run[ID cmp.Ordered](ctx context.Context, cfg Config[ID]) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &consumer[ID]{
		cfg:     &cfg,
		log:     cfg.Logger,
		changed: make(chan struct{}, 1),
		claimed: map[ID]struct{}{},
	}
	loopCtx, stop := context.WithCancel(ctx)
	c.wg.Go(func() { c.heartbeat(loopCtx) })
	c.loop(loopCtx)
	stop()
	c.wg.Wait()
	c.cleanup(context.WithoutCancel(ctx))
	return ctx.Err()
}

// NewToken returns a random claim token (claimed_by) for one consumer.
func NewToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Signal sends on ch without blocking (ch is meant to have a buffer of
// one: a pending signal absorbs the next ones).
func Signal(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Sleep waits for d or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// consumer is one Run call.
type consumer[ID cmp.Ordered] struct {
	cfg     *Config[ID]
	log     *slog.Logger
	changed chan struct{} // a waited-for run finished

	wg sync.WaitGroup // heartbeat and run waiters

	mu       sync.Mutex
	claimed  map[ID]struct{} // rows claimed and neither deleted nor released
	waiting  int             // rows whose run is being waited for
	finished []ID            // rows to delete
	released []ID            // rows to hand back
}

// loop claims and fires until ctx ends.
func (c *consumer[ID]) loop(ctx context.Context) {
	cfg := c.cfg
	idle := cfg.MinPollInterval // pause after an empty claim; doubles while empty
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		room := cfg.BatchSize
		if cfg.Sink.wait != nil {
			c.mu.Lock()
			room = min(room, cfg.MaxWaiting-c.waiting)
			c.mu.Unlock()
		}
		var err error
		n := 0
		if room > 0 {
			select { // a wake-up from now on means a new claim
			case <-cfg.Wake:
			default:
			}
			n, err = c.claimAndFire(ctx, room)
		}
		// Deletes come after the claim, off the path of new rows.
		if ferr := c.flush(ctx); ferr != nil && err == nil {
			err = ferr
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			level := slog.LevelWarn
			if errors.Is(err, batuta.ErrBusy) {
				level = slog.LevelDebug // backpressure, not a fault
			}
			backoff = min(max(2*backoff, MinBackoff), cfg.MaxBackoff)
			c.log.Log(ctx, level, cfg.Package+": outbox consumer backing off", "err", err, "backoff", backoff)
			Sleep(ctx, backoff)
			continue
		}
		backoff = 0
		pause := idle
		switch {
		case room <= 0: // holding MaxWaiting rows: wait for runs to finish
		case n == room:
			idle = cfg.MinPollInterval
			continue // there may be more
		case n > 0:
			pause = cfg.MinPollInterval
			idle = cfg.MinPollInterval
		default:
			idle = min(max(2*idle, cfg.MinPollInterval), cfg.MaxPollInterval)
		}
		timer := time.NewTimer(pause)
		select {
		case <-ctx.Done():
		case <-cfg.Wake:
			idle = cfg.MinPollInterval
		case <-c.changed:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// claimAndFire claims up to n rows and fires them. It returns how many it
// claimed, and an error if it should back off.
func (c *consumer[ID]) claimAndFire(ctx context.Context, n int) (int, error) {
	rows, err := c.cfg.Driver.Claim(ctx, n)
	if err != nil {
		return 0, fmt.Errorf("%s: claim from outbox %s: %w", c.cfg.Package, c.cfg.Outbox, err)
	}
	// The claim committed: these rows are ours until deleted or released.
	c.mu.Lock()
	for _, r := range rows {
		c.claimed[r.ID] = struct{}{}
	}
	c.mu.Unlock()
	slices.SortFunc(rows, func(a, b Row[ID]) int { return cmp.Compare(a.ID, b.ID) })
	for i, r := range rows {
		err := r.Err
		if err == nil {
			var runID string
			runID, err = c.cfg.Sink.fire(ctx, r.Event)
			if err == nil {
				c.accepted(ctx, r.ID, runID)
				continue
			}
		}
		if errors.Is(err, batuta.ErrPayloadTooLarge) || errors.Is(err, batuta.ErrInvalidPayload) {
			c.markDead(ctx, r.ID, err)
			continue
		}
		// Not accepted: hand this row and the rest back, and back off.
		c.mu.Lock()
		for _, r := range rows[i:] {
			c.released = append(c.released, r.ID)
		}
		c.mu.Unlock()
		if ctx.Err() != nil {
			return len(rows), nil //nolint:nilerr // stopping: the rows are handed back, the error is the stop's
		}
		if rerr := c.release(ctx); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return len(rows), fmt.Errorf("%s: fire event %s: %w", c.cfg.Package, r.Event.ID, err)
	}
	return len(rows), nil
}

// accepted records that row id's event was accepted as run runID: the row
// is deleted at once, or, in front of a non-durable store, once the run
// finished.
func (c *consumer[ID]) accepted(ctx context.Context, id ID, runID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg.Sink.wait == nil {
		c.finished = append(c.finished, id)
		return
	}
	c.waiting++
	c.wg.Go(func() {
		_, err := c.cfg.Sink.wait.Wait(ctx, runID)
		if err != nil && ctx.Err() != nil {
			return // shutting down: cleanup releases the row
		}
		c.mu.Lock()
		c.waiting--
		if err == nil || errors.Is(err, batuta.ErrRunNotFound) {
			c.finished = append(c.finished, id)
		} else {
			// Fire it again: the duplicate finds the run, and we wait again.
			c.log.WarnContext(ctx, c.cfg.Package+": waiting for run failed; row released", "row", id, "run", runID, "err", err)
			c.released = append(c.released, id)
		}
		c.mu.Unlock()
		Signal(c.changed)
	})
}

// flush deletes finished rows and releases handed-back ones.
func (c *consumer[ID]) flush(ctx context.Context) error {
	c.mu.Lock()
	ids := c.finished
	c.finished = nil
	c.mu.Unlock()
	if len(ids) > 0 {
		if err := c.cfg.Driver.Delete(ctx, ids); err != nil {
			c.mu.Lock()
			c.finished = append(c.finished, ids...)
			c.mu.Unlock()
			return fmt.Errorf("%s: delete from outbox %s: %w", c.cfg.Package, c.cfg.Outbox, err)
		}
		c.forget(ids...)
	}
	return c.release(ctx)
}

func (c *consumer[ID]) release(ctx context.Context) error {
	c.mu.Lock()
	ids := c.released
	c.released = nil
	c.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	if err := c.cfg.Driver.Release(ctx, ids); err != nil {
		c.mu.Lock()
		c.released = append(c.released, ids...)
		c.mu.Unlock()
		return fmt.Errorf("%s: release outbox %s rows: %w", c.cfg.Package, c.cfg.Outbox, err)
	}
	c.forget(ids...)
	return nil
}

// forget drops ids from the claimed set: they are deleted, released or
// dead.
func (c *consumer[ID]) forget(ids ...ID) {
	c.mu.Lock()
	for _, id := range ids {
		delete(c.claimed, id)
	}
	c.mu.Unlock()
}

func (c *consumer[ID]) markDead(ctx context.Context, id ID, cause error) {
	c.log.ErrorContext(ctx, c.cfg.Package+": outbox row can never be delivered; marked dead", "row", id, "err", cause)
	if err := c.cfg.Driver.MarkDead(ctx, id, cause); err != nil {
		c.log.WarnContext(ctx, c.cfg.Package+": marking outbox row dead failed; it will be retried", "row", id, "err", err)
		c.mu.Lock()
		c.released = append(c.released, id)
		c.mu.Unlock()
		return
	}
	c.forget(id)
}

// heartbeat extends the leases of the rows this consumer holds every
// Lease/3.
func (c *consumer[ID]) heartbeat(ctx context.Context) {
	tick := time.NewTicker(c.cfg.Lease / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c.mu.Lock()
		ids := make([]ID, 0, len(c.claimed))
		for id := range c.claimed {
			ids = append(ids, id)
		}
		c.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		if err := c.cfg.Driver.Renew(ctx, ids); err != nil && ctx.Err() == nil {
			c.log.WarnContext(ctx, c.cfg.Package+": extending outbox leases failed", "rows", len(ids), "err", err)
		}
	}
}

// cleanup runs after the consumer stopped: delete what was delivered,
// release everything else still claimed so another consumer (or the next
// start) takes it at once.
func (c *consumer[ID]) cleanup(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, CleanupTimeout)
	defer cancel()
	c.mu.Lock()
	known := map[ID]bool{}
	for _, id := range c.finished {
		known[id] = true
	}
	for _, id := range c.released {
		known[id] = true
	}
	for id := range c.claimed {
		if !known[id] {
			c.released = append(c.released, id)
		}
	}
	c.mu.Unlock()
	if err := c.flush(ctx); err != nil && ctx.Err() == nil {
		c.log.WarnContext(ctx, c.cfg.Package+": outbox cleanup at shutdown failed; rows are taken again when their lease expires", "err", err)
	}
}
