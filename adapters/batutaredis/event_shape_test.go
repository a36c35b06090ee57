package batutaredis_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/stretchr/testify/require"
)

// TestEventShapeQueueMessage checks the queue trigger's documented default
// event (docs/events.md, batuta.QueueMessageFrom) against what a task
// really receives for a message that went through a real Redis stream: ID
// the message ID, Source "queue", Type the "type" header, Time the publish
// time, Data the body, Metadata the headers.
func TestEventShapeQueueMessage(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	q := open(t, batutaredis.Config{Stream: stream})

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	seen := make(chan batuta.Event, 1)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "orders", Tasks: []batuta.Task{{
		Name: "see",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			seen <- in.Event()
			return nil, nil
		},
	}}}))
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q,
		DeadLetter: batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error { return nil }), Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Bind("orders", trig))
	octx, ocancel := context.WithCancel(ctx)
	odone := make(chan error, 1)
	go func() { odone <- o.Run(octx) }()
	defer func() { ocancel(); require.NoError(t, <-odone) }()

	published := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	headers := map[string]string{"type": "order.created", "tenant": "acme"}
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "order-7", Body: []byte(`{"id":7}`), Headers: headers, Time: published}))
	var ev batuta.Event
	select {
	case ev = <-seen:
	case <-ctx.Done():
		t.Fatal("no event reached the task")
	}

	require.Equal(t, "order-7", ev.ID)
	require.Equal(t, batuta.SourceQueue, ev.Source)
	require.Equal(t, "order.created", ev.Type)
	require.Empty(t, ev.Subject)
	require.True(t, ev.Time.Equal(published), "time %v", ev.Time)
	require.JSONEq(t, `{"id":7}`, string(ev.Data))
	require.Equal(t, headers, ev.Metadata)

	msg, err := batuta.QueueMessageFrom(ev)
	require.NoError(t, err)
	require.Equal(t, batuta.QueueMessage{ID: "order-7", Source: batuta.SourceQueue, Type: "order.created",
		Time: ev.Time, Body: ev.Data, Headers: headers}, msg)
	for _, read := range []func(batuta.Event) error{
		func(ev batuta.Event) error { _, err := batuta.CronTickFrom(ev); return err },
		func(ev batuta.Event) error { _, err := batuta.HTTPRequestFrom(ev); return err },
		func(ev batuta.Event) error { _, err := batuta.ChangeFrom[map[string]any](ev); return err },
		func(ev batuta.Event) error { _, err := batuta.QueueBatchFrom(ev); return err },
	} {
		require.ErrorIs(t, read(ev), batuta.ErrWrongSource)
	}
}
