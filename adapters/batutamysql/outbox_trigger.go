package batutamysql

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
)

// Defaults of TriggerConfig.
const (
	DefaultBatchSize          = 100
	DefaultMinPollInterval    = 10 * time.Millisecond
	DefaultMaxPollInterval    = time.Second
	DefaultLease              = 30 * time.Second
	DefaultMaxWaiting         = 1000
	DefaultMaxBackoff         = 5 * time.Second
	DefaultStaleCheckInterval = time.Minute
)

// minBackoff is the first pause after an error; it doubles up to MaxBackoff.
const minBackoff = 10 * time.Millisecond

// cleanupTimeout bounds the statements a consumer runs after its ctx ended
// (deleting delivered rows, releasing the others).
const cleanupTimeout = 5 * time.Second

// TriggerConfig configures a Trigger. Only DB is required.
type TriggerConfig struct {
	// DB is the database holding the outbox, typically the service's own
	// pool. A consumer uses one connection at a time for claims and
	// deletes, plus one now and then for lease renewals and checks.
	DB *sql.DB
	// Outbox to consume; its zero value is batuta_outbox in the
	// connection's current database. It must have been installed
	// (InstallOutbox or InstallCapture).
	Outbox Outbox
	// BatchSize is how many rows one claim takes. Default 100.
	BatchSize int
	// MinPollInterval is the pause before the next claim after a claim that
	// found rows but not a full batch (after a full batch there is none).
	// Default 10 ms.
	MinPollInterval time.Duration
	// MaxPollInterval caps the pause between claims of an idle outbox:
	// MySQL has no LISTEN/NOTIFY, so the outbox is polled, and the pause
	// doubles from MinPollInterval at each empty claim up to
	// MaxPollInterval. An idle outbox costs one small query per
	// MaxPollInterval, and a change committed to it waits at most that long
	// (about half of it on average) before it is claimed. Default 1 s. A
	// writer in the same process can call Trigger.Wake after its commit to
	// skip the wait.
	MaxPollInterval time.Duration
	// Lease is how long a claim holds a row. A consumer extends the leases
	// of the rows it holds every Lease/3; if it dies, its rows are claimed
	// again by any consumer once the lease expired. Default 30 s; at least
	// 1 s. Leases are judged by the database's clock.
	Lease time.Duration
	// MaxWaiting bounds the rows one consumer holds while their runs
	// finish (with a non-durable Store only, see Trigger). Default 1000.
	MaxWaiting int
	// MaxBackoff caps the pause after an error (database unreachable, fire
	// refused with batuta.ErrBusy, ...); pauses start at 10 ms and double.
	// Default 5 s.
	MaxBackoff time.Duration
	// StaleCheckInterval is how often the consumer checks the capture
	// triggers recorded as writing into its outbox against their tables'
	// present columns, and logs a warning for each stale one (see
	// CaptureStatus), starting at Run. Default 1 min; negative disables it.
	StaleCheckInterval time.Duration
	// Logger receives warnings (errors that are retried, stale captures)
	// and errors (dead rows). Default slog.Default().
	Logger *slog.Logger
}

