package batuta_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// memQueueSource publishes the suite's events to an in-memory queue, the
// key in a JSON body.
type memQueueSource struct{ q *batuta.MemoryQueue }

type conformanceBody struct {
	Key string `json:"key"`
}

func (s *memQueueSource) Emit(ctx context.Context, key string) error {
	body, err := json.Marshal(conformanceBody{Key: key})
	if err != nil {
		return err
	}
	return s.q.Publish(ctx, batuta.Message{Body: body})
}

func (s *memQueueSource) Key(ev batuta.Event) string {
	var b conformanceBody
	if json.Unmarshal(ev.Data, &b) != nil {
		return ""
	}
	return b.Key
}

// trigger returns a queue trigger on a new handle of the source's queue, as
// another process's connection would be.
func (s *memQueueSource) trigger(t *testing.T) batuta.Trigger {
	t.Helper()
	h := s.q.Connect()
	t.Cleanup(func() { _ = h.Close() })
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: h,
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
	if err != nil {
		t.Fatalf("NewQueueTrigger: %v", err)
	}
	return trig
}

func TestQueueTriggerConformance(t *testing.T) {
	batutatest.TestTrigger(t, batutatest.TriggerSuite{
		New: func(t *testing.T) (batuta.Trigger, batutatest.TriggerSource) {
			q, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{VisibilityTimeout: 5 * time.Second})
			if err != nil {
				t.Fatalf("NewMemoryQueue: %v", err)
			}
			t.Cleanup(func() { _ = q.Close() })
			src := &memQueueSource{q: q}
			return src.trigger(t), src
		},
		Restart: func(t *testing.T, src batutatest.TriggerSource) batuta.Trigger {
			return src.(*memQueueSource).trigger(t)
		},
	})
}
