package batutapg

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxloop"
	"github.com/batuta-dev/batuta/internal/outboxsql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Defaults of TriggerConfig.
const (
	DefaultBatchSize    = outboxsql.DefaultBatchSize
	DefaultPollInterval = outboxsql.DefaultPollInterval
	DefaultLease        = outboxsql.DefaultLease
	DefaultMaxWaiting   = outboxsql.DefaultMaxWaiting
	DefaultMaxBackoff   = outboxsql.DefaultMaxBackoff
)

// TriggerConfig configures a Trigger. Only Pool is required.
type TriggerConfig struct {
	// Pool is the connection pool to use, typically the service's own.
	// Claims and deletes are short statements; the LISTEN connection is
	// taken from it once (Acquire, then Hijack) and closed by the Trigger.
	Pool *pgxpool.Pool
	// Outbox to consume; its zero value is public.batuta_outbox. It must
	// have been installed (InstallOutbox or InstallCapture).
	Outbox Outbox
	// BatchSize is how many rows one claim takes. Default 100.
	BatchSize int
	// PollInterval is how often the outbox is scanned when no notification
	// arrives: the fallback when a notification is lost (they are while
	// the listener reconnects) or LISTEN is disabled. Default 1 s.
	PollInterval time.Duration
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
	// DisableListen turns LISTEN/NOTIFY off and relies on polling alone,
	// e.g. behind a transaction-pooling PgBouncer, where LISTEN does not
	// work.
	DisableListen bool
	// Logger receives warnings (errors that are retried) and debug
	// messages. Default slog.Default().
	Logger *slog.Logger
}

// withDefaults and validate share the settings every outbox Trigger has
// with batutamysql and batutasqlite (package outboxsql).
func (c TriggerConfig) withDefaults() TriggerConfig {
	c.Outbox = c.Outbox.withDefaults()
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	outboxsql.Defaults(&c.BatchSize, &c.Lease, &c.MaxWaiting, &c.MaxBackoff, &c.Logger)
	return c
}

func (c TriggerConfig) validate() error {
	switch {
	case c.Pool == nil:
		return &batuta.ConfigError{Field: "Pool", Reason: "required"}
	case c.PollInterval < 0:
		return &batuta.ConfigError{Field: "PollInterval", Reason: "must not be negative"}
	}
	if err := outboxsql.Validate(c.BatchSize, c.Lease, c.MaxWaiting, c.MaxBackoff); err != nil {
		return err
	}
	return c.Outbox.validate("Outbox.")
}

// Trigger is a batuta.Trigger (and batuta.TrackingTrigger) that consumes an
// outbox table, filled by capture triggers (InstallCapture) and by Emit,
// and fires one event per row.
//
// # Delivery
//
// A consumer claims up to BatchSize rows at a time with FOR UPDATE SKIP
// LOCKED inside a CTE, marking them with a lease (claimed_until,
// claimed_by) in the same short statement, so no transaction stays open
// while events are fired or runs are waited for, and rows of a consumer
// that dies are claimed again once its lease expired. It then fires each
// row, in id order, as an Event whose ID is "pg/<schema>.<outbox>/<row id>"
// (or the ID given to Emit): stable for the row, so a row fired again after
// a crash is deduplicated by the orchestrator. A row is deleted only after
// its event was accepted:
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
// a row is held by one consumer at a time. Order is by row id within a
// batch, with no order guarantee across consumers or redeliveries.
//
// # Wake-up
//
// Capture triggers and Emit call pg_notify(channel, row id) once per
// writing transaction (unless Outbox.NoNotify); each consumer LISTENs on a
// dedicated connection and scans
// the outbox when notified, after every (re)connect, and every
// PollInterval. Notifications only wake consumers up: the table is the
// truth, and rows are claimed, not followed by an id watermark (sequence
// values are assigned at insert, not at commit).
//
// The consumer's own statements commit with synchronous_commit off (per
// transaction, in the same round trip): a database crash that forgets one
// only causes a row to be claimed or delivered again, deduplicated by event
// ID, and no WAL flush sits on the path of each event.
//
// Timers (polling, backoff, heartbeats) use the wall clock, since leases
// are judged by the database's clock. A Trigger is safe for concurrent use:
// each Run or RunTracking call is an independent consumer.
type Trigger struct {
	cfg TriggerConfig

	claimSQL, deleteSQL, releaseSQL, extendSQL, deadSQL string
}