func (c TriggerConfig) withDefaults() TriggerConfig {
	c.Outbox = c.Outbox.withDefaults()
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MinPollInterval == 0 {
		c.MinPollInterval = DefaultMinPollInterval
	}
	if c.MaxPollInterval == 0 {
		c.MaxPollInterval = DefaultMaxPollInterval
	}
	if c.Lease == 0 {
		c.Lease = DefaultLease
	}
	if c.MaxWaiting == 0 {
		c.MaxWaiting = DefaultMaxWaiting
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.StaleCheckInterval == 0 {
		c.StaleCheckInterval = DefaultStaleCheckInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c TriggerConfig) validate() error {
	switch {
	case c.DB == nil:
		return &batuta.ConfigError{Field: "DB", Reason: "required"}
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return &batuta.ConfigError{Field: "BatchSize", Reason: "must be between 1 and 10000"}
	case c.MinPollInterval < 0:
		return &batuta.ConfigError{Field: "MinPollInterval", Reason: "must not be negative"}
	case c.MaxPollInterval < c.MinPollInterval:
		return &batuta.ConfigError{Field: "MaxPollInterval", Reason: "must not be below MinPollInterval"}
	case c.Lease < time.Second:
		return &batuta.ConfigError{Field: "Lease", Reason: "must be at least 1s"}
	case c.MaxWaiting < 1:
		return &batuta.ConfigError{Field: "MaxWaiting", Reason: "must be positive"}
	case c.MaxBackoff < 0:
		return &batuta.ConfigError{Field: "MaxBackoff", Reason: "must not be negative"}
	}
	return c.Outbox.validate("Outbox.")
}

// Trigger is a batuta.Trigger (and batuta.TrackingTrigger) that consumes an
// outbox table, filled by capture triggers (InstallCapture) and by Emit,
// and fires one event per row.
//
// # Delivery
//
// A consumer claims up to BatchSize rows at a time with SELECT ... FOR
// UPDATE SKIP LOCKED (MariaDB 10.6+, MySQL 8.0+) in a short READ COMMITTED
// transaction that stamps them with a lease (claimed_until, claimed_by), so
// no transaction stays open while events are fired or runs are waited for,
// and the rows of a consumer that dies are claimed again once its lease
// expired. It then fires each row, in id order, as an Event whose ID is
// "mysql/<schema>.<outbox>/<row id>" (or the ID given to Emit): stable for
// the row, so a row fired again after a crash is deduplicated by the
// orchestrator. A row is deleted only after its event was accepted:
//
//   - with a durable Store, as soon as fire returned nil;
//   - with a non-durable Store (the in-memory default), only after the
//     run finished (RunTracking waits for it), so a crash loses no
//     committed change: it runs again after restart.
//
// When fire fails (batuta.ErrBusy, store down) the row and the rest of the
// batch are released and the consumer backs off. A row that can never be
// accepted (its event is over the orchestrator's payload cap or malformed:
// batuta.ErrPayloadTooLarge, batuta.ErrInvalidPayload) is kept and marked
// dead (dead_at, last_error are set; it is skipped from then on; clear
// dead_at to retry it). On shutdown a consumer deletes what was delivered
// and releases the rest at once, so a restart needs not wait for leases.
//
// Several consumers (instances, or several Run calls) may share an outbox:
// a row is held by one consumer at a time. Rows are claimed, not followed
// by an id watermark (AUTO_INCREMENT values are assigned at insert, not at
// commit), so a row committed late under a lower id is not skipped. Order
// is by row id within a batch, with no order guarantee across consumers or
// redeliveries.
//
// # Polling
//
// MySQL cannot notify, so a consumer polls with an adaptive interval: at
// once after a full batch, MinPollInterval after a partial one, and
// doubling up to MaxPollInterval while the outbox stays empty. Wake cuts a
// wait short.
//
// Timers (polling, backoff, heartbeats) use the wall clock, since leases
// are judged by the database's clock. A Trigger is safe for concurrent use:
// each Run or RunTracking call is an independent consumer.
type Trigger struct {
	cfg  TriggerConfig
	wake chan struct{}
}

var _ batuta.TrackingTrigger = (*Trigger)(nil)

// NewTrigger validates cfg and returns a Trigger. It does no I/O; Run
// checks that the outbox is installed.
func NewTrigger(cfg TriggerConfig) (*Trigger, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Trigger{cfg: cfg, wake: make(chan struct{}, 1)}, nil
}

// Wake makes a polling consumer of t claim now instead of waiting out its
// poll interval, e.g. right after committing a captured write. It never
// blocks; with several consumers running, one of them wakes.
func (t *Trigger) Wake() { signal(t.wake) }

// Run consumes the outbox until ctx ends, calling fire once per row, and
// deleting each row as soon as fire accepted it (as for a durable Store).
// The orchestrator calls RunTracking instead, which also covers
// non-durable Stores. Run returns ctx.Err() when ctx ends, or an error at
// once if the outbox is not installed.
func (t *Trigger) Run(ctx context.Context, fire batuta.FireFunc) error {
	return t.run(ctx, func(ctx context.Context, ev batuta.Event) (string, error) {
		return "", fire(ctx, ev)
	}, nil)
}

// RunTracking is Run for the orchestrator: with a non-durable Store
// (runs.Durable() false) a row is deleted only after its run finished.
func (t *Trigger) RunTracking(ctx context.Context, runs batuta.Runs) error {
	if runs.Durable() {
		return t.run(ctx, runs.Fire, nil)
	}
	return t.run(ctx, runs.Fire, runs)
}

func (t *Trigger) run(ctx context.Context, fire func(context.Context, batuta.Event) (string, error), waitRuns batuta.Runs) error {
	ob := t.cfg.Outbox
	schema, err := resolveSchema(ctx, t.cfg.DB, ob.Schema)
	if err != nil {
		return fmt.Errorf("batutamysql: outbox %s: %w", ob, err)
	}
	ob.Schema = schema
	st, err := outboxStatus(ctx, t.cfg.DB, ob)
	if err != nil {
		return fmt.Errorf("batutamysql: outbox status of %s: %w", ob, err)
	}
	if !st.Installed {
		return fmt.Errorf("batutamysql: outbox %s is not installed (call InstallOutbox or InstallCapture): %v", ob, st.Problems)
	}
	c := &consumer{
		t:        t,
		ob:       ob,
		table:    ob.quoted(),
		token:    newToken(),
		fire:     fire,
		waitRuns: waitRuns,
		log:      t.cfg.Logger.With("outbox", ob.String()),
		changed:  make(chan struct{}, 1),
		claimed:  map[uint64]struct{}{},
	}
	return c.run(ctx)
}

func newToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// consumer is one Run call.
type consumer struct {
	t        *Trigger
	ob       Outbox // Schema resolved
	table    string // quoted outbox name
	token    string // claimed_by of this consumer's claims
	fire     func(context.Context, batuta.Event) (string, error)
	waitRuns batuta.Runs // non-nil: delete rows only after their run finished
	log      *slog.Logger
	changed  chan struct{} // a waited-for run finished

	wg sync.WaitGroup // maintenance and run waiters

	mu       sync.Mutex
	claimed  map[uint64]struct{} // rows claimed and neither deleted nor released
	waiting  int                 // rows whose run is being waited for
	finished []uint64            // rows to delete
	released []uint64            // rows to hand back
}

func (c *consumer) run(ctx context.Context) error {
	loopCtx, stop := context.WithCancel(ctx)
	c.wg.Go(func() { c.maintain(loopCtx) })
	c.loop(loopCtx)
	stop()
	c.wg.Wait()
	c.cleanup(context.WithoutCancel(ctx))
	return ctx.Err()
}

// loop claims and fires until ctx ends.
func (c *consumer) loop(ctx context.Context) {
	cfg := &c.t.cfg
	idle := cfg.MinPollInterval // pause after an empty claim; doubles while empty
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		failed := false
		if err := c.flush(ctx); err != nil && ctx.Err() == nil { // at shutdown, cleanup flushes
			c.log.WarnContext(ctx, "batutamysql: outbox delete failed; retrying", "err", err)
			failed = true
		}
		room := cfg.BatchSize
		if c.waitRuns != nil {
			c.mu.Lock()
			room = min(room, cfg.MaxWaiting-c.waiting)
			c.mu.Unlock()
		}
		pause := idle
		if room > 0 && !failed {
			n, err := c.claimAndFire(ctx, room)
			switch {
			case err != nil && ctx.Err() == nil:
				c.log.WarnContext(ctx, "batutamysql: outbox consumer backing off", "err", err)
				failed = true
			case n == room:
				pause = 0 // there may be more
				idle = cfg.MinPollInterval
			case n > 0:
				pause = cfg.MinPollInterval
				idle = cfg.MinPollInterval
			default:
				idle = min(max(2*idle, cfg.MinPollInterval), cfg.MaxPollInterval)
			}
		}
		if failed {
			backoff = min(max(2*backoff, minBackoff), cfg.MaxBackoff)
			sleep(ctx, backoff)
			continue
		}
		backoff = 0
		if pause == 0 {
			continue
		}
		timer := time.NewTimer(pause)
		select {
		case <-ctx.Done():
		case <-c.t.wake:
			idle = cfg.MinPollInterval
		case <-c.changed:
		case <-timer.C:
		}
		timer.Stop()
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// claimAndFire claims up to n rows and fires them. It returns how many it
// claimed, and an error if it should back off.
func (c *consumer) claimAndFire(ctx context.Context, n int) (int, error) {
	rows, err := c.claim(ctx, n)
	if err != nil {
		return 0, err
	}
	for i := range rows {
		r := &rows[i]
		ev, err := r.event(c.ob.Schema, c.ob.Table)
		if err == nil {
			var runID string
			runID, err = c.fire(ctx, ev)
			if err == nil {
				c.accepted(ctx, r.id, runID)
				continue
			}
		}
		if errors.Is(err, batuta.ErrPayloadTooLarge) || errors.Is(err, batuta.ErrInvalidPayload) {
			c.markDead(ctx, r.id, err)
			continue
		}
		// Not accepted: hand this row and the rest back, and back off.
		c.mu.Lock()
		for _, r := range rows[i:] {
			c.released = append(c.released, r.id)
		}
		c.mu.Unlock()
		if ctx.Err() != nil {
			return len(rows), nil
		}
		if rerr := c.release(ctx); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return len(rows), fmt.Errorf("batutamysql: fire event %s: %w", ev.ID, err)
	}
	return len(rows), c.flush(ctx)
}

// claim leases up to n free rows (not dead, never leased or lease expired)
// in a short READ COMMITTED transaction: READ COMMITTED takes no gap locks,
// so claims never block the writers inserting into the outbox, and with
// SKIP LOCKED concurrent claimers never wait for each other.
func (c *consumer) claim(ctx context.Context, n int) (rows []outboxRow, err error) {
	wrap := func(err error) error { return fmt.Errorf("batutamysql: claim from outbox %s: %w", c.ob, err) }
	tx, err := c.t.cfg.DB.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return nil, wrap(err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	rs, err := tx.QueryContext(ctx, "SELECT "+outboxColumns+" FROM "+c.table+
		" WHERE dead_at IS NULL AND (claimed_until IS NULL OR claimed_until < UTC_TIMESTAMP(6))"+
		" ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED", n)
	if err != nil {
		return nil, wrap(err)
	}
	for rs.Next() {
		var r outboxRow
		if err := r.scan(rs); err != nil {
			rs.Close()
			return nil, wrap(err)
		}
		r.deliveries++ // counted by the UPDATE below
		rows = append(rows, r)
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return nil, wrap(err)
	}
	if len(rows) > 0 {
		in, args := inList(rowIDs(rows))
		args = append([]any{c.t.cfg.Lease.Microseconds(), c.token}, args...)
		if _, err := tx.ExecContext(ctx, "UPDATE "+c.table+
			" SET claimed_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, claimed_by = ?, deliveries = deliveries + 1"+
			" WHERE id IN ("+in+")", args...); err != nil {
			return nil, wrap(err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, wrap(err)
	}
	// The claim committed: these rows are ours until deleted or released.
	c.mu.Lock()
	for _, r := range rows {
		c.claimed[r.id] = struct{}{}
	}
	c.mu.Unlock()
	return rows, nil
}

func rowIDs(rows []outboxRow) []uint64 {
	out := make([]uint64, len(rows))
	for i := range rows {
		out[i] = rows[i].id
	}
	return out
}

// inList returns "?, ?, ..." and the arguments for ids.
func inList(ids []uint64) (string, []any) {
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	return strings.TrimSuffix(strings.Repeat("?, ", len(ids)), ", "), args
}

// inChunks runs stmt (which ends in "IN (") for ids, 500 at a time, with
// pre before the ids and claimed_by as the last condition.
func (c *consumer) inChunks(ctx context.Context, stmt string, pre []any, ids []uint64) error {
	for len(ids) > 0 {
		part := ids[:min(len(ids), 500)]
		ids = ids[len(part):]
		in, args := inList(part)
		args = append(append(append([]any{}, pre...), args...), c.token)
		if _, err := c.t.cfg.DB.ExecContext(ctx, stmt+in+") AND claimed_by = ?", args...); err != nil {
			return err
		}
	}
	return nil
}

// accepted records that row id's event was accepted as run runID: the row
// is deleted at once, or, in front of a non-durable store, once the run
// finished.
func (c *consumer) accepted(ctx context.Context, id uint64, runID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waitRuns == nil {
		c.finished = append(c.finished, id)
		return
	}
	c.waiting++
	c.wg.Go(func() {
		_, err := c.waitRuns.Wait(ctx, runID)
		if err != nil && ctx.Err() != nil {
			return // shutting down: cleanup releases the row
		}
		c.mu.Lock()
		c.waiting--
		if err == nil || errors.Is(err, batuta.ErrRunNotFound) {
			c.finished = append(c.finished, id)
		} else {
			// Fire it again: the duplicate finds the run, and we wait again.
			c.log.WarnContext(ctx, "batutamysql: waiting for run failed; row released", "row", id, "run", runID, "err", err)
			c.released = append(c.released, id)
		}
		c.mu.Unlock()
		signal(c.changed)
	})
}

// flush deletes finished rows and releases handed-back ones.
func (c *consumer) flush(ctx context.Context) error {
	c.mu.Lock()
	ids := c.finished
	c.finished = nil
	c.mu.Unlock()
	if len(ids) > 0 {
		if err := c.inChunks(ctx, "DELETE FROM "+c.table+" WHERE id IN (", nil, ids); err != nil {
			c.mu.Lock()
			c.finished = append(c.finished, ids...)
			c.mu.Unlock()
			return fmt.Errorf("batutamysql: delete from outbox %s: %w", c.ob, err)
		}
		c.forget(ids)
	}
	return c.release(ctx)
}

func (c *consumer) forget(ids []uint64) {
	c.mu.Lock()
	for _, id := range ids {
		delete(c.claimed, id)
	}
	c.mu.Unlock()
}

func (c *consumer) release(ctx context.Context) error {
	c.mu.Lock()
	ids := c.released
	c.released = nil
	c.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	if err := c.inChunks(ctx, "UPDATE "+c.table+" SET claimed_until = NULL, claimed_by = NULL WHERE id IN (", nil, ids); err != nil {
		c.mu.Lock()
		c.released = append(c.released, ids...)
		c.mu.Unlock()
		return fmt.Errorf("batutamysql: release outbox %s rows: %w", c.ob, err)
	}
	c.forget(ids)
	return nil
}

func (c *consumer) markDead(ctx context.Context, id uint64, cause error) {
	c.log.ErrorContext(ctx, "batutamysql: outbox row can never be delivered; marked dead", "row", id, "err", cause)
	msg := cause.Error()
	if len(msg) > 4000 {
		msg = msg[:4000]
	}
	if _, err := c.t.cfg.DB.ExecContext(ctx, "UPDATE "+c.table+
		" SET dead_at = UTC_TIMESTAMP(6), last_error = ?, claimed_until = NULL, claimed_by = NULL WHERE id = ? AND claimed_by = ?",
		msg, id, c.token); err != nil {
		c.log.WarnContext(ctx, "batutamysql: marking outbox row dead failed; it will be retried", "row", id, "err", err)
		c.mu.Lock()
		c.released = append(c.released, id)
		c.mu.Unlock()
		return
	}
	c.forget([]uint64{id})
}

// maintain extends the leases of the rows this consumer holds every
// Lease/3, and checks for stale captures every StaleCheckInterval.
func (c *consumer) maintain(ctx context.Context) {
	cfg := &c.t.cfg
	check := cfg.StaleCheckInterval > 0
	var lastCheck time.Time
	tick := time.NewTicker(cfg.Lease / 3)
	defer tick.Stop()
	for {
		if check && time.Since(lastCheck) >= cfg.StaleCheckInterval {
			c.checkStale(ctx)
			lastCheck = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c.mu.Lock()
		ids := make([]uint64, 0, len(c.claimed))
		for id := range c.claimed {
			ids = append(ids, id)
		}
		c.mu.Unlock()
		err := c.inChunks(ctx, "UPDATE "+c.table+" SET claimed_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND WHERE id IN (",
			[]any{cfg.Lease.Microseconds()}, ids)
		if err != nil && ctx.Err() == nil {
			c.log.WarnContext(ctx, "batutamysql: extending outbox leases failed", "rows", len(ids), "err", err)
		}
	}
}

// checkStale logs a warning for each capture trigger recorded as writing
// into this outbox whose table has changed since it was installed.
func (c *consumer) checkStale(ctx context.Context) {
	rows, err := c.t.cfg.DB.QueryContext(ctx, "SELECT table_schema, table_name, trigger_name, op, columns_json FROM "+
		quoteQualified(c.ob.Schema, capturesTable)+" WHERE outbox = ?", c.ob.Table)
	if err != nil {
		if ctx.Err() == nil {
			c.log.WarnContext(ctx, "batutamysql: checking captures for staleness failed", "err", err)
		}
		return
	}
	type capture struct{ schema, table, trigger, op, cols string }
	var caps []capture
	for rows.Next() {
		var k capture
		if rows.Scan(&k.schema, &k.table, &k.trigger, &k.op, &k.cols) == nil {
			caps = append(caps, k)
		}
	}
	rows.Close()
	for _, k := range caps {
		cols, err := loadColumns(ctx, c.t.cfg.DB, k.schema, k.table)
		if err != nil {
			return
		}
		if d := columnDrift(k.cols, cols); d != "" {
			c.log.WarnContext(ctx, "batutamysql: capture trigger is stale; run InstallCapture again, or the change is left out of row images",
				"table", k.schema+"."+k.table, "op", k.op, "trigger", k.trigger, "change", d)
		}
	}
}

// cleanup runs after the consumer stopped: delete what was delivered,
// release everything else still claimed so another consumer (or the next
// start) takes it at once.
func (c *consumer) cleanup(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
	defer cancel()
	c.mu.Lock()
	known := map[uint64]bool{}
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
	if err := c.flush(ctx); err != nil && ctx.Err() == nil { // at shutdown, cleanup flushes
		c.log.WarnContext(ctx, "batutamysql: outbox cleanup at shutdown failed; rows are taken again when their lease expires", "err", err)
	}
}
