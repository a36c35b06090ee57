package batutasqlite

import (
	"context"
	"database/sql"
	"os"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
	"github.com/stretchr/testify/require"
)

// TestOutboxConformance runs the outbox scenarios every database adapter
// shares (batutatest.TestOutbox) against SQLite.
func TestOutboxConformance(t *testing.T) {
	rows := 10000
	if outboxRaceEnabled && os.Getenv("BATUTA_FULL_VOLUME") != "1" {
		rows = 2000 // see outboxRaceEnabled
	}
	batutatest.TestOutbox(t, batutatest.OutboxSuite{
		New:            func(t *testing.T) batutatest.OutboxFixture { return newFixture(t, openDB(t), "").suite(t) },
		MetaDeliveries: MetaDeliveries,
		MetaOutboxID:   MetaOutboxID,
		DecodeChange:   func(ev batuta.Event) error { _, err := DecodeChange[map[string]any](ev); return err },
		TimePrecision:  time.Nanosecond,
		Rows:           rows,
		// SQLite's write lock is not fair, and the race detector slows it
		// down a lot: a generous lease keeps the two-consumers case about
		// exclusion, not about scheduling luck.
		TwoConsumerRows:  300,
		TwoConsumerLease: 4 * time.Second,
		// The durable SQLite Store, in the outbox's file.
		DurableStore: func(t *testing.T, f batutatest.OutboxFixture) batuta.Store {
			store, err := Open(context.Background(), dbPath(t, f.(*batutatest.SQLOutbox).DB), Config{})
			require.NoError(t, err)
			t.Cleanup(func() { _ = store.Close() })
			return store
		},
	})
}

// suite returns the conformance suite's view of f. Writers share one
// connection, as SQLite wants (it has one writer at a time, and its busy
// handler is not fair); a consumer has its own.
func (f *fixture) suite(t *testing.T) *batutatest.SQLOutbox {
	writer := f.open(t)
	writer.SetMaxOpenConns(1)
	return &batutatest.SQLOutbox{
		DB:                 f.db,
		WriterDB:           writer,
		Table:              quoteIdent(f.table),
		Outbox:             f.outbox.quoted(),
		IDPrefix:           "sqlite/" + f.outbox.Table + "/",
		Source:             SourcePrefix + f.outbox.Table,
		InstallOutboxFunc:  func(ctx context.Context) error { return InstallOutbox(ctx, f.db, f.outbox) },
		InstallCaptureFunc: func(ctx context.Context) error { return InstallCapture(ctx, f.db, f.capture()) },
		EmitFunc: func(ctx context.Context, tx *sql.Tx, maxBytes int, ev batuta.Event) error {
			ob := f.outbox
			if maxBytes != 0 {
				ob.MaxEmitBytes = maxBytes
			}
			return Emit(ctx, tx, ob, ev)
		},
		TriggerFunc: func(t *testing.T, o batutatest.OutboxTriggerOptions) batuta.TrackingTrigger {
			db := f.db
			if o.Separate {
				db = f.open(t)
			}
			cfg := TriggerConfig{DB: db, Outbox: f.outbox, BatchSize: o.BatchSize, Lease: o.Lease, MaxBackoff: o.MaxBackoff}
			if o.FastPoll {
				cfg.MinPollInterval, cfg.MaxPollInterval = 5*time.Millisecond, 50*time.Millisecond
			}
			return newTrigger(t, cfg)
		},
	}
}

// open opens another pool on f's database file, as another process would.
func (f *fixture) open(t *testing.T) *sql.DB {
	db, err := sql.Open("sqlite", testDSN(dbPath(t, f.db)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}
