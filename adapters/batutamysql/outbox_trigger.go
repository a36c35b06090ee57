package batutamysql

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxloop"
	"github.com/batuta-dev/batuta/internal/outboxsql"
)

// Defaults of TriggerConfig.
const (
	DefaultBatchSize          = outboxsql.DefaultBatchSize
	DefaultMinPollInterval    = outboxsql.DefaultMinPollInterval
	DefaultMaxPollInterval    = outboxsql.DefaultMaxPollInterval
	DefaultLease              = outboxsql.DefaultLease
	DefaultMaxWaiting         = outboxsql.DefaultMaxWaiting
	DefaultMaxBackoff         = outboxsql.DefaultMaxBackoff
	DefaultStaleCheckInterval = outboxsql.DefaultStaleCheckInterval
)

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
	p, err := outboxsql.Polling[Outbox](cfg).Prepare(Outbox.withDefaults, Outbox.validate)
	if err != nil {
		return nil, err
	}
	return &Trigger{cfg: TriggerConfig(p), wake: make(chan struct{}, 1)}, nil
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
	db, table := t.cfg.DB, ob.quoted()
	return outboxsql.RunPolling(ctx, outboxsql.Polling[Outbox](t.cfg), outboxsql.Dialect[uint64]{
		Package: "batutamysql",
		Outbox:  ob.String(),
		Table:   table,
		Claim: func(ctx context.Context, token string, n int) ([]outboxloop.Row[uint64], error) {
			return t.claim(ctx, ob, token, n)
		},
		LeaseUntil: "UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND",
		LeaseArg:   t.cfg.Lease.Microseconds(),
		Now:        "UTC_TIMESTAMP(6)",
		Captures: func(ctx context.Context) (*sql.Rows, error) {
			return db.QueryContext(ctx, "SELECT table_schema, table_name, trigger_name, op, columns_json FROM "+
				quoteQualified(ob.Schema, capturesTable)+" WHERE outbox = ?", ob.Table)
		},
		Drift: func(ctx context.Context, schema, table, installed string) (string, error) {
			cols, err := loadColumns(ctx, db, schema, table)
			return columnDrift(installed, cols), err
		},
	}, sink, t.wake)
}

// claim leases up to n free rows (not dead, never leased or lease expired)
// of ob (Schema resolved) to token in a short READ COMMITTED transaction:
// READ COMMITTED takes no gap locks, so claims never block the writers
// inserting into the outbox, and with SKIP LOCKED concurrent claimers never
// wait for each other.
func (t *Trigger) claim(ctx context.Context, ob Outbox, token string, n int) (_ []outboxloop.Row[uint64], err error) {
	table := ob.quoted()
	tx, err := t.cfg.DB.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	rs, err := tx.QueryContext(ctx, "SELECT "+outboxColumns+" FROM "+table+ //nolint:gosec // G202: table is the validated, quoted outbox name
		" WHERE dead_at IS NULL AND (claimed_until IS NULL OR claimed_until < UTC_TIMESTAMP(6))"+
		" ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED", n)
	if err != nil {
		return nil, err
	}
	var out []outboxloop.Row[uint64]
	var ids []uint64
	for rs.Next() {
		var r outboxRow
		if err := r.scan(rs); err != nil {
			rs.Close()
			return nil, err
		}
		r.deliveries++ // counted by the UPDATE below
		ev, err := r.event(ob.Schema, ob.Table)
		out = append(out, outboxloop.Row[uint64]{ID: r.id, Event: ev, Err: err})
		ids = append(ids, r.id)
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return nil, err
	}
	if len(ids) > 0 {
		in, args := outboxloop.InList(ids)
		args = append([]any{t.cfg.Lease.Microseconds(), token}, args...)
		if _, err := tx.ExecContext(ctx, "UPDATE "+table+ //nolint:gosec // G202: quoted outbox name; in is a list of placeholders
			" SET claimed_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, claimed_by = ?, deliveries = deliveries + 1"+
			" WHERE id IN ("+in+")", args...); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return out, nil
}
