package batuta

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// cronBatchLinger bounds how long the first cron fire of an instant waits
// for the other schedules due at the same instant before their runs are
// recorded together.
const cronBatchLinger = 5 * time.Millisecond

// fireBatcher combines the cron fires of one instant (many schedules
// sharing a tick time) into one Store.CreateRuns call: one round trip and
// one commit for a durable store, instead of one per schedule.
//
// A cron loop takes a ticket for the instant it sleeps toward (expect) and
// gives it back when it fires that tick (the ticket joins the instant's
// group) or decides not to (release). The first fire of an instant leads:
// it waits until no ticket of the instant is out (every loop due then has
// fired or given up) or cronBatchLinger has passed, then records the
// group's runs. Fires without a ticket, or after their group left, are
// recorded as they come (a group of one goes through CreateRun).
type fireBatcher struct {
	linger time.Duration // 0: cronBatchLinger (tests set it)

	mu     sync.Mutex
	groups map[fireKey]*fireGroup
}

// fireKey names a group: the tick's instant, whether the fires are the
// fallback ones of instances not preferred for the tick (see PeerLister),
// which come later, and how long before the tick its runs are created
// (CronConfig.Ahead: schedules with different leads fire apart).
type fireKey struct {
	at       int64 // UnixNano
	fallback bool
	lead     time.Duration
}

type fireGroup struct {
	key     fireKey
	tickets int // out: expected fires not yet joined or released
	items   []*fireItem
	ready   chan struct{} // closed when tickets reaches 0 with items waiting
	closed  bool
	led     bool // a leader waits for this group
}

type fireItem struct {
	ctx     context.Context
	nr      NewRun
	id      string
	created bool
	err     error
	done    chan struct{}
}

// fireTicket is one loop's expected fire of one instant.
type fireTicket struct {
	b    *fireBatcher
	key  fireKey
	used bool // joined or released (guarded by b.mu)
}

// expect takes a ticket for a fire of the tick at instant at (fallback:
// a fallback fire of it), made lead before it.
func (b *fireBatcher) expect(at time.Time, fallback bool, lead time.Duration) *fireTicket {
	k := fireKey{at.UnixNano(), fallback, lead}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.groups == nil {
		b.groups = make(map[fireKey]*fireGroup)
	}
	g := b.groups[k]
	if g == nil {
		g = &fireGroup{key: k, ready: make(chan struct{})}
		b.groups[k] = g
	}
	g.tickets++
	return &fireTicket{b: b, key: k}
}

// release gives the ticket back unused (no-op if it was used). Safe on nil.
func (t *fireTicket) release() {
	if t == nil {
		return
	}
	b := t.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.used {
		return
	}
	t.used = true
	if g := b.groups[t.key]; g != nil {
		g.tickets--
		b.settleLocked(g)
	}
}

// settleLocked signals the leader once no ticket is out, and forgets a
// group nobody waits on.
func (b *fireBatcher) settleLocked(g *fireGroup) {
	if g.tickets > 0 {
		return
	}
	if len(g.items) == 0 {
		delete(b.groups, g.key)
		return
	}
	if !g.closed {
		g.closed = true
		close(g.ready)
	}
}

// create records nr as part of t's instant if t is for nr's tick, else at
// once. It is the create function of Orchestrator.submitWith.
func (b *fireBatcher) create(ctx context.Context, o *Orchestrator, t *fireTicket, nr NewRun) (string, bool, error) {
	if err := ctx.Err(); err != nil {
		t.release()
		return "", false, err
	}
	if t == nil || t.key.at != nr.Event.Time.UnixNano() {
		t.release()
		return o.store.CreateRun(ctx, nr)
	}
	it := &fireItem{ctx: ctx, nr: nr, done: make(chan struct{})}
	b.mu.Lock()
	g := b.groups[t.key]
	if t.used || g == nil {
		b.mu.Unlock()
		return o.store.CreateRun(ctx, nr)
	}
	t.used = true
	g.tickets--
	g.items = append(g.items, it)
	lead := !g.led
	g.led = true
	b.settleLocked(g)
	b.mu.Unlock()
	if lead {
		linger := b.linger
		if linger == 0 {
			linger = cronBatchLinger
		}
		timer := time.NewTimer(linger)
		select {
		case <-g.ready:
		case <-timer.C:
		case <-ctx.Done(): // the others' fires go now, without this one
		}
		timer.Stop()
		b.mu.Lock()
		if b.groups[g.key] == g {
			delete(b.groups, g.key) // later fires of the instant record at once
		}
		items := g.items
		g.items = nil
		b.mu.Unlock()
		b.flush(o, items) //nolint:contextcheck // the batch runs until every caller in it gave up, not only the leader
	}
	select {
	case <-it.done:
	case <-ctx.Done():
	}
	if err := ctx.Err(); err != nil {
		return "", false, err // the run may or may not have been recorded
	}
	return it.id, it.created, it.err
}

