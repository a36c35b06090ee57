package batutapg

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// TestOutboxConformance runs the outbox scenarios every database adapter
// shares (batutatest.TestOutbox) against PostgreSQL.
func TestOutboxConformance(t *testing.T) {
	batutatest.TestOutbox(t, batutatest.OutboxSuite{
		New: func(t *testing.T) batutatest.OutboxFixture {
			env := newOutboxEnv(t)
			env.exec(t, `CREATE TABLE `+quoteQualified(env.schema, "items")+` (id bigserial PRIMARY KEY, name text)`)
			return &pgOutboxFixture{env: env}
		},
		MetaDeliveries: MetaDeliveries,
		MetaOutboxID:   MetaOutboxID,
		DecodeChange:   func(ev batuta.Event) error { _, err := DecodeChange[map[string]any](ev); return err },
	})
}

// pgOutboxFixture is the conformance suite's view of an outboxEnv, with
// an items table as the user table.
type pgOutboxFixture struct{ env *outboxEnv }

func (f *pgOutboxFixture) InstallOutbox(ctx context.Context) error {
	return InstallOutbox(ctx, f.env.pool, f.env.ob)
}

func (f *pgOutboxFixture) InstallCapture(ctx context.Context) error {
	return InstallCapture(ctx, f.env.pool, Capture{Outbox: f.env.ob, Schema: f.env.schema, Table: "items"})
}

// inTx runs fn in a transaction and commits it, or rolls it back.
func (f *pgOutboxFixture) inTx(ctx context.Context, rollback bool, fn func(tx pgx.Tx) error) error {
	tx, err := f.env.pool.Begin(ctx)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil || rollback {
		_ = tx.Rollback(ctx)
		return err
	}
	return tx.Commit(ctx)
}

func (f *pgOutboxFixture) Insert(ctx context.Context, names []string, rollback bool) error {
	return f.inTx(ctx, rollback, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO `+quoteQualified(f.env.schema, "items")+` (name) SELECT unnest($1::text[])`, names)
		return err
	})
}

func (f *pgOutboxFixture) Emit(ctx context.Context, rollback bool, evs ...batuta.Event) error {
	return f.inTx(ctx, rollback, func(tx pgx.Tx) error {
		for _, ev := range evs {
			if err := Emit(ctx, tx, f.env.ob, ev); err != nil {
				return err
			}
		}
		return nil
	})
}

func (f *pgOutboxFixture) EmitCapped(ctx context.Context, maxBytes int, ev batuta.Event) error {
	ob := f.env.ob
	ob.MaxEmitBytes = maxBytes
	var emitErr error
	if err := f.inTx(ctx, true, func(tx pgx.Tx) error { emitErr = Emit(ctx, tx, ob, ev); return nil }); err != nil {
		return err
	}
	return emitErr
}

func (f *pgOutboxFixture) Count(ctx context.Context) (rows, claimed int, dead []string, err error) {
	table := f.env.ob.withDefaults().quoted()
	err = f.env.pool.QueryRow(ctx, `SELECT count(*), count(claimed_by), coalesce(array_agg(last_error ORDER BY id) FILTER (WHERE dead_at IS NOT NULL), '{}') FROM `+table).
		Scan(&rows, &claimed, &dead)
	return rows, claimed, dead, err
}

func (f *pgOutboxFixture) Derived() (idPrefix, source string) {
	ob := f.env.ob.withDefaults()
	return "pg/" + displayName(ob.Schema, ob.Table) + "/", SourcePrefix + displayName(ob.Schema, ob.Table)
}

func (f *pgOutboxFixture) RowIDs(ctx context.Context) ([]int64, error) {
	var ids []int64
	err := f.env.pool.QueryRow(ctx, `SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM `+f.env.ob.withDefaults().quoted()).Scan(&ids)
	return ids, err
}

func (f *pgOutboxFixture) Trigger(t *testing.T, o batutatest.OutboxTriggerOptions) batuta.TrackingTrigger {
	pool := f.env.pool
	if o.Separate {
		var err error
		pool, err = pgxpool.New(context.Background(), outboxTestDSN())
		require.NoError(t, err)
		t.Cleanup(pool.Close)
	}
	cfg := TriggerConfig{
		Pool: pool, Outbox: f.env.ob, BatchSize: o.BatchSize, Lease: o.Lease, MaxBackoff: o.MaxBackoff,
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if o.FastPoll {
		cfg.PollInterval = 100 * time.Millisecond
	}
	trig, err := NewTrigger(cfg)
	require.NoError(t, err)
	return trig
}
