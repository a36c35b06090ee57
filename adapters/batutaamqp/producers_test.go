package batutaamqp

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

// requireTool returns the path of a command-line client the test drives,
// skipping the test when it is not installed (failing it instead when
// BATUTA_REQUIRE_SERVICES=1).
func requireTool(t *testing.T, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("BATUTA_REQUIRE_SERVICES") == "1" {
			t.Fatalf("%s is required (BATUTA_REQUIRE_SERVICES=1) but not installed (%s): %v", name, install, err)
		}
		t.Skipf("%s not installed (%s), skipping: %v", name, install, err)
	}
	return p
}

// amqpPublish runs the amqp-publish client (Debian package amqp-tools), as a
// producer written in another language would publish: it cannot set the
// message-id property, only headers.
func amqpPublish(t *testing.T, ctx context.Context, queue, body string, headers ...string) {
	t.Helper()
	bin := requireTool(t, "amqp-publish", "apt-get install amqp-tools")
	// librabbitmq reads "amqp://host:5672/" as the vhost "" (not "/"):
	// leave the path out for the default vhost.
	args := []string{"--url", strings.TrimSuffix(brokerURL(), "/"), "--routing-key", queue, "--persistent", "--content-type", "application/json", "--body", body}
	for _, h := range headers {
		args = append(args, "--header", h)
	}
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	require.NoError(t, err, "amqp-publish: %s", out)
}

// rawPublish publishes a message the way a foreign client does: no
// message-id, no adapter headers.
func rawPublish(t *testing.T, admin *amqp.Connection, queue string, p amqp.Publishing) {
	t.Helper()
	ch, err := admin.Channel()
	require.NoError(t, err)
	defer func() { _ = ch.Close() }()
	require.NoError(t, ch.Confirm(false))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conf, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, p)
	require.NoError(t, err)
	ok, err := conf.WaitContext(ctx)
	require.NoError(t, err)
	require.True(t, ok, "broker nacked the publish")
}

// TestRedeliveryKeepsDerivedID: a message without message-id keeps the ID
// derived from its IDHeader (or, with ContentID, from its content) across
// every kind of redelivery: the broker's requeue (Nack without delay on a
// quorum queue), a consumer that closes unsettled, and the adapter's own
// republish (Nack with a delay). On the original code the ID was empty, so
// the orchestrator gave each delivery a new random event ID.
func TestRedeliveryKeepsDerivedID(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	for _, tc := range []struct {
		name    string
		cfg     func(*Config)
		headers amqp.Table
		want    string // "" for a content ID
	}{
		{name: "id header", headers: amqp.Table{DefaultIDHeader: "order-7", "type": "order.created"}, want: "order-7"},
		{name: "custom id header", cfg: func(c *Config) { c.IDHeader = "Nats-Msg-Id" }, headers: amqp.Table{"Nats-Msg-Id": "order-8"}, want: "order-8"},
		{name: "content id", cfg: func(c *Config) { c.ContentID = true }, headers: amqp.Table{"type": "order.created"}},
		{name: "random id, adapter republish only", headers: amqp.Table{"type": "order.created"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t, admin)
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			logs := &lockedBuffer{}
			cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			q := openQueue(t, brokerURL(), cfg)
			rawPublish(t, admin, cfg.Queue, amqp.Publishing{Headers: tc.headers, Body: []byte(`{"id":7}`), DeliveryMode: amqp.Persistent})

			first := receiveN(t, ctx, q, 1)[0]
			require.NotEmpty(t, first.ID)
			if tc.want != "" {
				require.Equal(t, tc.want, first.ID)
			}
			if tc.cfg == nil && tc.want == "" {
				// A random ID does not survive the broker's own requeue:
				// that is what IDHeader and ContentID are for ...
				require.NoError(t, q.Nack(ctx, first, 0))
				requeued := receiveN(t, ctx, q, 1)[0]
				require.NotEqual(t, first.ID, requeued.ID)
				// ... but it survives what the adapter republishes (Nack
				// with a delay goes through a wait queue), and from then on
				// it is the copy's message-id.
				require.NoError(t, q.Nack(ctx, requeued, time.Millisecond))
				again := receiveN(t, ctx, q, 1)[0]
				require.Equal(t, requeued.ID, again.ID, "the adapter's copy carries the stamped ID")
				require.NoError(t, q.Nack(ctx, again, 0))
				last := receiveN(t, ctx, q, 1)[0]
				require.Equal(t, requeued.ID, last.ID)
				require.NoError(t, q.Ack(ctx, last))
				require.Equal(t, 1, strings.Count(logs.String(), "got a random ID"), "warned once: %s", logs.String())
				return
			}
			require.NoError(t, q.Nack(ctx, first, 0)) // the broker's requeue
			second := receiveN(t, ctx, q, 1)[0]
			require.Equal(t, first.ID, second.ID, "broker requeue")
			require.Equal(t, 2, second.Attempt)
			require.NoError(t, q.Close()) // unsettled: the broker redelivers
			q2 := openQueue(t, brokerURL(), cfg)
			third := receiveN(t, ctx, q2, 1)[0]
			require.Equal(t, first.ID, third.ID, "redelivery after the consumer closed")
			require.NoError(t, q2.Nack(ctx, third, time.Millisecond)) // the adapter's republish
			fourth := receiveN(t, ctx, q2, 1)[0]
			require.Equal(t, first.ID, fourth.ID, "delayed redelivery")
			if typ, ok := tc.headers["type"]; ok {
				require.Equal(t, typ, fourth.Headers["type"])
			}
			require.NoError(t, q2.Ack(ctx, fourth))
			require.NotContains(t, logs.String(), "random ID")
		})
	}
}

