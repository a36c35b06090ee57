package batutapg

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
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
	env *outboxEnv
}

type conformanceData struct {
	Key string `json:"key"`
}

func (s *conformanceSource) Emit(ctx context.Context, key string) error {
	data, err := json.Marshal(conformanceData{Key: key})
	if err != nil {
		return err
	}
	tx, err := s.env.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) // a no-op after Commit
	if err := Emit(ctx, tx, s.env.ob, batuta.Event{Type: "suite.key", Data: data}); err != nil {
		return err
	}
	return tx.Commit(ctx)
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
	trig, err := NewTrigger(TriggerConfig{
		Pool:         s.env.pool,
		Outbox:       s.env.ob,
		PollInterval: 100 * time.Millisecond,
		MaxBackoff:   100 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	require.NoError(t, err)
	return trig
}

func TestTriggerConformance(t *testing.T) {
	batutatest.TestTrigger(t, batutatest.TriggerSuite{
		New: func(t *testing.T) (batuta.Trigger, batutatest.TriggerSource) {
			env := newOutboxEnv(t)
			require.NoError(t, InstallOutbox(t.Context(), env.pool, env.ob))
			src := &conformanceSource{env: env}
			return src.trigger(t), src
		},
		Restart: func(t *testing.T, src batutatest.TriggerSource) batuta.Trigger {
			return src.(*conformanceSource).trigger(t)
		},
	})
}
