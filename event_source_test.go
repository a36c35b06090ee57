package batuta_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// eventCatcher runs an orchestrator with one workflow, "w", whose only task
// hands the event it sees (Input.Event) to the test: each trigger's event
// is checked as a task really receives it, after the store kept it.
type eventCatcher struct {
	o      *batuta.Orchestrator
	events chan batuta.Event
}

func newEventCatcher(t *testing.T) *eventCatcher {
	t.Helper()
	o, err := batuta.New(batuta.Config{Logger: lambdaQuiet})
	require.NoError(t, err)
	c := &eventCatcher{o: o, events: make(chan batuta.Event, 16)}
	require.NoError(t, o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{{
		Name: "see",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			c.events <- in.Event()
			return nil, nil
		},
	}}}))
	return c
}

// run starts the orchestrator until the test ends.
func (c *eventCatcher) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.o.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("orchestrator did not stop within 10s")
		}
	})
}

func (c *eventCatcher) next(t *testing.T) batuta.Event {
	t.Helper()
	select {
	case ev := <-c.events:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event reached the task within 10s")
		return batuta.Event{}
	}
}

// requireOnlyReader checks that every typed reader but the named one
// refuses ev with ErrWrongSource.
func requireOnlyReader(t *testing.T, ev batuta.Event, reader string) {
	t.Helper()
	readers := map[string]func(batuta.Event) error{
		"cron":   func(ev batuta.Event) error { _, err := batuta.CronTickFrom(ev); return err },
		"http":   func(ev batuta.Event) error { _, err := batuta.HTTPRequestFrom(ev); return err },
		"queue":  func(ev batuta.Event) error { _, err := batuta.QueueMessageFrom(ev); return err },
		"batch":  func(ev batuta.Event) error { _, err := batuta.QueueBatchFrom(ev); return err },
		"change": func(ev batuta.Event) error { _, err := batuta.ChangeFrom[map[string]any](ev); return err },
	}
	for name, read := range readers {
		err := read(ev)
		if name == reader {
			require.NoError(t, err, "reader %s", name)
			continue
		}
		require.ErrorIs(t, err, batuta.ErrWrongSource, "reader %s accepted %+v", name, ev)
		var wse *batuta.WrongSourceError
		require.ErrorAs(t, err, &wse)
		require.Equal(t, ev.ID, wse.ID)
	}
}

// The cron trigger's event, as docs/events.md documents it.
func TestEventShapeCron(t *testing.T) {
	t.Parallel()
	c := newEventCatcher(t)
	start := time.Date(2026, 3, 2, 10, 0, 30, 0, time.UTC)
	clock := batutatest.NewFakeClock(start)
	trig, err := batuta.NewCron(batuta.CronConfig{Name: "report", Spec: "* * * * *", Data: []byte(`{"k":1}`), Clock: clock})
	require.NoError(t, err)
	require.NoError(t, c.o.Bind("w", trig))
	c.run(t)
	require.True(t, clock.WaitForTimers(1, 10*time.Second), "the cron trigger armed no timer")
	tick := time.Date(2026, 3, 2, 10, 1, 0, 0, time.UTC)
	clock.Set(tick)
	ev := c.next(t)

	require.Equal(t, batuta.CronEventID("report", tick), ev.ID)
	require.Equal(t, "cron/report/2026-03-02T10:01:00Z", ev.ID)
	require.Equal(t, batuta.CronSource("report"), ev.Source)
	require.Equal(t, batuta.SourceCronPrefix+"report", ev.Source)
	require.Equal(t, batuta.CronEventType, ev.Type)
	require.Empty(t, ev.Subject)
	require.True(t, ev.Time.Equal(tick))
	require.JSONEq(t, `{"k":1}`, string(ev.Data))
	require.Equal(t, map[string]string{batuta.CronMetaSchedule: "report", batuta.CronMetaTick: "2026-03-02T10:01:00Z"}, ev.Metadata)

	got, err := batuta.CronTickFrom(ev)
	require.NoError(t, err)
	require.Equal(t, "report", got.Schedule)
	require.True(t, got.Tick.Equal(tick))
	require.Equal(t, time.UTC, got.Tick.Location())
	require.False(t, got.CatchUp)
	require.JSONEq(t, `{"k":1}`, string(got.Data))
	requireOnlyReader(t, ev, "cron")
}