var _ batuta.TrackingTrigger = (*Trigger)(nil)

// NewTrigger validates cfg and returns a Trigger. It does no I/O; Run
// checks that the outbox is installed.
func NewTrigger(cfg TriggerConfig) (*Trigger, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ob := cfg.Outbox.quoted()
	return &Trigger{
		cfg: cfg,
		// Claim through a CTE: "UPDATE ... WHERE id IN (SELECT ... LIMIT
		// n FOR UPDATE SKIP LOCKED)" may claim more than n rows
		// (PostgreSQL bug #15715).
		claimSQL: `WITH c AS (
	SELECT id FROM ` + ob + `
	WHERE dead_at IS NULL AND (claimed_until IS NULL OR claimed_until < now())
	ORDER BY id
	LIMIT $1
	FOR UPDATE SKIP LOCKED
)
UPDATE ` + ob + ` o SET claimed_until = now() + $2::float8 * interval '1 second', claimed_by = $3, deliveries = o.deliveries + 1
FROM c WHERE o.id = c.id
RETURNING o.id, o.op, o.schema_name, o.table_name, o.new_row, o.old_row, o.event_id, o.source, o.type, o.subject, o.data, o.metadata, o.event_time, o.created_at, o.deliveries`,
		deleteSQL:  `DELETE FROM ` + ob + ` WHERE id = ANY($1) AND claimed_by = $2`,
		releaseSQL: `UPDATE ` + ob + ` SET claimed_until = NULL, claimed_by = NULL WHERE id = ANY($1) AND claimed_by = $2`,
		extendSQL:  `UPDATE ` + ob + ` SET claimed_until = now() + $3::float8 * interval '1 second' WHERE id = ANY($1) AND claimed_by = $2`,
		deadSQL:    `UPDATE ` + ob + ` SET dead_at = now(), last_error = $3, claimed_until = NULL, claimed_by = NULL WHERE id = $1 AND claimed_by = $2`,
	}, nil
}

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
	st, err := OutboxStatus(ctx, t.cfg.Pool, t.cfg.Outbox)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if !st.Installed {
		return fmt.Errorf("batutapg: outbox %s is not installed (call InstallOutbox or InstallCapture): %v", t.cfg.Outbox, st.Problems)
	}
	c := &consumer{
		t:     t,
		token: outboxloop.NewToken(),
		log:   t.cfg.Logger.With("outbox", t.cfg.Outbox.String()),
		wake:  make(chan struct{}, 1),
	}
	var wg sync.WaitGroup
	listenCtx, stop := context.WithCancel(ctx)
	if !t.cfg.DisableListen {
		wg.Go(func() { c.listen(listenCtx) })
	}
	err = outboxloop.Run(ctx, outboxloop.Config[int64]{
		Driver:          c,
		Sink:            sink,
		Wake:            c.wake,
		Package:         "batutapg",
		Outbox:          t.cfg.Outbox.String(),
		BatchSize:       t.cfg.BatchSize,
		MaxWaiting:      t.cfg.MaxWaiting,
		MinPollInterval: t.cfg.PollInterval,
		MaxPollInterval: t.cfg.PollInterval,
		Lease:           t.cfg.Lease,
		MaxBackoff:      t.cfg.MaxBackoff,
		Logger:          c.log,
	})
	stop()
	wg.Wait()
	return err
}

