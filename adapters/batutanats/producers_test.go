package batutanats_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutanats"
	"github.com/stretchr/testify/require"
)

// natsPub runs examples/worker/producers/nats_pub.py, a NATS producer in
// Python using only the standard library, and returns its PubAck. The test
// skips when python3 is not installed, unless BATUTA_REQUIRE_SERVICES=1.
func natsPub(t *testing.T, ctx context.Context, subject, data string, headers ...string) map[string]any {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("BATUTA_REQUIRE_SERVICES") == "1" {
			t.Fatalf("python3 is required (BATUTA_REQUIRE_SERVICES=1) but not installed: %v", err)
		}
		t.Skipf("python3 not installed, skipping: %v", err)
	}
	script, err := filepath.Abs("../../examples/worker/producers/nats_pub.py")
	require.NoError(t, err)
	args := []string{script, "-s", natsURL()}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	args = append(args, subject, data)
	out, err := exec.CommandContext(ctx, py, args...).CombinedOutput()
	require.NoError(t, err, "nats_pub.py: %s", out)
	var ack map[string]any
	require.NoError(t, json.Unmarshal(out, &ack), "nats_pub.py printed %q", out)
	return ack
}

// TestFallbackIDSurvivesStreamRecreation: a message without Nats-Msg-Id
// gets an ID that a redelivery keeps and that a message of a re-created
// stream (whose sequences restart at 1) does not share. On the original
// code both messages were "<stream>-1", so with a persistent store the
// second was taken for a duplicate of the first and never ran.
func TestFallbackIDSurvivesStreamRecreation(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	stream := uniqueStream(t, js)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	q := open(t, batutanats.Config{Stream: stream})
	_, err := js.Publish(ctx, "batuta."+stream, []byte(`{"id":1}`))
	require.NoError(t, err)
	first := receiveOne(t, q)
	require.Regexp(t, "^"+regexp.QuoteMeta(stream)+`-1-[0-9]+$`, first.ID, "<stream>-<sequence>-<stored time ns>")
	require.NoError(t, q.Nack(ctx, first, 0))
	again := receiveOne(t, q)
	require.Equal(t, first.ID, again.ID, "a redelivery keeps the ID")
	require.Equal(t, 2, again.Attempt)
	require.NoError(t, q.Ack(ctx, again))
	require.NoError(t, q.Close())

	require.NoError(t, js.DeleteStream(ctx, stream))
	q2 := open(t, batutanats.Config{Stream: stream}) // re-creates it
	ack, err := js.Publish(ctx, "batuta."+stream, []byte(`{"id":2}`))
	require.NoError(t, err)
	require.EqualValues(t, 1, ack.Sequence, "the new stream starts again at 1")
	second := receiveOne(t, q2)
	require.NotEqual(t, first.ID, second.ID, "a new message of the re-created stream is a new event")
	require.NoError(t, q2.Ack(ctx, second))
}

// TestNATSPythonProducer drives the queue trigger with nats_pub.py exactly
// as docs/queues-redis-nats.md ("Producing from other languages")
// documents: Nats-Msg-Id, the type header and the payload become the
// event's ID, type and data. The same message published twice is stored
// once (the stream's duplicate window); a delivery redelivered after its
// run was accepted (its consumer died before the ack) runs once.
func TestNATSPythonProducer(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	stream := uniqueStream(t, js)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dying := open(t, batutanats.Config{Stream: stream}) // creates the stream and consumer

	body := `{"id":7,"total_cents":700}`
	subject := "batuta." + stream
	ack := natsPub(t, ctx, subject, body, "Nats-Msg-Id: order-7", "type: order.created")
	require.Equal(t, stream, ack["stream"])
	require.Nil(t, ack["duplicate"])
	ack = natsPub(t, ctx, subject, body, "Nats-Msg-Id: order-7", "type: order.created")
	require.Equal(t, true, ack["duplicate"], "the re-sent copy is dropped by the stream")
	natsPub(t, ctx, subject, `{"id":8}`, "type: order.created") // no Nats-Msg-Id

	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	var mu sync.Mutex
	calls := map[string]int{}
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "process-order"},
		func(ctx context.Context, ev batuta.Event) (string, error) {
			mu.Lock()
			calls[ev.ID]++
			mu.Unlock()
			return "ok", nil
		}))
	octx, ocancel := context.WithCancel(ctx)
	odone := make(chan error, 1)
	go func() { odone <- o.Run(octx) }()
	defer func() { ocancel(); require.NoError(t, <-odone) }()

	// A consumer accepts order-7's run and dies before its ack.
	d := receiveOne(t, dying)
	require.Equal(t, "order-7", d.ID)
	firstRun, err := o.Submit(ctx, "process-order", batuta.DefaultQueueEvent(d, "nats"))
	require.NoError(t, err)
	require.NoError(t, dying.Close()) // NAKs it: redelivered at once

	q := open(t, batutanats.Config{Stream: stream})
	type fired struct {
		ev    batuta.Event
		runID string
	}
	got := make(chan fired, 10)
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: q, DeadLetter: batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error { return nil }),
		Source: "nats", Logger: quiet,
	})
	require.NoError(t, err)
	tctx, tcancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- trig.Run(tctx, func(ctx context.Context, ev batuta.Event) error {
			id, err := o.Submit(ctx, "process-order", ev)
			if err == nil {
				got <- fired{ev, id}
			}
			return err
		})
	}()
	var evs []fired
	for len(evs) < 2 {
		select {
		case f := <-got:
			evs = append(evs, f)
		case <-ctx.Done():
			t.Fatalf("only %d of 2 messages fired", len(evs))
		}
	}
	tcancel()
	require.NoError(t, <-runErr)

	var anon string
	for _, f := range evs {
		require.Equal(t, "nats", f.ev.Source)
		require.Equal(t, "order.created", f.ev.Type)
		if f.ev.ID == "order-7" {
			require.JSONEq(t, body, string(f.ev.Data))
			require.Equal(t, firstRun, f.runID, "the redelivery finds the run of the first delivery")
		} else {
			anon = f.ev.ID
			require.Regexp(t, "^"+regexp.QuoteMeta(stream)+`-2-[0-9]+$`, anon)
			require.JSONEq(t, `{"id":8}`, string(f.ev.Data))
		}
		run, err := o.Wait(ctx, f.runID)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, run.State)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, map[string]int{"order-7": 1, anon: 1}, calls)
	info, err := js.Stream(ctx, stream)
	require.NoError(t, err)
	si, err := info.Info(ctx)
	require.NoError(t, err)
	require.Zero(t, si.State.Msgs, "every message acked (work-queue retention removed it)")
}
