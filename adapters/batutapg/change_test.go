package batutapg

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// shapeRow is the typed row of the shapes table of TestEventShapeRowChange.
type shapeRow struct {
	ID     int64           `json:"id"`
	Name   string          `json:"name"`
	Paid   bool            `json:"paid"`
	Amount float64         `json:"amount"`
	At     time.Time       `json:"at"`
	Local  string          `json:"local"`
	Raw    string          `json:"raw"`
	Doc    json.RawMessage `json:"doc"`
	Note   *string         `json:"note"`
}

// TestEventShapeRowChange checks the documented shape of a captured row
// change (docs/events.md) against what the Trigger delivers from a real
// PostgreSQL: ID, Source, Type, Subject, Time, Metadata, and the images
// decoded by DecodeChange into typed fields.
func TestEventShapeRowChange(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	ctx := context.Background()
	tbl := quoteQualified(env.schema, "shapes")
	env.exec(t, `CREATE TABLE `+tbl+` (id bigint PRIMARY KEY, name text NOT NULL, paid boolean NOT NULL,
		amount numeric(10,2) NOT NULL, at timestamptz NOT NULL, local timestamp NOT NULL, raw bytea NOT NULL,
		doc jsonb NOT NULL, note text)`)
	require.NoError(t, InstallCapture(ctx, env.pool, Capture{Outbox: env.ob, Schema: env.schema, Table: "shapes"}))
	runs := newFakeRuns(true)
	startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob}, runs)

	before := time.Now()
	env.exec(t, `INSERT INTO `+tbl+` VALUES (7, 'ana', false, 12.50, '2026-01-02T03:04:05.678901Z', '2026-01-02 03:04:05', '\x00ff', '{"a":[1,2]}', NULL)`)
	env.exec(t, `UPDATE `+tbl+` SET paid = true, amount = 13 WHERE id = 7`)
	env.exec(t, `DELETE FROM `+tbl+` WHERE id = 7`)
	waitFor(t, "three events", func() bool { return runs.accepted() == 3 })
	evs := runs.events()

	at := time.Date(2026, 1, 2, 3, 4, 5, 678901000, time.UTC)
	want := shapeRow{ID: 7, Name: "ana", Amount: 12.5, At: at, Local: "2026-01-02T03:04:05", Raw: `\x00ff`, Doc: json.RawMessage(`{"a":[1,2]}`)}
	paid := want
	paid.Paid, paid.Amount = true, 13
	for i, op := range []string{batuta.ChangeInsert, batuta.ChangeUpdate, batuta.ChangeDelete} {
		ev := evs[i]
		rowID := ev.Metadata[MetaOutboxID]
		require.NotEmpty(t, rowID)
		require.Equal(t, "pg/"+env.schema+".batuta_outbox/"+rowID, ev.ID)
		require.Equal(t, SourcePrefix+env.schema+".shapes", ev.Source)
		require.Equal(t, "shapes."+op, ev.Type)
		require.Empty(t, ev.Subject)
		require.Equal(t, map[string]string{MetaOutboxID: rowID, MetaDeliveries: "1"}, ev.Metadata)

		c, err := DecodeChange[shapeRow](ev)
		require.NoError(t, err)
		require.Equal(t, op, c.Op)
		require.Equal(t, env.schema, c.Schema)
		require.Equal(t, "shapes", c.Table)
		require.Equal(t, time.UTC, c.At.Location())
		require.True(t, ev.Time.Equal(c.At), "event time %v, change at %v", ev.Time, c.At)
		require.WithinDuration(t, before, c.At, time.Minute)
		switch op {
		case batuta.ChangeInsert:
			require.Nil(t, c.Old)
			require.Equal(t, &want, normalise(c.New))
		case batuta.ChangeUpdate:
			require.Equal(t, &want, normalise(c.Old))
			require.Equal(t, &paid, normalise(c.New))
		case batuta.ChangeDelete:
			require.Nil(t, c.New)
			require.Equal(t, &paid, normalise(c.Old))
		}
		// The core reader reads it the same; the others refuse it.
		same, err := batuta.ChangeFrom[shapeRow](ev)
		require.NoError(t, err)
		require.Equal(t, c, same)
		_, err = batuta.QueueMessageFrom(ev)
		require.ErrorIs(t, err, batuta.ErrWrongSource)
		_, err = batuta.CronTickFrom(ev)
		require.ErrorIs(t, err, batuta.ErrWrongSource)
	}
}

// normalise makes a decoded row comparable: times in UTC.
func normalise(r *shapeRow) *shapeRow {
	if r == nil {
		return nil
	}
	c := *r
	c.At = c.At.UTC()
	return &c
}

func TestDecodeChangeRefusesOtherDatabases(t *testing.T) {
	t.Parallel()
	ev := batuta.Event{ID: "sqlite/batuta_outbox/1", Source: "sqlite/orders", Type: "orders.insert",
		Data: []byte(`{"op":"insert","schema":"main","table":"orders","new":{"id":1},"old":null,"at":"2026-01-02T03:04:05Z"}`)}
	_, err := DecodeChange[map[string]any](ev)
	require.ErrorIs(t, err, batuta.ErrWrongSource)
	require.EqualError(t, err, `batuta: event "sqlite/batuta_outbox/1" (source "sqlite/orders", type "orders.insert") is not a PostgreSQL row change: source does not start with postgres/`)
}