// lockedBuffer collects log output written from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runsOnce is an orchestrator with one function, process-order, counting
// the calls per event ID.
type runsOnce struct {
	o     *batuta.Orchestrator
	mu    sync.Mutex
	calls map[string]int
	stop  func()
}

func newRunsOnce(t *testing.T) *runsOnce {
	t.Helper()
	o, err := batuta.New(batuta.Config{Logger: quietLogger()})
	require.NoError(t, err)
	r := &runsOnce{o: o, calls: map[string]int{}}
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "process-order"},
		func(ctx context.Context, ev batuta.Event) (string, error) {
			r.mu.Lock()
			r.calls[ev.ID]++
			r.mu.Unlock()
			return "ok", nil
		}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	r.stop = func() { cancel(); require.NoError(t, <-done) }
	return r
}

// callsOf waits for the runs to finish and returns the calls of eventID.
func (r *runsOnce) callsOf(t *testing.T, ctx context.Context, runIDs []string, eventID string) int {
	t.Helper()
	for _, id := range runIDs {
		run, err := r.o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, run.State)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[eventID]
}

// TestAMQPPublishClient drives the queue trigger with the amqp-publish
// client exactly as docs/queues-amqp.md ("Producing from other languages")
// documents: the event has the ID of the batuta-event-id header, the type
// of the type header and the body as data; the same message sent twice,
// and a delivery redelivered after its run was accepted but before its ack
// (the consumer died), each run once. On the original code both carried no
// ID and ran twice.
func TestAMQPPublishClient(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	r := newRunsOnce(t)
	defer r.stop()
	body := `{"id":7,"total_cents":700}`

	// A consumer that accepts the run and dies before its ack.
	dying := openQueue(t, brokerURL(), cfg) // declares the queue
	amqpPublish(t, ctx, cfg.Queue, body, "batuta-event-id: order-7", "type: order.created")
	d := receiveN(t, ctx, dying, 1)[0]
	firstRun, err := r.o.Submit(ctx, "process-order", batuta.DefaultQueueEvent(d, "rabbitmq"))
	require.NoError(t, err)
	require.NoError(t, dying.Close()) // no ack: the broker redelivers

	// The producer re-sends the same message.
	amqpPublish(t, ctx, cfg.Queue, body, "batuta-event-id: order-7", "type: order.created")
	// And another order, with no ID: a content ID (ContentID) or a random one.
	amqpPublish(t, ctx, cfg.Queue, `{"id":8,"total_cents":800}`, "type: order.created")

	q := openQueue(t, brokerURL(), cfg)
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, DeadLetter: q.DeadLetters(), Source: "rabbitmq", Logger: quietLogger()})
	require.NoError(t, err)
	var mu sync.Mutex
	var events []batuta.Event
	var runIDs []string
	var fired atomic.Int64
	tctx, tcancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- trig.Run(tctx, func(ctx context.Context, ev batuta.Event) error {
			id, err := r.o.Submit(ctx, "process-order", ev)
			if err != nil {
				return err
			}
			mu.Lock()
			events = append(events, ev)
			runIDs = append(runIDs, id)
			mu.Unlock()
			fired.Add(1)
			return nil
		})
	}()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for fired.Load() < 3 {
		select {
		case <-tick.C: // polling the counter the fire func bumps
		case <-deadline.C:
			t.Fatalf("only %d of 3 messages fired", fired.Load())
		}
	}
	tcancel()
	require.NoError(t, <-runErr)

	mu.Lock()
	defer mu.Unlock()
	var order7 []string
	for i, ev := range events {
		require.Equal(t, "rabbitmq", ev.Source)
		require.Equal(t, "order.created", ev.Type)
		if ev.ID == "order-7" {
			require.JSONEq(t, body, string(ev.Data))
			require.Equal(t, firstRun, runIDs[i], "a redelivery or a re-send finds the run of the first delivery")
			order7 = append(order7, ev.ID)
		} else {
			require.JSONEq(t, `{"id":8,"total_cents":800}`, string(ev.Data))
			require.NotEmpty(t, ev.ID)
		}
	}
	require.Len(t, order7, 2, "the redelivered message and the re-sent one")
	require.Equal(t, 1, r.callsOf(t, ctx, runIDs, "order-7"), "order-7 ran once")
	require.Zero(t, queueDepth(t, admin, cfg.Queue), "every delivery was acked")
}

// TestContentIDRunsOnce: with ContentID, a message with no ID at all that
// the broker redelivers after its run was accepted runs once.
func TestContentIDRunsOnce(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	cfg.ContentID = true
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	r := newRunsOnce(t)
	defer r.stop()
	dying := openQueue(t, brokerURL(), cfg) // declares the queue
	rawPublish(t, admin, cfg.Queue, amqp.Publishing{Headers: amqp.Table{"type": "order.created"}, Body: []byte(`{"id":9}`)})
	d := receiveN(t, ctx, dying, 1)[0]
	firstRun, err := r.o.Submit(ctx, "process-order", batuta.DefaultQueueEvent(d, "rabbitmq"))
	require.NoError(t, err)
	require.NoError(t, dying.Close())

	q := openQueue(t, brokerURL(), cfg)
	d2 := receiveN(t, ctx, q, 1)[0]
	require.Equal(t, d.ID, d2.ID)
	again, err := r.o.Submit(ctx, "process-order", batuta.DefaultQueueEvent(d2, "rabbitmq"))
	require.NoError(t, err)
	require.Equal(t, firstRun, again)
	require.NoError(t, q.Ack(ctx, d2))
	require.Equal(t, 1, r.callsOf(t, ctx, []string{firstRun}, d.ID))
}