// flush records items: one CreateRuns call for several, CreateRun for one.
// If CreateRuns fails (it records nothing then), each item is tried alone,
// so that each gets its own answer (a duplicate, say, is not refused as
// busy). The store call runs with the first item's ctx values until every
// caller in items has given up.
func (b *fireBatcher) flush(o *Orchestrator, items []*fireItem) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(items[0].ctx))
	defer cancel()
	var left atomic.Int32
	left.Store(int32(len(items)))
	for _, it := range items {
		stop := context.AfterFunc(it.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
		defer stop()
	}
	one := func(it *fireItem) {
		it.id, it.created, it.err = o.store.CreateRun(ctx, it.nr)
		if it.err != nil && it.ctx.Err() != nil {
			it.err = it.ctx.Err()
		}
		close(it.done)
	}
	nrs := make([]NewRun, len(items))
	for i, it := range items {
		nrs[i] = it.nr
	}
	var res []CreateResult
	var err error
	done := false
	later := false // a run starting later has no task to claim yet
	now := o.clock.Now()
	for _, nr := range nrs {
		later = later || nr.StartAt.After(now)
	}
	if ex := o.ex.Load(); ex != nil && ex.creator != nil && !later {
		// This instance's free workers start the first tasks of the
		// instant's runs, claimed in the transaction that records them.
		res, _, done, err = ex.createAndClaim(ctx, nrs, now)
	}
	switch {
	case done:
	case len(items) == 1:
		one(items[0])
		return
	default:
		res, err = o.store.CreateRuns(ctx, nrs)
	}
	if err == nil && len(res) != len(items) {
		o.log.Error("batuta: store returned a wrong number of results for CreateRuns; creating the runs one by one", "runs", len(items), "results", len(res))
		err = errWrongResults
	}
	if err != nil {
		for _, it := range items {
			if it.ctx.Err() != nil {
				it.err = it.ctx.Err()
				close(it.done)
				continue
			}
			one(it)
		}
		return
	}
	for i, it := range items {
		r := res[i]
		it.id, it.created = r.ID, r.Created
		close(it.done)
	}
}

var errWrongResults = errors.New("batuta: CreateRuns returned a wrong number of results")

// batchFirer is implemented by the orchestrator's Runs: Fire with the
// loop's ticket for the tick's instant (see fireBatcher).
type batchFirer interface {
	expectFire(at time.Time, fallback bool, lead time.Duration) *fireTicket
	fireBatched(ctx context.Context, t *fireTicket, ev Event) (string, error)
}

func (r *runsView) expectFire(at time.Time, fallback bool, lead time.Duration) *fireTicket {
	if !r.o.store.Durable() {
		return nil // an in-memory CreateRun costs no round trip
	}
	return r.o.fireBatch.expect(at, fallback, lead)
}

// firesWithOptions marks runsView as a startAtFirer: Fire honours the
// options of WithSubmitOptions.
func (r *runsView) firesWithOptions() {}

func (r *runsView) fireBatched(ctx context.Context, t *fireTicket, ev Event) (string, error) {
	if t == nil {
		return r.Fire(ctx, ev)
	}
	b := r.b
	if b == nil {
		b = &binding{workflow: r.workflow}
	}
	opts, err := fireOptions(ctx, b, ev)
	if err != nil {
		t.release()
		return "", err
	}
	id, _, err := r.o.submitWith(ctx, r.workflow, ev, opts, func(ctx context.Context, nr NewRun) (string, bool, error) {
		return r.o.fireBatch.create(ctx, r.o, t, nr)
	})
	t.release() // submit may have failed before create
	return id, err
}
