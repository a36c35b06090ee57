package batutanats_test

import (
	"context"
	"errors"
	"github.com/batuta-dev/batuta/batutatest"
	"strings"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutanats"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		cfg   batutanats.Config
		field string
	}{
		{"missing stream", batutanats.Config{}, "Stream"},
		{"stream with a dot", batutanats.Config{Stream: "a.b"}, "Stream"},
		{"stream too long", batutanats.Config{Stream: strings.Repeat("s", 201)}, "Stream"},
		{"consumer with a space", batutanats.Config{Stream: "s", Consumer: "a b"}, "Consumer"},
		{"wildcard subject", batutanats.Config{Stream: "s", Subject: "orders.*"}, "Subject"},
		{"empty token", batutanats.Config{Stream: "s", Subject: "orders..new"}, "Subject"},
		{"dead letter is the subject", batutanats.Config{Stream: "s", Subject: "a", DeadLetterSubject: "a"}, "DeadLetterSubject"},
		{"negative ack wait", batutanats.Config{Stream: "s", AckWait: -1}, "AckWait"},
		{"tiny poll wait", batutanats.Config{Stream: "s", PollWait: time.Millisecond}, "PollWait"},
		{"negative max deliveries", batutanats.Config{Stream: "s", MaxDeliveries: -1}, "MaxDeliveries"},
		{"negative max msgs", batutanats.Config{Stream: "s", MaxMsgs: -1}, "MaxMsgs"},
		{"too many replicas", batutanats.Config{Stream: "s", Replicas: 7}, "Replicas"},
	}
	js := requireNATS(t) // New needs a JetStream; validation fails before any call
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := batutanats.New(t.Context(), js, tc.cfg)
			require.ErrorIs(t, err, batuta.ErrInvalidConfig)
			var ce *batuta.ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.field, ce.Field, "error: %v", err)
		})
	}
	_, err := batutanats.New(t.Context(), nil, batutanats.Config{Stream: "s"})
	require.ErrorIs(t, err, batuta.ErrInvalidConfig)
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := batutanats.Config{Stream: "orders"}.WithDefaults()
	require.Equal(t, "batuta.orders", c.Subject)
	require.Equal(t, "batuta.orders.dead", c.DeadLetterSubject)
	require.Equal(t, "batuta", c.Consumer)
	require.Equal(t, 30*time.Second, c.AckWait)
	require.Equal(t, time.Second, c.PollWait)
	require.Equal(t, 1, c.Replicas)
}

func TestOpenErrorsRedactPassword(t *testing.T) {
	t.Parallel()
	for _, url := range []string{
		"nats://admin:s3cretpw@[::1",
		"nats://admin:s3cretpw@127.0.0.1:1",
	} {
		_, err := batutanats.Open(t.Context(), url, batutanats.Config{Stream: "s"})
		require.Error(t, err)
		require.NotContains(t, err.Error(), "s3cretpw")
		require.Contains(t, err.Error(), "batutanats: connect to")
	}
}

func open(t *testing.T, cfg batutanats.Config) *batutanats.Queue {
	t.Helper()
	q, err := batutanats.Open(t.Context(), natsURL(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = q.Close() })
	return q
}

func receiveOne(t *testing.T, q batuta.Queue) batuta.Delivery {
	t.Helper()
	return batutatest.ReceiveOne(t, q, 10*time.Second)
}

func expectNothing(t *testing.T, q batuta.Queue, d time.Duration) {
	t.Helper()
	batutatest.ExpectNothing(t, q, d)
}

