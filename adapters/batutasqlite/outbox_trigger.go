package batutasqlite

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
	st, err := outboxStatus(ctx, t.cfg.DB, ob)
	if err != nil {
		return fmt.Errorf("batutasqlite: outbox status of %s: %w", ob, err)
	}
	if !st.Installed {
		return fmt.Errorf("batutasqlite: outbox %s is not installed (call InstallOutbox or InstallCapture): %v", ob, st.Problems)
	}
	db, table := t.cfg.DB, ob.quoted()
	return outboxsql.RunPolling(ctx, outboxsql.Polling[Outbox](t.cfg), outboxsql.Dialect[int64]{
		Package: "batutasqlite",
		Outbox:  ob.String(),
		Table:   table,
		Claim: func(ctx context.Context, token string, n int) ([]outboxloop.Row[int64], error) {
			return t.claim(ctx, ob, token, n)
		},
		LeaseUntil: nowMillisSQL + " + ?",
		LeaseArg:   t.cfg.Lease.Milliseconds(),
		Now:        nowSQL,
		Captures: func(ctx context.Context) (*sql.Rows, error) {
			ok, _, _, err := schemaSQL(ctx, db, "table", capturesTable)
			if err != nil || !ok {
				return nil, err
			}
			return db.QueryContext(ctx, "SELECT '', table_name, trigger_name, op, columns_json FROM "+
				quoteIdent(capturesTable)+" WHERE outbox = ?", ob.Table)
		},
		Drift: func(ctx context.Context, _, table, installed string) (string, error) {
			cols, err := loadColumns(ctx, db, table)
			return columnDrift(installed, cols), err
		},
	}, sink, t.wake)
}

// nowMillisSQL is the current Unix time in milliseconds, read when the
// statement runs, that is once it holds the write lock: time spent waiting
// for the lock does not eat into a lease. (julianday rather than
// unixepoch('subsec'), which needs SQLite 3.42.)
const nowMillisSQL = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"

// claim leases up to n free rows (not dead, never leased or lease expired)
// of ob to token with one UPDATE ... RETURNING (SQLite 3.35+), atomic under
// SQLite's write lock. RETURNING order is unspecified; outboxloop sorts the
// rows.
func (t *Trigger) claim(ctx context.Context, ob Outbox, token string, n int) ([]outboxloop.Row[int64], error) {
	table := ob.quoted()
	rs, err := t.cfg.DB.QueryContext(ctx, "UPDATE "+table+ //nolint:gosec // G202: quoted outbox name and SQL constants; values are placeholders
		" SET claimed_until = "+nowMillisSQL+" + ?, claimed_by = ?, deliveries = deliveries + 1 WHERE id IN (SELECT id FROM "+table+
		" WHERE dead_at IS NULL AND (claimed_until IS NULL OR claimed_until < "+nowMillisSQL+") ORDER BY id LIMIT ?) RETURNING "+outboxColumns,
		t.cfg.Lease.Milliseconds(), token, n)
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
		ev, err := r.event(ob.Table)
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