// The HTTP front door's event, with and without an idempotency key.
func TestEventShapeHTTP(t *testing.T) {
	t.Parallel()
	c := newEventCatcher(t)
	h, err := batuta.NewHTTPHandler(batuta.HTTPConfig{Orchestrator: c.o, UnsafeAllowUnauthenticated: true, Logger: lambdaQuiet})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c.run(t)
	post := func(body string, headers ...string) {
		t.Helper()
		req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, srv.URL+"/workflows/w/runs", strings.NewReader(body))
		require.NoError(t, err)
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
	}

	body := `{"email":"ana@example.com"}`
	post(body, batuta.HeaderIdempotencyKey, "signup-42", batuta.HeaderCEType, "user.signed_up", batuta.HeaderCESubject, "ana")
	ev := c.next(t)
	sum := sha256.Sum256([]byte(body))
	require.Equal(t, "signup-42", ev.ID)
	require.Equal(t, batuta.SourceHTTP, ev.Source)
	require.Equal(t, "http", ev.Source)
	require.Equal(t, "user.signed_up", ev.Type)
	require.Equal(t, "ana", ev.Subject)
	require.False(t, ev.Time.IsZero())
	require.JSONEq(t, body, string(ev.Data))
	require.Equal(t, map[string]string{batuta.MetadataBodySHA256: hex.EncodeToString(sum[:])}, ev.Metadata)
	got, err := batuta.HTTPRequestFrom(ev)
	require.NoError(t, err)
	require.Equal(t, batuta.HTTPRequest{
		IdempotencyKey: "signup-42", Source: batuta.SourceHTTP, Type: "user.signed_up", Subject: "ana",
		Body: []byte(body), BodySHA256: hex.EncodeToString(sum[:]),
	}, got)
	requireOnlyReader(t, ev, "http")

	// No key: a random ID, no metadata, no key in the reading.
	post(`{"n":1}`)
	ev = c.next(t)
	require.NotEmpty(t, ev.ID)
	require.Equal(t, batuta.SourceHTTP, ev.Source)
	require.Empty(t, ev.Metadata)
	got, err = batuta.HTTPRequestFrom(ev)
	require.NoError(t, err)
	require.Empty(t, got.IdempotencyKey)
	require.JSONEq(t, `{"n":1}`, string(got.Body))
	requireOnlyReader(t, ev, "http")

	// A CloudEvent: Ce-Source wins, Ce-Id is the key; still an HTTP call.
	post(`{}`, batuta.HeaderCEID, "ce-1", batuta.HeaderCESource, "/billing", batuta.HeaderCEType, "invoice.paid")
	ev = c.next(t)
	require.Equal(t, "ce-1", ev.ID)
	require.Equal(t, "/billing", ev.Source)
	got, err = batuta.HTTPRequestFrom(ev)
	require.NoError(t, err)
	require.Equal(t, "ce-1", got.IdempotencyKey)
	require.Equal(t, "/billing", got.Source)
	requireOnlyReader(t, ev, "http")
}

// The queue trigger's default event, from the memory queue.
func TestEventShapeQueue(t *testing.T) {
	t.Parallel()
	c := newEventCatcher(t)
	q, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = q.Close() })
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, DeadLetter: &deadLetters{}, Logger: lambdaQuiet})
	require.NoError(t, err)
	require.NoError(t, c.o.Bind("w", trig))
	c.run(t)
	published := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	headers := map[string]string{"type": "order.created", "tenant": "acme"}
	require.NoError(t, q.Publish(context.Background(), batuta.Message{ID: "m-1", Body: []byte(`{"order":7}`), Headers: headers, Time: published}))
	ev := c.next(t)

	require.Equal(t, "m-1", ev.ID)
	require.Equal(t, batuta.SourceQueue, ev.Source)
	require.Equal(t, "queue", ev.Source)
	require.Equal(t, "order.created", ev.Type)
	require.Empty(t, ev.Subject)
	require.True(t, ev.Time.Equal(published))
	require.JSONEq(t, `{"order":7}`, string(ev.Data))
	require.Equal(t, headers, ev.Metadata)

	got, err := batuta.QueueMessageFrom(ev)
	require.NoError(t, err)
	require.Equal(t, "m-1", got.ID)
	require.Equal(t, batuta.SourceQueue, got.Source)
	require.Equal(t, "order.created", got.Type)
	require.True(t, got.Time.Equal(published))
	require.JSONEq(t, `{"order":7}`, string(got.Body))
	require.Equal(t, headers, got.Headers)
	requireOnlyReader(t, ev, "queue")
}

// A batching queue trigger's event.
func TestEventShapeQueueBatch(t *testing.T) {
	t.Parallel()
	data, err := json.Marshal(batuta.Batch{Items: []batuta.BatchItem{{
		Event: batuta.Event{ID: "m-1", Source: batuta.SourceQueue, Data: []byte(`{"n":1}`)}, Attempt: 2}}})
	require.NoError(t, err)
	ev := batuta.Event{ID: "b-1", Source: batuta.SourceQueue, Type: batuta.BatchEventType, Data: data}
	b, err := batuta.QueueBatchFrom(ev)
	require.NoError(t, err)
	require.Len(t, b.Items, 1)
	require.Equal(t, "m-1", b.Items[0].ID)
	require.Equal(t, 2, b.Items[0].Attempt)
	require.JSONEq(t, `{"n":1}`, string(b.Items[0].Data))
	requireOnlyReader(t, ev, "batch")

	_, err = batuta.QueueBatchFrom(batuta.Event{ID: "b-2", Type: batuta.BatchEventType, Data: []byte(`[`)})
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)
}