func TestNoCreateAndChecks(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	stream := uniqueStream(t, js)
	_, err := batutanats.New(t.Context(), js, batutanats.Config{Stream: stream, NoCreate: true})
	require.ErrorIs(t, err, batutanats.ErrStreamNotFound)
	require.Contains(t, err.Error(), stream)

	// A stream made elsewhere, without our consumer.
	_, err = js.CreateStream(t.Context(), jetstream.StreamConfig{Name: stream, Subjects: []string{"batuta." + stream}})
	require.NoError(t, err)
	_, err = batutanats.New(t.Context(), js, batutanats.Config{Stream: stream, NoCreate: true})
	require.ErrorIs(t, err, batutanats.ErrStreamNotFound)
	require.Contains(t, err.Error(), "consumer")

	// Without NoCreate the consumer is created; the stream is left as is.
	q, err := batutanats.New(t.Context(), js, batutanats.Config{Stream: stream})
	require.NoError(t, err)
	require.NoError(t, q.Close())
	q, err = batutanats.New(t.Context(), js, batutanats.Config{Stream: stream, NoCreate: true})
	require.NoError(t, err)
	require.NoError(t, q.Close())
	require.NoError(t, js.Conn().Flush(), "Close leaves a connection passed to New open")

	// A subject that this stream does not capture.
	_, err = batutanats.New(t.Context(), js, batutanats.Config{Stream: stream, Subject: "elsewhere." + stream})
	require.ErrorIs(t, err, batutanats.ErrStreamNotFound)

	// The dead-letter subject must be captured when MaxDeliveries is set.
	_, err = batutanats.New(t.Context(), js, batutanats.Config{Stream: stream, MaxDeliveries: 3})
	require.ErrorIs(t, err, batutanats.ErrStreamNotFound)
	require.Contains(t, err.Error(), "DeadLetterSubject")
}

func TestPublishChecks(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	q := open(t, batutanats.Config{Stream: uniqueStream(t, js), MaxBodyBytes: 10})
	ctx := t.Context()
	require.ErrorIs(t, q.Publish(ctx, batuta.Message{Body: make([]byte, 11)}), batuta.ErrPayloadTooLarge)
	for _, h := range []map[string]string{{"Nats-Msg-Id": "x"}, {"bad name": "x"}, {"k": "line\nbreak"}, {"Batuta-Time": "x"}} {
		require.ErrorIs(t, q.Publish(ctx, batuta.Message{Headers: h}), batuta.ErrInvalidPayload, "headers %v", h)
	}
	// A second publish of one ID within the duplicate window is dropped.
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "once", Body: []byte("1")}))
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "once", Body: []byte("2")}))
	d := receiveOne(t, q)
	require.Equal(t, []byte("1"), d.Body)
	require.NoError(t, q.Ack(ctx, d))
	require.NoError(t, q.Ack(ctx, d), "a second ack is a no-op")
	expectNothing(t, q, 300*time.Millisecond)
}

func TestMaxDeliveriesDeadLetters(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	stream := uniqueStream(t, js)
	cfg := batutanats.Config{Stream: stream, MaxDeliveries: 2, AckWait: 200 * time.Millisecond}
	q := open(t, cfg)
	ctx := t.Context()

	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "nacked", Body: []byte(`1`), Headers: map[string]string{"k": "v"}}))
	d := receiveOne(t, q)
	require.Equal(t, 1, d.Attempt)
	require.NoError(t, q.Nack(ctx, d, 0))
	d = receiveOne(t, q)
	require.Equal(t, 2, d.Attempt)
	require.NoError(t, q.Nack(ctx, d, 0)) // its last allowed delivery: dead-lettered

	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "crashing"}))
	require.Equal(t, 1, receiveOne(t, q).Attempt)
	require.Equal(t, 2, receiveOne(t, q).Attempt) // after AckWait
	expectNothing(t, q, 600*time.Millisecond)     // delivery 3 is dead-lettered by the adapter

	// The dead letters are on the dead-letter subject of the same stream:
	// a queue with that subject and its own consumer reads them.
	dq := open(t, batutanats.Config{Stream: stream, Subject: cfg.WithDefaults().DeadLetterSubject, Consumer: "dead"})
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var dead []batuta.Delivery
	for len(dead) < 2 {
		ds, err := dq.Receive(dctx, 2)
		require.NoError(t, err)
		dead = append(dead, ds...)
	}
	require.Equal(t, "nacked", dead[0].ID)
	require.Equal(t, []byte(`1`), dead[0].Body)
	require.Equal(t, "v", dead[0].Headers["k"])
	require.Equal(t, "2", dead[0].Headers[batutanats.HeaderDeadAttempts])
	require.Contains(t, dead[0].Headers[batutanats.HeaderDeadReason], "nacked on delivery 2")
	require.Equal(t, "crashing", dead[1].ID)
	require.Equal(t, "3", dead[1].Headers[batutanats.HeaderDeadAttempts])
	for _, d := range dead {
		require.NoError(t, dq.Ack(ctx, d))
	}
	s, err := js.Stream(ctx, stream)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs == 0
	}, 5*time.Second, 10*time.Millisecond, "work-queue retention removes acked messages")
}

