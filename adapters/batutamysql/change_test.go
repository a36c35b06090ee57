package batutamysql

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
	ID     int64           `json:"id"`
	Name   string          `json:"name"`
	Paid   Bool            `json:"paid"`
	Amount json.Number     `json:"amount"`
	Ratio  float64         `json:"ratio"`
	At     Time            `json:"at"`
	Day    string          `json:"day"`
	Raw    string          `json:"raw"`
	Doc    json.RawMessage `json:"doc"`
	Note   *string         `json:"note"`
}

// TestEventShapeRowChange checks the documented shape of a captured row
// change (docs/events.md, DecodeChange) against what the Trigger delivers
// from a real MySQL/MariaDB: ID, Source, Type, Subject, Time, Metadata, and
// the images decoded into typed fields (BOOLEAN as 0/1 into Bool, DATETIME
// into Time, DECIMAL with its scale).
func TestEventShapeRowChange(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, `(id BIGINT NOT NULL PRIMARY KEY, name VARCHAR(40) NOT NULL, paid BOOLEAN NOT NULL,
  amount DECIMAL(10,2) NOT NULL, ratio DOUBLE NOT NULL, at DATETIME(6) NOT NULL, day DATE NOT NULL,
  raw VARBINARY(8) NOT NULL, doc JSON NOT NULL, note TEXT NULL)`)
	ctx := context.Background()
	require.NoError(t, InstallCapture(ctx, db, f.capture()))
	runs := newFakeRuns(true)
	startTrigger(t, newTrigger(t, TriggerConfig{DB: db, Outbox: f.outbox}), runs)

	before := time.Now()
	tbl := quoteIdent(f.table)
	f.exec(t, "INSERT INTO "+tbl+` VALUES (7, 'ana', FALSE, 12.50, 0.25, '2026-01-02 03:04:05.678901', '2026-01-02', X'00ff', '{"a":[1,2]}', NULL)`)
	f.exec(t, "UPDATE "+tbl+" SET paid = TRUE, amount = 13 WHERE id = 7")
	f.exec(t, "DELETE FROM "+tbl+" WHERE id = 7")
	eventually(t, func() bool { return runs.AcceptedCount() == 3 }, "three changes")
	evs := runs.Accepted()

	at := time.Date(2026, 1, 2, 3, 4, 5, 678901000, time.UTC)
	want := shapeRow{ID: 7, Name: "ana", Amount: "12.50", Ratio: 0.25, At: Time{at}, Day: "2026-01-02", Raw: "00FF", Doc: json.RawMessage(`{"a":[1,2]}`)}
	paid := want
	paid.Paid, paid.Amount = true, "13.00"
	for i, op := range []string{batuta.ChangeInsert, batuta.ChangeUpdate, batuta.ChangeDelete} {
		ev := evs[i]
		rowID := ev.Metadata[MetaOutboxID]
		require.NotEmpty(t, rowID)
		require.Equal(t, "mysql/test."+f.outbox.Table+"/"+rowID, ev.ID)
		require.Equal(t, SourcePrefix+"test."+f.table, ev.Source)
		require.Equal(t, f.table+"."+op, ev.Type)
		require.Empty(t, ev.Subject)
		require.Equal(t, map[string]string{MetaOutboxID: rowID, MetaDeliveries: "1"}, ev.Metadata)

		c, err := DecodeChange[shapeRow](ev)
		require.NoError(t, err, string(ev.Data))
		require.Equal(t, op, c.Op)
		require.Equal(t, "test", c.Schema)
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
		// A plain bool and time.Time do not take MySQL's rendering: the
		// reason for Bool and Time.
		_, err = DecodeChange[struct {
			Paid bool `json:"paid"`
		}](ev)
		require.ErrorIs(t, err, batuta.ErrInvalidPayload)
		_, err = DecodeChange[struct {
			At time.Time `json:"at"`
		}](ev)
		require.ErrorIs(t, err, batuta.ErrInvalidPayload)
		_, err = batuta.QueueMessageFrom(ev)
		require.ErrorIs(t, err, batuta.ErrWrongSource)
	}
}

func TestBoolAndTime(t *testing.T) {
	t.Parallel()
	var v struct {
		A, B, C, D, E Bool
		T, U, N       Time
	}
	require.NoError(t, json.Unmarshal([]byte(`{"A":1,"B":0,"C":true,"D":false,"E":null,
		"T":"2026-01-02 03:04:05.5","U":"2026-01-02T03:04:05+02:00","N":null}`), &v))
	require.Equal(t, []Bool{true, false, true, false, false}, []Bool{v.A, v.B, v.C, v.D, v.E})
	require.True(t, v.T.Equal(time.Date(2026, 1, 2, 3, 4, 5, 5e8, time.UTC)))
	require.True(t, v.U.Equal(time.Date(2026, 1, 2, 1, 4, 5, 0, time.UTC)))
	require.True(t, v.N.IsZero())
	require.Error(t, json.Unmarshal([]byte(`{"A":2}`), &v))
	require.Error(t, json.Unmarshal([]byte(`{"T":"yesterday"}`), &v))
}
