package batutaredis_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/stretchr/testify/require"
)

// redisCLI runs redis-cli against the test server, as a producer written
// in another language (or an operator) would add an entry, and returns
// its output (for XADD, the entry ID). The test skips when redis-cli is
// not installed, unless BATUTA_REQUIRE_SERVICES=1.
func redisCLI(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("redis-cli")
	if err != nil {
		if os.Getenv("BATUTA_REQUIRE_SERVICES") == "1" {
			t.Fatalf("redis-cli is required (BATUTA_REQUIRE_SERVICES=1) but not installed (apt-get install redis-tools): %v", err)
		}
		t.Skipf("redis-cli not installed (apt-get install redis-tools), skipping: %v", err)
	}
	out, err := exec.CommandContext(ctx, bin, append([]string{"-u", redisURL()}, args...)...).CombinedOutput()
	require.NoError(t, err, "redis-cli: %s", out)
	s := strings.TrimSpace(string(out))
	require.NotContains(t, s, "ERR", "redis-cli %v", args)
	return s
}

// TestEmptyIDFieldKeepsItsID: an entry whose "id" field is empty (a
// producer that left it blank) gets its entry ID, and keeps it across a
// nack. On the original code the re-added copy carried the empty field
// over, so it got the copy's new entry ID: a new event, run again.
func TestEmptyIDFieldKeepsItsID(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	q := open(t, batutaredis.Config{Stream: stream})
	entryID := redisCLI(t, t.Context(), "XADD", stream, "*", "id", "", "body", `{"id":1}`)
	d := receiveOne(t, q)
	require.Equal(t, entryID, d.ID)
	require.NoError(t, q.Nack(t.Context(), d, 0))
	d = receiveOne(t, q)
	require.Equal(t, entryID, d.ID, "the ID survives a nack")
	require.NoError(t, q.Nack(t.Context(), d, time.Millisecond))
	d = receiveOne(t, q)
	require.Equal(t, entryID, d.ID, "and a delayed nack")
	require.Equal(t, 3, d.Attempt)
	require.NoError(t, q.Ack(t.Context(), d))
}

// TestRedisCLIProducer drives the queue trigger with redis-cli exactly as
// docs/queues-redis-nats.md ("Producing from other languages") documents:
// fields id, type, time and body become the event's ID, type, time and
// data; the same message added twice (same id) runs once; an entry without
// id gets its entry ID, which it keeps when redelivered.
func TestRedisCLIProducer(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	q := open(t, batutaredis.Config{Stream: stream}) // creates the stream and group

	body := `{"id":7,"total_cents":700}`
	for range 2 {
		redisCLI(t, ctx, "XADD", stream, "*", "id", "order-7", "type", "order.created",
			"time", "2026-01-02T03:04:05Z", "body", body)
	}
	anon := redisCLI(t, ctx, "XADD", stream, "*", "type", "order.created", "body", `{"id":8}`)

	o, err := batuta.New(batuta.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
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

	// The entry without id is delivered once and nacked first, so its
	// second delivery is a re-added copy: its ID must not change.
	type fired struct {
		ev    batuta.Event
		runID string
	}
	got := make(chan fired, 10)
	nacked := false
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: q, DeadLetter: batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error { return nil }),
		Source: "redis", RetryDelay: time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	tctx, tcancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- trig.Run(tctx, func(ctx context.Context, ev batuta.Event) error {
			if ev.ID == anon && !nacked {
				nacked = true // one receiver: no race
				return batuta.ErrBusy
			}
			id, err := o.Submit(ctx, "process-order", ev)
			if err == nil {
				got <- fired{ev, id}
			}
			return err
		})
	}()
	var evs []fired
	for len(evs) < 3 {
		select {
		case f := <-got:
			evs = append(evs, f)
		case <-ctx.Done():
			t.Fatalf("only %d of 3 entries fired", len(evs))
		}
	}
	tcancel()
	require.NoError(t, <-runErr)

	var order7 string
	for _, f := range evs {
		require.Equal(t, "redis", f.ev.Source)
		require.Equal(t, "order.created", f.ev.Type)
		switch f.ev.ID {
		case "order-7":
			require.JSONEq(t, body, string(f.ev.Data))
			require.True(t, f.ev.Time.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), "time field: %v", f.ev.Time)
			if order7 != "" {
				require.Equal(t, order7, f.runID, "the second copy finds the first one's run")
			}
			order7 = f.runID
		case anon:
			require.JSONEq(t, `{"id":8}`, string(f.ev.Data))
		default:
			t.Fatalf("unexpected event ID %q", f.ev.ID)
		}
		run, err := o.Wait(ctx, f.runID)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, run.State)
	}
	require.True(t, nacked)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, map[string]int{"order-7": 1, anon: 1}, calls)
	n, err := admin.XLen(ctx, stream).Result()
	require.NoError(t, err)
	require.Zero(t, n, "every entry acked (and deleted)")
}
