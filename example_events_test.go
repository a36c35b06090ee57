package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// A cron tick read inside a task: the schedule name and the scheduled time
// (here on a fake clock, so the example needs no waiting).
func ExampleCronTickFrom() {
	o, _ := batuta.New(batuta.Config{Logger: lambdaQuiet})
	seen := make(chan string, 1)
	_ = o.Register(&batuta.Workflow{Name: "report", Tasks: []batuta.Task{{
		Name: "build",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			tick, err := batuta.CronTickFrom(in.Event())
			if err != nil {
				return nil, err // not started by a cron schedule
			}
			seen <- fmt.Sprintf("%s %s %s catch-up=%v", tick.Schedule, tick.Tick.Format(time.RFC3339), tick.Data, tick.CatchUp)
			return nil, nil
		},
	}}})
	clock := batutatest.NewFakeClock(time.Date(2026, 3, 2, 8, 59, 0, 0, time.UTC))
	trig, _ := batuta.NewCron(batuta.CronConfig{Name: "daily-report", Spec: "0 9 * * *", Data: []byte(`{"format":"pdf"}`), Clock: clock})
	_ = o.Bind("report", trig)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	defer func() { stop(); <-done }()

	clock.WaitForTimers(1, 10*time.Second)
	clock.Advance(time.Minute) // 09:00
	fmt.Println(<-seen)
	// Output:
	// daily-report 2026-03-02T09:00:00Z {"format":"pdf"} catch-up=false
}

// An HTTP call read inside a task: the idempotency key, the CloudEvents
// type and subject, and the body.
func ExampleHTTPRequestFrom() {
	o, _ := batuta.New(batuta.Config{Logger: lambdaQuiet})
	seen := make(chan string, 1)
	_ = o.Register(&batuta.Workflow{Name: "signup", Tasks: []batuta.Task{{
		Name: "welcome",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			req, err := batuta.HTTPRequestFrom(in.Event())
			if err != nil {
				return nil, err
			}
			seen <- fmt.Sprintf("key=%s source=%s type=%s subject=%s body=%s", req.IdempotencyKey, req.Source, req.Type, req.Subject, req.Body)
			return nil, nil
		},
	}}})
	h, _ := batuta.NewHTTPHandler(batuta.HTTPConfig{Orchestrator: o, UnsafeAllowUnauthenticated: true, Logger: lambdaQuiet})
	srv := httptest.NewServer(h)
	defer srv.Close()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	defer func() { stop(); <-done }()

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/workflows/signup/runs", strings.NewReader(`{"email":"ana@example.com"}`))
	req.Header.Set(batuta.HeaderIdempotencyKey, "signup-42")
	req.Header.Set(batuta.HeaderCEType, "user.signed_up")
	req.Header.Set(batuta.HeaderCESubject, "ana")
	resp, err := srv.Client().Do(req)
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode)
	fmt.Println(<-seen)
	// Output:
	// 202
	// key=signup-42 source=http type=user.signed_up subject=ana body={"email":"ana@example.com"}
}

// A queue message read inside a task, and one workflow fed by two sources
// telling them apart with the typed readers.
func ExampleQueueMessageFrom() {
	o, _ := batuta.New(batuta.Config{Logger: lambdaQuiet})
	seen := make(chan string, 2)
	_ = o.Register(&batuta.Workflow{Name: "orders", Tasks: []batuta.Task{{
		Name: "handle",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			ev := in.Event()
			if tick, err := batuta.CronTickFrom(ev); err == nil {
				seen <- "tick of " + tick.Schedule
				return nil, nil
			}
			msg, err := batuta.QueueMessageFrom(ev)
			if errors.Is(err, batuta.ErrWrongSource) {
				return nil, err
			}
			seen <- fmt.Sprintf("message %s from %s: type=%s tenant=%s body=%s", msg.ID, msg.Source, msg.Type, msg.Headers["tenant"], msg.Body)
			return nil, nil
		},
	}}})
	q, _ := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	defer q.Close()
	dlq, _ := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	defer dlq.Close()
	trig, _ := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, DeadLetter: batuta.DeadLetterQueue(dlq), Logger: lambdaQuiet})
	_ = o.Bind("orders", trig)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	defer func() { stop(); <-done }()

	_ = q.Publish(ctx, batuta.Message{ID: "m-1", Body: []byte(`{"order":7}`), Headers: map[string]string{"type": "order.created", "tenant": "acme"}})
	fmt.Println(<-seen)
	_, _ = o.Submit(ctx, "orders", batuta.Event{Type: batuta.CronEventType, Source: batuta.CronSource("nightly"),
		Metadata: map[string]string{batuta.CronMetaSchedule: "nightly"}})
	fmt.Println(<-seen)
	// Output:
	// message m-1 from queue: type=order.created tenant=acme body={"order":7}
	// tick of nightly
}

// A row change captured by a database adapter's outbox trigger, decoded
// into the table's row type (here built by hand; batutapg.DecodeChange,
// batutamysql.DecodeChange and batutasqlite.DecodeChange read the same
// shape and also check the database).
func ExampleChangeFrom() {
	type order struct {
		ID     int    `json:"id"`
		Status string `json:"status"`
	}
	ev := batuta.Event{
		ID: "pg/public.batuta_outbox/9", Source: "postgres/public.orders", Type: "orders.update",
		Data: []byte(`{"op":"update","schema":"public","table":"orders",` +
			`"new":{"id":7,"status":"paid"},"old":{"id":7,"status":"new"},"at":"2026-01-02T15:04:05Z"}`),
	}
	c, err := batuta.ChangeFrom[order](ev)
	if err != nil {
		panic(err)
	}
	fmt.Println(c.Op, c.Schema+"."+c.Table, c.Old.Status, "->", c.New.Status, c.At.Format(time.RFC3339))

	_, err = batuta.ChangeFrom[order](batuta.Event{ID: "m-1", Source: "queue", Data: []byte(`{"order":7}`)})
	fmt.Println(errors.Is(err, batuta.ErrWrongSource), err)
	// Output:
	// update public.orders new -> paid 2026-01-02T15:04:05Z
	// true batuta: event "m-1" (source "queue", type "") is not a row change: op "" is not insert, update or delete
}
