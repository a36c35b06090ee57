package batutamysql

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// TestOutboxConformance runs the outbox scenarios every database adapter
// shares (batutatest.TestOutbox) against MariaDB/MySQL.
func TestOutboxConformance(t *testing.T) {
	batutatest.TestOutbox(t, batutatest.OutboxSuite{
		New:            func(t *testing.T) batutatest.OutboxFixture { return newFixture(t, openDB(t), "").suite() },
		MetaDeliveries: MetaDeliveries,
		MetaOutboxID:   MetaOutboxID,
		DecodeChange:   func(ev batuta.Event) error { _, err := DecodeChange[map[string]any](ev); return err },
	})
}

// suite returns the conformance suite's view of f.
func (f *fixture) suite() *batutatest.SQLOutbox {
	return &batutatest.SQLOutbox{
		DB:                 f.db,
		Table:              quoteIdent(f.table),
		Outbox:             f.outbox.quoted(),
		IDPrefix:           "mysql/test." + f.outbox.Table + "/",
		Source:             SourcePrefix + "test." + f.outbox.Table,
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
				db = openDB(t)
			}
			cfg := TriggerConfig{DB: db, Outbox: f.outbox, BatchSize: o.BatchSize, Lease: o.Lease, MaxBackoff: o.MaxBackoff}
			if o.FastPoll {
				cfg.MinPollInterval, cfg.MaxPollInterval = 5*time.Millisecond, 50*time.Millisecond
			}
			return newTrigger(t, cfg)
		},
	}
}