// Invoke's event: Source SourceInvoke for a plain payload; an Event is
// used as given.
func TestEventShapeInvoke(t *testing.T) {
	t.Parallel()
	o, err := batuta.New(batuta.Config{Logger: lambdaQuiet})
	require.NoError(t, err)
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "echo"},
		func(_ context.Context, ev batuta.Event) (batuta.Event, error) { return ev, nil }))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	defer func() { cancel(); <-done }()

	ev, err := batuta.InvokeAs[batuta.Event](ctx, o, "echo", map[string]int{"n": 1})
	require.NoError(t, err)
	require.NotEmpty(t, ev.ID)
	require.Equal(t, batuta.SourceInvoke, ev.Source)
	require.Empty(t, ev.Type)
	require.False(t, ev.Time.IsZero())
	require.JSONEq(t, `{"n":1}`, string(ev.Data))
	require.Empty(t, ev.Metadata)
	requireOnlyReader(t, ev, "")

	ev, err = batuta.InvokeAs[batuta.Event](ctx, o, "echo", batuta.Event{ID: "e-1", Source: "billing", Type: "invoice.paid"})
	require.NoError(t, err)
	require.Equal(t, "e-1", ev.ID)
	require.Equal(t, "billing", ev.Source)
	require.Equal(t, "invoice.paid", ev.Type)
}

// Submit keeps the event as given, filling only ID and Time.
func TestEventShapeSubmit(t *testing.T) {
	t.Parallel()
	c := newEventCatcher(t)
	c.run(t)
	_, err := c.o.Submit(context.Background(), "w", batuta.Event{Data: []byte(`{"n":1}`)})
	require.NoError(t, err)
	ev := c.next(t)
	require.NotEmpty(t, ev.ID)
	require.Empty(t, ev.Source)
	require.Empty(t, ev.Type)
	require.False(t, ev.Time.IsZero())
	// Not recognisably any trigger's: read as a queue message (by
	// elimination), refused by the others.
	requireOnlyReader(t, ev, "queue")
}

type orderRow struct {
	ID     int    `json:"id"`
	Status string `json:"status"`
}

func TestChangeFrom(t *testing.T) {
	t.Parallel()
	ev := batuta.Event{ID: "pg/public.batuta_outbox/9", Source: "postgres/public.orders", Type: "orders.update",
		Metadata: map[string]string{"pgoutboxid": "9", "pgdeliveries": "1"},
		Data: []byte(`{"op":"update","schema":"public","table":"orders","new":{"id":7,"status":"paid"},` +
			`"old":{"id":7,"status":"new"},"at":"2026-01-02T15:04:05.123456Z"}`)}
	c, err := batuta.ChangeFrom[orderRow](ev)
	require.NoError(t, err)
	require.Equal(t, batuta.ChangeUpdate, c.Op)
	require.Equal(t, "public", c.Schema)
	require.Equal(t, "orders", c.Table)
	require.Equal(t, &orderRow{ID: 7, Status: "paid"}, c.New)
	require.Equal(t, &orderRow{ID: 7, Status: "new"}, c.Old)
	require.True(t, c.At.Equal(time.Date(2026, 1, 2, 15, 4, 5, 123456000, time.UTC)))
	requireOnlyReader(t, ev, "change")

	ins := ev
	ins.Type = "orders.insert"
	ins.Data = []byte(`{"op":"insert","schema":"public","table":"orders","new":{"id":8,"status":"new"},"old":null,"at":"2026-01-02T15:04:05Z"}`)
	c, err = batuta.ChangeFrom[orderRow](ins)
	require.NoError(t, err)
	require.Nil(t, c.Old)
	require.Equal(t, 8, c.New.ID)

	// A row image of the wrong type is a payload error, not another source.
	bad := ev
	bad.Data = []byte(`{"op":"update","schema":"public","table":"orders","new":{"id":"seven"},"old":null,"at":"2026-01-02T15:04:05Z"}`)
	_, err = batuta.ChangeFrom[orderRow](bad)
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)
	require.NotErrorIs(t, err, batuta.ErrWrongSource)

	// An Emit event (any Data of the caller's) is no row change.
	emit := batuta.Event{ID: "order-7", Source: "shop", Type: "order.placed", Data: []byte(`{"op":"insert"}`),
		Metadata: map[string]string{"pgoutboxid": "10"}}
	_, err = batuta.ChangeFrom[orderRow](emit)
	require.ErrorIs(t, err, batuta.ErrWrongSource)
	require.ErrorContains(t, err, `event "order-7" (source "shop", type "order.placed") is not a row change`)
	_, err = batuta.QueueMessageFrom(emit)
	require.ErrorIs(t, err, batuta.ErrWrongSource)
}

func TestWrongSourceErrorText(t *testing.T) {
	t.Parallel()
	_, err := batuta.CronTickFrom(batuta.Event{ID: "m-1", Source: "queue", Type: "order.created"})
	require.EqualError(t, err, `batuta: event "m-1" (source "queue", type "order.created") is not a cron tick: type is not batuta.cron.tick`)
	_, err = batuta.HTTPRequestFrom(batuta.Event{ID: "m-1", Source: "queue"})
	require.EqualError(t, err, `batuta: event "m-1" (source "queue", type "") is not an HTTP request`)
}