// TestNackAfterAckLosesLease: a settled delivery cannot be nacked
// (extending it is batutatest.TestQueue's ExtendKeepsDelivery).
func TestNackAfterAckLosesLease(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	q := open(t, batutanats.Config{Stream: uniqueStream(t, js)})
	require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "settled"}))
	d := receiveOne(t, q)
	require.NoError(t, q.Ack(t.Context(), d))
	require.ErrorIs(t, q.Nack(t.Context(), d, 0), batuta.ErrLeaseLost)
}

func TestForeignMessages(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	stream := uniqueStream(t, js)
	q := open(t, batutanats.Config{Stream: stream})
	ack, err := js.Publish(t.Context(), "batuta."+stream, []byte("raw"))
	require.NoError(t, err)
	d := receiveOne(t, q)
	require.True(t, strings.HasPrefix(d.ID, stream+"-1-"), "no Nats-Msg-Id: <stream>-<sequence>-<stored time>: %s", d.ID)
	require.EqualValues(t, 1, ack.Sequence)
	require.Equal(t, []byte("raw"), d.Body)
	require.WithinDuration(t, time.Now(), d.Time, time.Minute)
	require.NoError(t, q.Nack(t.Context(), d, 0))
	first := d.ID
	d = receiveOne(t, q)
	require.Equal(t, first, d.ID)
	require.Equal(t, 2, d.Attempt)
	require.NoError(t, q.Ack(t.Context(), d))
}

func TestCloseHandsBack(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	cfg := batutanats.Config{Stream: uniqueStream(t, js)} // AckWait 30 s: only a NAK brings it back soon
	a, b := open(t, cfg), open(t, cfg)
	require.NoError(t, a.Publish(t.Context(), batuta.Message{ID: "x"}))
	d := receiveOne(t, a)
	require.NoError(t, a.Close())
	require.ErrorIs(t, a.Ack(t.Context(), d), batuta.ErrClosed)
	require.ErrorIs(t, a.Publish(t.Context(), batuta.Message{}), batuta.ErrClosed)
	d = receiveOne(t, b)
	require.Equal(t, 2, d.Attempt)
	require.NoError(t, b.Ack(t.Context(), d))
}

func TestStartStopCycles(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	cfg := batutanats.Config{Stream: uniqueStream(t, js), PollWait: 20 * time.Millisecond}
	for i := range 30 {
		q, err := batutanats.New(t.Context(), js, cfg)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 4)
		for range 4 {
			go func() {
				_, err := q.Receive(ctx, 5)
				errc <- err
			}()
		}
		if i%2 == 0 {
			cancel()
		}
		require.NoError(t, q.Close())
		for range 4 {
			err := <-errc
			require.True(t, errors.Is(err, batuta.ErrClosed) || errors.Is(err, context.Canceled), "got %v", err)
		}
		cancel()
	}
}

func TestDeletedWhileInUse(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	stream := uniqueStream(t, js)
	q := open(t, batutanats.Config{Stream: stream, PollWait: 100 * time.Millisecond})
	require.NoError(t, js.DeleteConsumer(t.Context(), stream, "batuta"))
	_, err := q.Receive(t.Context(), 1)
	require.ErrorIs(t, err, batutanats.ErrStreamNotFound)

	require.NoError(t, js.DeleteStream(t.Context(), stream))
	err = q.Publish(t.Context(), batuta.Message{ID: "x"})
	require.ErrorIs(t, err, batutanats.ErrStreamNotFound)
	require.Contains(t, err.Error(), stream)
}
