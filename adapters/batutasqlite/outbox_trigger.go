package batutasqlite

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxloop"
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

// TriggerConfig configures a Trigger. Only DB is required.
type TriggerConfig struct {
	// DB is the database holding the outbox, typically the service's own
	// *sql.DB. Open it with a busy timeout (modernc.org/sqlite:
	// _pragma=busy_timeout(5000)) and in WAL mode, so claims and deletes,
	// which are writes, wait for the write lock instead of failing with
	// SQLITE_BUSY (a failed claim is retried after a backoff anyway). A
	// consumer uses one connection at a time for claims and deletes, plus
	// one now and then for lease renewals and checks.
	DB *sql.DB
	// Outbox to consume; its zero value is batuta_outbox. It must have been
	// installed (InstallOutbox or InstallCapture).
	Outbox Outbox
	// BatchSize is how many rows one claim takes. Default 100.
	BatchSize int
	// MinPollInterval is the pause before the next claim after a claim that
	// found rows but not a full batch (after a full batch there is none).
	// Default 10 ms.
	MinPollInterval time.Duration
	// MaxPollInterval caps the pause between claims of an idle outbox:
	// SQLite cannot notify other connections, so the outbox is polled, and
	// the pause doubles from MinPollInterval at each empty claim up to
	// MaxPollInterval. An idle outbox costs one small query per
	// MaxPollInterval, and a change committed to it waits at most that long
	// (about half of it on average) before it is claimed. Default 1 s. A
	// writer in the same process can call Trigger.Wake after its commit to
	// skip the wait.
	MaxPollInterval time.Duration
	// Lease is how long a claim holds a row. A consumer extends the leases
	// of the rows it holds every Lease/3; if it dies, its rows are claimed
	// again by any consumer once the lease expired. Default 30 s; at least
	// 1 s. Leases are judged by SQLite's clock when the statement runs, the
	// machine's wall clock (every process sharing a SQLite file runs on one
	// machine). SQLite's write lock is not fair: under heavy write load a
	// renewal may wait for it for a good part of a second, so keep Lease
	// well above that (several seconds at least).
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
// SQLite has one writer at a time and no SKIP LOCKED: a consumer claims up
// to BatchSize rows at a time with one UPDATE ... RETURNING that stamps
// them with a lease (claimed_until, claimed_by), atomic under SQLite's
// write lock, so no transaction stays open while events are fired or runs
// are waited for, two consumers (in one process or several) never claim
// the same row, and the rows of a consumer that dies are claimed again once
// its lease expired. It then fires each row, in id order, as an Event whose
// ID is "sqlite/<outbox>/<row id>" (or the ID given to Emit): stable for
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
// by an id watermark, so no row is ever skipped. Order is by row id within
// a batch, with no order guarantee across consumers or redeliveries.
//
// # Polling
//
// SQLite cannot notify other connections, so a consumer polls with an
// adaptive interval: at once after a full batch, MinPollInterval after a
// partial one, and doubling up to MaxPollInterval while the outbox stays
// empty. Wake cuts a wait short.
//
// Timers (polling, backoff, heartbeats) use the wall clock, since leases
// are judged by it. A Trigger is safe for concurrent use: each Run or
// RunTracking call is an independent consumer.
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
func (t *Trigger) Wake() { outboxloop.Signal(t.wake) }

// Run consumes the outbox until ctx ends, calling fire once per row, and
// deleting each row as soon as fire accepted it (as for a durable Store).
// The orchestrator calls RunTracking instead, which also covers
// non-durable Stores. Run returns ctx.Err() when ctx ends, or an error at
// once if the outbox is not installed.
func (t *Trigger) Run(ctx context.Context, fire batuta.FireFunc) error {
	return t.run(ctx, outboxloop.Fire(fire))
}

// RunTracking is Run for the orchestrator: with a non-durable Store
// (runs.Durable() false) a row is deleted only after its run finished.
func (t *Trigger) RunTracking(ctx context.Context, runs batuta.Runs) error {
	return t.run(ctx, outboxloop.Tracking(runs))
}

func (t *Trigger) run(ctx context.Context, sink outboxloop.Sink) error {
	ob := t.cfg.Outbox
	st, err := outboxStatus(ctx, t.cfg.DB, ob)
	if err != nil {
		return fmt.Errorf("batutasqlite: outbox status of %s: %w", ob, err)
	}
	if !st.Installed {
		return fmt.Errorf("batutasqlite: outbox %s is not installed (call InstallOutbox or InstallCapture): %v", ob, st.Problems)
	}
	c := &consumer{
		t:     t,
		ob:    ob,
		table: ob.quoted(),
		token: outboxloop.NewToken(),
		log:   t.cfg.Logger.With("outbox", ob.String()),
	}
	var wg sync.WaitGroup
	checkCtx, stop := context.WithCancel(ctx)
	if t.cfg.StaleCheckInterval > 0 {
		wg.Go(func() { c.checkStaleEvery(checkCtx, t.cfg.StaleCheckInterval) })
	}
	err = outboxloop.Run(ctx, outboxloop.Config[int64]{
		Driver:          c,
		Sink:            sink,
		Wake:            t.wake,
		Package:         "batutasqlite",
		Outbox:          ob.String(),
		BatchSize:       t.cfg.BatchSize,
		MaxWaiting:      t.cfg.MaxWaiting,
		MinPollInterval: t.cfg.MinPollInterval,
		MaxPollInterval: t.cfg.MaxPollInterval,
		Lease:           t.cfg.Lease,
		MaxBackoff:      t.cfg.MaxBackoff,
		Logger:          c.log,
	})
	stop()
	wg.Wait()
	return err
}

// consumer is the outboxloop.Driver of one Run call.
type consumer struct {
	t     *Trigger
	ob    Outbox
	table string // quoted outbox name
	token string // claimed_by of this consumer's claims
	log   *slog.Logger
}

var _ outboxloop.Driver[int64] = (*consumer)(nil)

// nowMillisSQL is the current Unix time in milliseconds, read when the
// statement runs, that is once it holds the write lock: time spent waiting
// for the lock does not eat into a lease. (julianday rather than
// unixepoch('subsec'), which needs SQLite 3.42.)
const nowMillisSQL = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"

// Claim leases up to n free rows (not dead, never leased or lease expired)
// with one UPDATE ... RETURNING (SQLite 3.35+), atomic under SQLite's write
// lock. RETURNING order is unspecified; outboxloop sorts the rows.
func (c *consumer) Claim(ctx context.Context, n int) ([]outboxloop.Row[int64], error) {
	rs, err := c.t.cfg.DB.QueryContext(ctx, "UPDATE "+c.table+
		" SET claimed_until = "+nowMillisSQL+" + ?, claimed_by = ?, deliveries = deliveries + 1 WHERE id IN (SELECT id FROM "+c.table+
		" WHERE dead_at IS NULL AND (claimed_until IS NULL OR claimed_until < "+nowMillisSQL+") ORDER BY id LIMIT ?) RETURNING "+outboxColumns,
		c.t.cfg.Lease.Milliseconds(), c.token, n)
	if err != nil {
		return nil, err
	}
	var out []outboxloop.Row[int64]
	for rs.Next() {
		var r outboxRow
		if err := r.scan(rs); err != nil {
			rs.Close()
			return nil, err
		}
		ev, err := r.event(c.ob.Table)
		out = append(out, outboxloop.Row[int64]{ID: r.id, Event: ev, Err: err})
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		// The UPDATE may or may not have committed; rows it leased come
		// back when the lease expires.
		return nil, err
	}
	return out, nil
}

// exec runs stmt (which ends in "IN (") for ids with pre before them,
// limited to this consumer's claims.
func (c *consumer) exec(ctx context.Context, stmt string, pre []any, ids []int64) error {
	return outboxloop.ExecIn(ctx, c.t.cfg.DB, stmt, pre, ids, c.token)
}

// Renew implements outboxloop.Driver.
func (c *consumer) Renew(ctx context.Context, ids []int64) error {
	return c.exec(ctx, "UPDATE "+c.table+" SET claimed_until = "+nowMillisSQL+" + ? WHERE id IN (",
		[]any{c.t.cfg.Lease.Milliseconds()}, ids)
}

// Delete implements outboxloop.Driver.
func (c *consumer) Delete(ctx context.Context, ids []int64) error {
	return c.exec(ctx, "DELETE FROM "+c.table+" WHERE id IN (", nil, ids)
}

// Release implements outboxloop.Driver.
func (c *consumer) Release(ctx context.Context, ids []int64) error {
	return c.exec(ctx, "UPDATE "+c.table+" SET claimed_until = NULL, claimed_by = NULL WHERE id IN (", nil, ids)
}

// MarkDead implements outboxloop.Driver.
func (c *consumer) MarkDead(ctx context.Context, id int64, cause error) error {
	msg := cause.Error()
	if len(msg) > 4000 {
		msg = msg[:4000]
	}
	_, err := c.t.cfg.DB.ExecContext(ctx, "UPDATE "+c.table+
		" SET dead_at = "+nowSQL+", last_error = ?, claimed_until = NULL, claimed_by = NULL WHERE id = ? AND claimed_by = ?",
		msg, id, c.token)
	return err
}

// checkStaleEvery runs checkStale at once and then every interval until
// ctx ends.
func (c *consumer) checkStaleEvery(ctx context.Context, interval time.Duration) {
	for ctx.Err() == nil {
		c.checkStale(ctx)
		outboxloop.Sleep(ctx, interval)
	}
}

// checkStale logs a warning for each capture trigger recorded as writing
// into this outbox whose table has changed since it was installed.
func (c *consumer) checkStale(ctx context.Context) {
	ok, _, _, err := schemaSQL(ctx, c.t.cfg.DB, "table", capturesTable)
	if err != nil || !ok {
		return
	}
	rows, err := c.t.cfg.DB.QueryContext(ctx, "SELECT table_name, trigger_name, op, columns_json FROM "+ //nolint:gosec // G202: a quoted identifier, next line
		quoteIdent(capturesTable)+" WHERE outbox = ?", c.ob.Table)
	if err != nil {
		if ctx.Err() == nil {
			c.log.WarnContext(ctx, "batutasqlite: checking captures for staleness failed", "err", err)
		}
		return
	}
	type capture struct{ table, trigger, op, cols string }
	var caps []capture
	for rows.Next() {
		var k capture
		if rows.Scan(&k.table, &k.trigger, &k.op, &k.cols) == nil {
			caps = append(caps, k)
		}
	}
	rows.Close()
	if rows.Err() != nil {
		return
	}
	for _, k := range caps {
		cols, err := loadColumns(ctx, c.t.cfg.DB, k.table)
		if err != nil {
			return
		}
		if d := columnDrift(k.cols, cols); d != "" {
			c.log.WarnContext(ctx, "batutasqlite: capture trigger is stale; run InstallCapture again, or the change is left out of row images",
				"table", k.table, "op", k.op, "trigger", k.trigger, "change", d)
		}
	}
}
