package outboxsql

import (
	"cmp"
	"context"
	"database/sql"
	"log/slog"
	"sync"
	"time"

	"github.com/batuta-dev/batuta/internal/outboxloop"
)

// Dialect is the SQL of a polling database/sql adapter's outbox consumer:
// all that differs between MySQL and SQLite, and what a fourth database
// would write.
type Dialect[ID cmp.Ordered] struct {
	// Package prefixes errors and logs, e.g. "batutamysql".
	Package string
	// Outbox names the outbox in errors and logs (schema.table or table).
	Outbox string
	// Table is the quoted outbox table.
	Table string
	// Claim leases up to n free rows (not dead, never leased or lease
	// expired) to token, counting a delivery each, and returns them.
	Claim func(ctx context.Context, token string, n int) ([]outboxloop.Row[ID], error)
	// LeaseUntil is the SQL value of claimed_until for a lease from now,
	// with one placeholder, given LeaseArg.
	LeaseUntil string
	LeaseArg   any
	// Now is the SQL value of dead_at.
	Now string
	// Captures lists the capture records of this outbox (schema, table,
	// trigger, op, columns_json, in that order), or returns nil rows when
	// there are none to check.
	Captures func(ctx context.Context) (*sql.Rows, error)
	// Drift reads the present columns of schema.table and describes how
	// they differ from the recorded columnsJSON ("" if they do not).
	Drift func(ctx context.Context, schema, table, columnsJSON string) (string, error)
}

// RunPolling consumes the outbox until ctx ends: the Run of a polling
// adapter's Trigger once it checked that the outbox is installed. It also
// checks the capture triggers writing into the outbox for staleness every
// cfg.StaleCheckInterval.
func RunPolling[ID cmp.Ordered, O any](ctx context.Context, cfg Polling[O], d Dialect[ID], sink outboxloop.Sink, wake <-chan struct{}) error {
	c := &consumer[ID]{db: cfg.DB, d: d, token: outboxloop.NewToken(), log: cfg.Logger.With("outbox", d.Outbox)}
	var wg sync.WaitGroup
	checkCtx, stop := context.WithCancel(ctx)
	if cfg.StaleCheckInterval > 0 && d.Captures != nil {
		wg.Go(func() { c.checkStaleEvery(checkCtx, cfg.StaleCheckInterval) })
	}
	err := outboxloop.Run(ctx, outboxloop.Config[ID]{
		Driver:          c,
		Sink:            sink,
		Wake:            wake,
		Package:         d.Package,
		Outbox:          d.Outbox,
		BatchSize:       cfg.BatchSize,
		MaxWaiting:      cfg.MaxWaiting,
		MinPollInterval: cfg.MinPollInterval,
		MaxPollInterval: cfg.MaxPollInterval,
		Lease:           cfg.Lease,
		MaxBackoff:      cfg.MaxBackoff,
		Logger:          c.log,
	})
	stop()
	wg.Wait()
	return err
}

// consumer is the outboxloop.Driver of one RunPolling call.
type consumer[ID cmp.Ordered] struct {
	db    *sql.DB
	d     Dialect[ID]
	token string // claimed_by of this consumer's claims
	log   *slog.Logger
}

// maxErrorText caps last_error of a dead row.
const maxErrorText = 4000

// Claim implements outboxloop.Driver.
func (c *consumer[ID]) Claim(ctx context.Context, n int) ([]outboxloop.Row[ID], error) {
	return c.d.Claim(ctx, c.token, n)
}

// Renew implements outboxloop.Driver.
func (c *consumer[ID]) Renew(ctx context.Context, ids []ID) error {
	return outboxloop.ExecIn(ctx, c.db, "UPDATE "+c.d.Table+" SET claimed_until = "+c.d.LeaseUntil+" WHERE id IN (",
		[]any{c.d.LeaseArg}, ids, c.token)
}

// Delete implements outboxloop.Driver.
func (c *consumer[ID]) Delete(ctx context.Context, ids []ID) error {
	return outboxloop.ExecIn(ctx, c.db, "DELETE FROM "+c.d.Table+" WHERE id IN (", nil, ids, c.token)
}

// Release implements outboxloop.Driver.
func (c *consumer[ID]) Release(ctx context.Context, ids []ID) error {
	return outboxloop.ExecIn(ctx, c.db, "UPDATE "+c.d.Table+" SET claimed_until = NULL, claimed_by = NULL WHERE id IN (", nil, ids, c.token)
}

// MarkDead implements outboxloop.Driver.
func (c *consumer[ID]) MarkDead(ctx context.Context, id ID, cause error) error {
	msg := cause.Error()
	if len(msg) > maxErrorText {
		msg = msg[:maxErrorText]
	}
	// c.d.Table is the adapter's validated, quoted outbox name; Now is a
	// fixed SQL expression of the dialect.
	_, err := c.db.ExecContext(ctx, "UPDATE "+c.d.Table+ //nolint:gosec // G202: quoted identifier and a dialect constant, values are placeholders
		" SET dead_at = "+c.d.Now+", last_error = ?, claimed_until = NULL, claimed_by = NULL WHERE id = ? AND claimed_by = ?",
		msg, id, c.token)
	return err
}

// checkStaleEvery runs checkStale at once and then every interval until
// ctx ends.
func (c *consumer[ID]) checkStaleEvery(ctx context.Context, interval time.Duration) {
	for ctx.Err() == nil {
		c.checkStale(ctx)
		outboxloop.Sleep(ctx, interval)
	}
}

// checkStale logs a warning for each capture trigger recorded as writing
// into this outbox whose table has changed since it was installed.
func (c *consumer[ID]) checkStale(ctx context.Context) {
	rows, err := c.d.Captures(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.log.WarnContext(ctx, c.d.Package+": checking captures for staleness failed", "err", err)
		}
		return
	}
	if rows == nil {
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
	err = rows.Err()
	_ = rows.Close()
	if err != nil {
		if ctx.Err() == nil {
			c.log.WarnContext(ctx, c.d.Package+": checking captures for staleness failed", "err", err)
		}
		return
	}
	for _, k := range caps {
		d, err := c.d.Drift(ctx, k.schema, k.table, k.cols)
		if err != nil {
			return
		}
		if d != "" {
			table := k.table
			if k.schema != "" {
				table = k.schema + "." + k.table
			}
			c.log.WarnContext(ctx, c.d.Package+": capture trigger is stale; run InstallCapture again, or the change is left out of row images",
				"table", table, "op", k.op, "trigger", k.trigger, "change", d)
		}
	}
}
