package batutaredis_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/batuta-dev/batuta/batutatest"
	"github.com/stretchr/testify/require"
)

// redisSource publishes the trigger suite's events to a stream, the key in
// a JSON body.
type redisSource struct {
	pub *batutaredis.Queue
	cfg batutaredis.Config
}

type suiteBody struct {
	Key string `json:"key"`
}

func (s *redisSource) Emit(ctx context.Context, key string) error {
	body, err := json.Marshal(suiteBody{Key: key})
	if err != nil {
		return err
	}
	return s.pub.Publish(ctx, batuta.Message{Body: body})
}

func (s *redisSource) Key(ev batuta.Event) string {
	var b suiteBody
	if json.Unmarshal(ev.Data, &b) != nil {
		return ""
	}
	return b.Key
}

// trigger returns a queue trigger on a new handle (its own client and
// consumer name) of the source's stream, as another process would have.
func (s *redisSource) trigger(t *testing.T) batuta.Trigger {
	t.Helper()
	cfg := s.cfg
	cfg.Consumer = "" // a fresh consumer per handle
	q, err := batutaredis.Open(t.Context(), redisURL(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = q.Close() })
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: q,
		DeadLetter: batuta.DeadLetterFunc(func(_ context.Context, dl batuta.DeadLetter) error {
			t.Errorf("unexpected dead letter: %+v", dl)
			return nil
		}),
		RetryDelay:    20 * time.Millisecond,
		MaxRetryDelay: 200 * time.Millisecond,
		BusyDelay:     10 * time.Millisecond,
		MaxDeliveries: 100, // the suite refuses fires on purpose; never dead-letter
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	return trig
}

// TestTriggerConformance runs the shared trigger suite with a queue
// trigger over a real Redis stream (default read-ahead), each trigger on
// its own handle.
func TestTriggerConformance(t *testing.T) {
	requireRedis(t)
	batutatest.TestTrigger(t, batutatest.TriggerSuite{
		New: func(t *testing.T) (batuta.Trigger, batutatest.TriggerSource) {
			admin := requireRedis(t)
			cfg := batutaredis.Config{
				Stream:            uniqueStream(t, admin),
				VisibilityTimeout: 5 * time.Second,
				BlockTimeout:      200 * time.Millisecond,
			}
			pub, err := batutaredis.New(t.Context(), admin, cfg)
			require.NoError(t, err)
			t.Cleanup(func() { _ = pub.Close() })
			src := &redisSource{pub: pub, cfg: cfg}
			return src.trigger(t), src
		},
		Restart: func(t *testing.T, src batutatest.TriggerSource) batuta.Trigger {
			return src.(*redisSource).trigger(t)
		},
	})
}