// consumer is the outboxloop.Driver of one Run call, and its LISTEN
// connection.
type consumer struct {
	t     *Trigger
	token string // claimed_by of this consumer's claims
	log   *slog.Logger
	wake  chan struct{} // a notification arrived or the listener (re)connected
}

var _ outboxloop.Driver[int64] = (*consumer)(nil)

// asyncCommitSQL precedes each bookkeeping statement of a consumer in the
// same implicit transaction (pipelined: one round trip), so its commit does
// not wait for the WAL flush. Losing such a commit in a database crash only
// means a row claimed again or delivered again, deduplicated by event ID;
// the writers' transactions keep their own synchronous_commit.
const asyncCommitSQL = `SELECT set_config('synchronous_commit', 'off', true)`

// Claim implements outboxloop.Driver.
func (c *consumer) Claim(ctx context.Context, n int) (out []outboxloop.Row[int64], err error) {
	cfg := &c.t.cfg
	b := &pgx.Batch{}
	b.Queue(asyncCommitSQL)
	b.Queue(c.t.claimSQL, n, cfg.Lease.Seconds(), c.token)
	br := cfg.Pool.SendBatch(ctx, b)
	defer func() {
		if cerr := br.Close(); cerr != nil && err == nil {
			out, err = nil, cerr // not committed
		}
	}()
	if _, err := br.Exec(); err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		r := &outboxRow{}
		if err := rows.Scan(r.scanTargets()...); err != nil {
			return nil, err
		}
		ev, err := r.event(cfg.Outbox)
		out = append(out, outboxloop.Row[int64]{ID: r.id, Event: ev, Err: err})
	}
	return out, rows.Err()
}

// exec runs one bookkeeping statement with asynchronous commit.
func (c *consumer) exec(ctx context.Context, sql string, args ...any) error {
	b := &pgx.Batch{}
	b.Queue(asyncCommitSQL)
	b.Queue(sql, args...)
	return c.t.cfg.Pool.SendBatch(ctx, b).Close()
}

// Renew implements outboxloop.Driver.
func (c *consumer) Renew(ctx context.Context, ids []int64) error {
	return c.exec(ctx, c.t.extendSQL, ids, c.token, c.t.cfg.Lease.Seconds())
}

// Delete implements outboxloop.Driver.
func (c *consumer) Delete(ctx context.Context, ids []int64) error {
	return c.exec(ctx, c.t.deleteSQL, ids, c.token)
}

// Release implements outboxloop.Driver.
func (c *consumer) Release(ctx context.Context, ids []int64) error {
	return c.exec(ctx, c.t.releaseSQL, ids, c.token)
}

// MarkDead implements outboxloop.Driver.
func (c *consumer) MarkDead(ctx context.Context, id int64, cause error) error {
	return c.exec(ctx, c.t.deadSQL, id, c.token, cause.Error())
}

// listen keeps a LISTEN connection and signals c.wake on each
// notification and after each (re)connect.
func (c *consumer) listen(ctx context.Context) {
	cfg := &c.t.cfg
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		connected, err := c.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if connected {
			backoff = 0
		}
		backoff = min(max(2*backoff, 100*time.Millisecond), cfg.MaxBackoff)
		c.log.WarnContext(ctx, "batutapg: outbox listener lost; polling until it reconnects", "err", err, "retry_in", backoff)
		outboxloop.Sleep(ctx, backoff)
	}
}

func (c *consumer) listenOnce(ctx context.Context) (connected bool, err error) {
	cfg := &c.t.cfg
	pc, err := cfg.Pool.Acquire(ctx)
	if err != nil {
		return false, err
	}
	conn := pc.Hijack()
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+quoteIdent(cfg.Outbox.Channel)); err != nil {
		return false, err
	}
	outboxloop.Signal(c.wake) // rows may have arrived while we were not listening
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return true, err
		}
		outboxloop.Signal(c.wake)
	}
}
