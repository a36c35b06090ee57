package batutasqlite

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// shapeRow is the typed row of TestEventShapeRowChange's table.
type shapeRow struct {
	ID     int64     `json:"id"`
	Name   string    `json:"name"`
	Paid   Bool      `json:"paid"`
	Amount float64   `json:"amount"`
	At     time.Time `json:"at"`
	Stamp  string    `json:"stamp"`
	Raw    string    `json:"raw"`
	Doc    string    `json:"doc"`
	Note   *string   `json:"note"`
}

// TestEventShapeRowChange checks the documented shape of a captured row
// change (docs/events.md, DecodeChange) against what the Trigger delivers
// from a real SQLite database: ID, Source, Type, Subject, Time, Metadata,
// and the images decoded into typed fields (booleans as 0/1 into Bool, an
// RFC 3339 text into time.Time, JSON text as a string).
func TestEventShapeRowChange(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, `(id INTEGER PRIMARY KEY, name TEXT NOT NULL, paid BOOLEAN NOT NULL, amount REAL NOT NULL,
  at TEXT NOT NULL, stamp TEXT NOT NULL, raw BLOB NOT NULL, doc TEXT NOT NULL, note TEXT)`)
	ctx := context.Background()
	require.NoError(t, InstallCapture(ctx, db, f.capture()))
	runs := newFakeRuns(true)
	startTrigger(t, newTrigger(t, TriggerConfig{DB: db, Outbox: f.outbox}), runs)

	before := time.Now()
	tbl := quoteIdent(f.table)
	f.exec(t, "INSERT INTO "+tbl+` VALUES (7, 'ana', FALSE, 12.5, '2026-01-02T03:04:05.678901Z', '2026-01-02 03:04:05', X'00ff', '{"a":[1,2]}', NULL)`)
	f.exec(t, "UPDATE "+tbl+" SET paid = TRUE, amount = 13 WHERE id = 7")
	f.exec(t, "DELETE FROM "+tbl+" WHERE id = 7")
	eventually(t, func() bool { return runs.AcceptedCount() == 3 }, "three changes")
	evs := runs.Accepted()

	at := time.Date(2026, 1, 2, 3, 4, 5, 678901000, time.UTC)
	want := shapeRow{ID: 7, Name: "ana", Amount: 12.5, At: at, Stamp: "2026-01-02 03:04:05", Raw: "00FF", Doc: `{"a":[1,2]}`}
	paid := want
	paid.Paid, paid.Amount = true, 13
	for i, op := range []string{batuta.ChangeInsert, batuta.ChangeUpdate, batuta.ChangeDelete} {
		ev := evs[i]
		rowID := ev.Metadata[MetaOutboxID]
		require.NotEmpty(t, rowID)
		require.Equal(t, "sqlite/"+f.outbox.Table+"/"+rowID, ev.ID)
		require.Equal(t, SourcePrefix+f.table, ev.Source)
		require.Equal(t, f.table+"."+op, ev.Type)
		require.Empty(t, ev.Subject)
		require.Equal(t, map[string]string{MetaOutboxID: rowID, MetaDeliveries: "1"}, ev.Metadata)

		c, err := DecodeChange[shapeRow](ev)
		require.NoError(t, err, string(ev.Data))
		require.Equal(t, op, c.Op)
		require.Equal(t, "main", c.Schema)
		require.Equal(t, f.table, c.Table)
		require.True(t, ev.Time.Equal(c.At), "event time %v, change at %v", ev.Time, c.At)
		require.WithinDuration(t, before, c.At, time.Minute)
		switch op {
		case batuta.ChangeInsert:
			require.Nil(t, c.Old)
			require.Equal(t, &want, c.New)
		case batuta.ChangeUpdate:
			require.Equal(t, &want, c.Old)
			require.Equal(t, &paid, c.New)
		case batuta.ChangeDelete:
			require.Nil(t, c.New)
			require.Equal(t, &paid, c.Old)
		}
		// What the documentation warns of: a plain bool, a time.Time for
		// SQLite's own timestamp text, a struct for JSON text.
		_, err = DecodeChange[struct {
			Paid bool `json:"paid"`
		}](ev)
		require.ErrorIs(t, err, batuta.ErrInvalidPayload)
		_, err = DecodeChange[struct {
			Stamp time.Time `json:"stamp"`
		}](ev)
		require.ErrorIs(t, err, batuta.ErrInvalidPayload)
		_, err = DecodeChange[struct {
			Doc map[string]any `json:"doc"`
		}](ev)
		require.ErrorIs(t, err, batuta.ErrInvalidPayload)
		_, err = batuta.QueueMessageFrom(ev)
		require.ErrorIs(t, err, batuta.ErrWrongSource)
	}
}

func TestBool(t *testing.T) {
	t.Parallel()
	var v struct{ A, B, C, D, E Bool }
	require.NoError(t, json.Unmarshal([]byte(`{"A":1,"B":0,"C":true,"D":false,"E":null}`), &v))
	require.Equal(t, []Bool{true, false, true, false, false}, []Bool{v.A, v.B, v.C, v.D, v.E})
	require.Error(t, json.Unmarshal([]byte(`{"A":2}`), &v))
}
