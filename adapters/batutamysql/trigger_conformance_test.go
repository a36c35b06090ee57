package batutamysql

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
	"github.com/stretchr/testify/require"
)

// conformanceSource emits the trigger suite's events into an outbox with
// Emit, one transaction per event, the key in the JSON data. The event ID
// is left empty so the trigger's derived row ID is what the suite checks.
type conformanceSource struct {
	db *sql.DB
	ob Outbox
}

type conformanceData struct {
	Key string `json:"key"`
}

func (s *conformanceSource) Emit(ctx context.Context, key string) error {
	data, err := json.Marshal(conformanceData{Key: key})
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback() // a no-op after Commit
	if err := Emit(ctx, tx, s.ob, batuta.Event{Type: "suite.key", Data: data}); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *conformanceSource) Key(ev batuta.Event) string {
	var d conformanceData
	if json.Unmarshal(ev.Data, &d) != nil {
		return ""
	}
	return d.Key
}

// trigger returns a new consumer of the source's outbox.
func (s *conformanceSource) trigger(t *testing.T) batuta.Trigger {
	t.Helper()
	return newTrigger(t, TriggerConfig{
		DB:              s.db,
		Outbox:          s.ob,
		MinPollInterval: 5 * time.Millisecond,
		MaxPollInterval: 50 * time.Millisecond,
		MaxBackoff:      100 * time.Millisecond,
	})
}

func TestTriggerConformance(t *testing.T) {
	batutatest.TestTrigger(t, batutatest.TriggerSuite{
		New: func(t *testing.T) (batuta.Trigger, batutatest.TriggerSource) {
			db := openDB(t)
			src := &conformanceSource{db: db, ob: Outbox{Table: "bt_" + suffix() + "_outbox"}}
			require.NoError(t, InstallOutbox(t.Context(), db, src.ob))
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = UninstallOutbox(ctx, db, src.ob)
			})
			return src.trigger(t), src
		},
		Restart: func(t *testing.T, src batutatest.TriggerSource) batuta.Trigger {
			return src.(*conformanceSource).trigger(t)
		},
	})
}
