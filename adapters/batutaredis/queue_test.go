package batutaredis_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/batuta-dev/batuta/batutatest"
	"strings"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("s", 201)
	tests := []struct {
		name  string
		cfg   batutaredis.Config
		field string
	}{
		{"missing stream", batutaredis.Config{}, "Stream"},
		{"stream with a space", batutaredis.Config{Stream: "a b"}, "Stream"},
		{"stream with a brace", batutaredis.Config{Stream: "{a}"}, "Stream"},
		{"stream too long", batutaredis.Config{Stream: long}, "Stream"},
		{"group with a newline", batutaredis.Config{Stream: "s", Group: "g\n"}, "Group"},
		{"consumer with a quote", batutaredis.Config{Stream: "s", Consumer: `c"`}, "Consumer"},
		{"dead letter is the stream", batutaredis.Config{Stream: "s", DeadLetterStream: "s"}, "DeadLetterStream"},
		{"negative visibility", batutaredis.Config{Stream: "s", VisibilityTimeout: -time.Second}, "VisibilityTimeout"},
		{"negative block", batutaredis.Config{Stream: "s", BlockTimeout: -1}, "BlockTimeout"},
		{"negative claim interval", batutaredis.Config{Stream: "s", ClaimInterval: -1}, "ClaimInterval"},
		{"negative max len", batutaredis.Config{Stream: "s", MaxLen: -1}, "MaxLen"},
		{"negative max deliveries", batutaredis.Config{Stream: "s", MaxDeliveries: -1}, "MaxDeliveries"},
		{"negative body cap", batutaredis.Config{Stream: "s", MaxBodyBytes: -1}, "MaxBodyBytes"},
		{"negative park delay", batutaredis.Config{Stream: "s", DeadLetterParkDelay: -time.Second}, "DeadLetterParkDelay"},
		{"read-ahead below -1", batutaredis.Config{Stream: "s", ReadAhead: -2}, "ReadAhead"},
	}
	// The client is never used: validation fails before any I/O.
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = client.Close() })
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := batutaredis.New(t.Context(), client, tc.cfg)
			require.ErrorIs(t, err, batuta.ErrInvalidConfig)
			var ce *batuta.ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.field, ce.Field, "error: %v", err)
		})
	}
	_, err := batutaredis.New(t.Context(), nil, batutaredis.Config{Stream: "s"})
	require.ErrorIs(t, err, batuta.ErrInvalidConfig)
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := batutaredis.Config{Stream: "orders"}.WithDefaults()
	require.Equal(t, "batuta", c.Group)
	require.Equal(t, 30*time.Second, c.VisibilityTimeout)
	require.Equal(t, 5*time.Second, c.ClaimInterval)
	require.Equal(t, time.Second, c.BlockTimeout)
	require.Equal(t, "orders:dead", c.DeadLetterStream)
	require.Equal(t, 1<<20, c.MaxBodyBytes)
	require.Equal(t, time.Hour, c.DeadLetterParkDelay)
	require.Equal(t, batutaredis.DefaultReadAhead, c.ReadAhead)
	require.NotEmpty(t, c.Consumer)
	require.NotEqual(t, c.Consumer, batutaredis.Config{Stream: "orders"}.WithDefaults().Consumer, "each handle gets its own consumer name")
	require.Equal(t, 125*time.Millisecond, batutaredis.Config{Stream: "s", VisibilityTimeout: 250 * time.Millisecond}.WithDefaults().ClaimInterval)
}

func TestOpenErrorsRedactPassword(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, url string
		invalid   bool // a URL error (ErrInvalidConfig) rather than a connection error
	}{
		{"unparsable", "redis://admin:s3cretpw@[::1/0", true},
		{"bad scheme", "http://admin:s3cretpw@127.0.0.1:6379", true},
		{"bad database", "redis://admin:s3cretpw@127.0.0.1:6379/x", true},
		{"unreachable", "redis://admin:s3cretpw@127.0.0.1:1/0?dial_timeout=1s", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := batutaredis.Open(t.Context(), tc.url, batutaredis.Config{Stream: "s"})
			require.Error(t, err)
			require.NotContains(t, err.Error(), "s3cretpw")
			require.Contains(t, err.Error(), "batutaredis:")
			if tc.invalid {
				require.ErrorIs(t, err, batuta.ErrInvalidConfig)
			} else {
				require.Contains(t, err.Error(), "connect to redis://admin:xxxxx@127.0.0.1:1/0")
			}
		})
	}
}

// open returns a handle on stream with cfg (Stream set), closed at cleanup.
func open(t *testing.T, cfg batutaredis.Config) *batutaredis.Queue {
	t.Helper()
	q, err := batutaredis.Open(t.Context(), redisURL(), cfg)
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

func TestNoCreate(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	_, err := batutaredis.New(t.Context(), admin, batutaredis.Config{Stream: stream, NoCreate: true})
	require.ErrorIs(t, err, batutaredis.ErrStreamNotFound)
	require.Contains(t, err.Error(), stream)

	// The stream exists but has no such group.
	require.NoError(t, admin.XAdd(t.Context(), &redis.XAddArgs{Stream: stream, Values: []any{"k", "v"}}).Err())
	_, err = batutaredis.New(t.Context(), admin, batutaredis.Config{Stream: stream, Group: "nope", NoCreate: true})
	require.ErrorIs(t, err, batutaredis.ErrStreamNotFound)
	require.Contains(t, err.Error(), `"nope"`)

	// Created by a handle without NoCreate, it is found.
	q := open(t, batutaredis.Config{Stream: stream})
	q2 := open(t, batutaredis.Config{Stream: stream, NoCreate: true})
	require.NoError(t, q2.Publish(t.Context(), batuta.Message{ID: "a"}))

	// Deleted while in use: a clear error.
	require.NoError(t, admin.Del(t.Context(), stream).Err())
	err = q2.Publish(t.Context(), batuta.Message{ID: "b"})
	require.ErrorIs(t, err, batutaredis.ErrStreamNotFound)
	_, err = q.Receive(t.Context(), 1)
	require.ErrorIs(t, err, batutaredis.ErrStreamNotFound)
}

func TestPublishRefusesLargeBody(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	q := open(t, batutaredis.Config{Stream: uniqueStream(t, admin), MaxBodyBytes: 10})
	err := q.Publish(t.Context(), batuta.Message{Body: make([]byte, 11)})
	require.ErrorIs(t, err, batuta.ErrPayloadTooLarge)
	require.NoError(t, q.Publish(t.Context(), batuta.Message{Body: make([]byte, 10)}))
}

func TestMaxDeliveriesDeadLetters(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	q := open(t, batutaredis.Config{Stream: stream, MaxDeliveries: 2, VisibilityTimeout: 100 * time.Millisecond})
	ctx := t.Context()

	// Nacked on its last allowed delivery: dead-lettered by Nack.
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "nacked", Body: []byte(`1`), Headers: map[string]string{"k": "v"}}))
	d := receiveOne(t, q)
	require.Equal(t, 1, d.Attempt)
	require.NoError(t, q.Nack(ctx, d, 0))
	d = receiveOne(t, q)
	require.Equal(t, 2, d.Attempt)
	require.NoError(t, q.Nack(ctx, d, 0))

	// Never settled (its consumer "crashes" each time): dead-lettered by
	// the adapter when delivery 3 comes up.
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "crashing"}))
	require.Equal(t, 1, receiveOne(t, q).Attempt)
	require.Equal(t, 2, receiveOne(t, q).Attempt) // after the visibility timeout
	expectNothing(t, q, 500*time.Millisecond)

	dead, err := admin.XRange(ctx, stream+":dead", "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, dead, 2)
	require.Equal(t, "nacked", dead[0].Values["id"])
	require.Equal(t, "1", dead[0].Values["body"])
	require.Equal(t, "2", dead[0].Values["attempts"])
	require.Contains(t, dead[0].Values["dead_reason"], "nacked on delivery 2")
	require.Contains(t, dead[0].Values["headers"], `"k":"v"`)
	require.Equal(t, "crashing", dead[1].Values["id"])
	require.Equal(t, "3", dead[1].Values["attempts"])
	require.Zero(t, admin.XLen(ctx, stream).Val(), "dead letters leave the stream")
	p, err := admin.XPending(ctx, stream, "batuta").Result()
	require.NoError(t, err)
	require.Zero(t, p.Count)

	// A dead-letter stream is an ordinary stream: a Queue reads it back.
	dq := open(t, batutaredis.Config{Stream: stream + ":dead"})
	d = receiveOne(t, dq)
	require.Equal(t, "nacked", d.ID)
	require.Equal(t, "v", d.Headers["k"])
	require.Contains(t, d.Headers["dead_reason"], "nacked")
}

func TestDeadLetterByCaller(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	q := open(t, batutaredis.Config{Stream: stream})
	require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "poison"}))
	d := receiveOne(t, q)
	require.NoError(t, q.DeadLetter(t.Context(), d, "malformed"))
	dead, err := admin.XRange(t.Context(), stream+":dead", "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, dead, 1)
	require.Equal(t, "malformed", dead[0].Values["dead_reason"])
	require.ErrorIs(t, q.Extend(t.Context(), d), batuta.ErrLeaseLost, "a dead-lettered delivery is settled")
}

func TestStaleDeliveryIsFenced(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	cfg := batutaredis.Config{Stream: uniqueStream(t, admin), VisibilityTimeout: 100 * time.Millisecond}
	a, b := open(t, cfg), open(t, cfg)
	require.NoError(t, a.Publish(t.Context(), batuta.Message{ID: "m"}))
	stale := receiveOne(t, a)
	fresh := receiveOne(t, b) // taken over after the visibility timeout
	require.Equal(t, 2, fresh.Attempt)

	require.ErrorIs(t, a.Ack(t.Context(), stale), batuta.ErrLeaseLost)
	require.ErrorIs(t, a.Nack(t.Context(), stale, 0), batuta.ErrLeaseLost)
	require.ErrorIs(t, a.Extend(t.Context(), stale), batuta.ErrLeaseLost)
	require.NoError(t, b.Ack(t.Context(), fresh))
	require.NoError(t, b.Ack(t.Context(), fresh), "acking a settled entry again is a no-op")
	require.NoError(t, a.Ack(t.Context(), stale), "once settled, a stale ack is a no-op too")
	expectNothing(t, a, 300*time.Millisecond)
}

func TestForeignEntries(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	q := open(t, batutaredis.Config{Stream: stream})
	entryID, err := admin.XAdd(t.Context(), &redis.XAddArgs{Stream: stream, Values: []any{"order", "42", "body", "raw"}}).Result()
	require.NoError(t, err)
	d := receiveOne(t, q)
	require.Equal(t, entryID, d.ID, "no id field: the entry ID")
	require.Equal(t, []byte("raw"), d.Body)
	require.Equal(t, map[string]string{"order": "42"}, d.Headers)
	require.WithinDuration(t, time.Now(), d.Time, time.Minute, "no time field: the entry ID's time")
	require.NoError(t, q.Nack(t.Context(), d, 0))
	d = receiveOne(t, q)
	require.Equal(t, entryID, d.ID, "the ID survives a nack")
	require.Equal(t, 2, d.Attempt)
	require.NoError(t, q.Ack(t.Context(), d))
}

func TestDelayedNackOutlivesItsConsumer(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	cfg := batutaredis.Config{Stream: stream, ClaimInterval: 50 * time.Millisecond}
	a := open(t, cfg)
	require.NoError(t, a.Publish(t.Context(), batuta.Message{ID: "later"}))
	d := receiveOne(t, a)
	require.NoError(t, a.Nack(t.Context(), d, 300*time.Millisecond))
	require.NoError(t, a.Close()) // the nacking consumer is gone
	require.EqualValues(t, 1, admin.ZCard(t.Context(), "{"+stream+"}:delayed").Val())

	b := open(t, cfg)
	d = receiveOne(t, b) // moved back into the stream by b
	require.Equal(t, "later", d.ID)
	require.Equal(t, 2, d.Attempt)
	require.NoError(t, b.Ack(t.Context(), d))
	require.Zero(t, admin.ZCard(t.Context(), "{"+stream+"}:delayed").Val())
}

func TestMaxLenAndRetainAcked(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	t.Run("MaxLen", func(t *testing.T) {
		t.Parallel()
		stream := uniqueStream(t, admin)
		q := open(t, batutaredis.Config{Stream: stream, MaxLen: 100})
		for range 1000 {
			require.NoError(t, q.Publish(t.Context(), batuta.Message{}))
		}
		n := admin.XLen(t.Context(), stream).Val()
		require.Less(t, n, int64(1000), "MAXLEN ~ trims (at node granularity, so not exactly)")
		require.GreaterOrEqual(t, n, int64(100))
	})
	t.Run("RetainAcked", func(t *testing.T) {
		t.Parallel()
		stream := uniqueStream(t, admin)
		q := open(t, batutaredis.Config{Stream: stream, RetainAcked: true})
		require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "kept"}))
		require.NoError(t, q.Ack(t.Context(), receiveOne(t, q)))
		require.EqualValues(t, 1, admin.XLen(t.Context(), stream).Val())
		p, err := admin.XPending(t.Context(), stream, "batuta").Result()
		require.NoError(t, err)
		require.Zero(t, p.Count)
	})
	t.Run("AckDeletes", func(t *testing.T) {
		t.Parallel()
		stream := uniqueStream(t, admin)
		q := open(t, batutaredis.Config{Stream: stream})
		require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "gone"}))
		require.NoError(t, q.Ack(t.Context(), receiveOne(t, q)))
		require.Zero(t, admin.XLen(t.Context(), stream).Val())
	})
}

func TestCloseRemovesIdleConsumer(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	q := open(t, batutaredis.Config{Stream: stream, Consumer: "leaving"})
	require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "x"}))
	d := receiveOne(t, q)
	require.NoError(t, q.Close())
	require.ErrorIs(t, q.Ack(t.Context(), d), batuta.ErrClosed, "handed back by Close")
	require.ErrorIs(t, q.Publish(t.Context(), batuta.Message{}), batuta.ErrClosed)
	consumers, err := admin.XInfoConsumers(t.Context(), stream, "batuta").Result()
	require.NoError(t, err)
	for _, c := range consumers {
		require.NotEqual(t, "leaving", c.Name)
	}
	p, err := admin.XPending(t.Context(), stream, "batuta").Result()
	require.NoError(t, err)
	require.Zero(t, p.Count, "the held delivery was handed back to the stream")
	require.EqualValues(t, 1, admin.XLen(t.Context(), stream).Val())
}

// TestStartStopCycles opens, receives from and closes handles many times,
// with Receive calls canceled and cut off by Close, under -race; goleak in
// TestMain checks nothing is left running.
func TestStartStopCycles(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	cfg := batutaredis.Config{Stream: uniqueStream(t, admin), BlockTimeout: 20 * time.Millisecond}
	for i := range 30 {
		q, err := batutaredis.New(t.Context(), admin, cfg)
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

// TestConcurrentAcksAreCombined acks many deliveries from many goroutines
// at once (they share script calls) and checks each ack took effect.
func TestConcurrentAcksAreCombined(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	q := open(t, batutaredis.Config{Stream: stream})
	const n = 300
	for i := range n {
		require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: strings.Repeat("x", i%7) + "-" + time.Now().Format(time.RFC3339Nano)}))
	}
	var ds []batuta.Delivery
	for len(ds) < n {
		got, err := q.Receive(t.Context(), n-len(ds))
		require.NoError(t, err)
		ds = append(ds, got...)
	}
	errc := make(chan error, n)
	for _, d := range ds {
		go func() { errc <- q.Ack(t.Context(), d) }()
	}
	for range n {
		require.NoError(t, <-errc)
	}
	require.Zero(t, admin.XLen(t.Context(), stream).Val())
	p, err := admin.XPending(t.Context(), stream, "batuta").Result()
	require.NoError(t, err)
	require.Zero(t, p.Count)

	// An Ack whose ctx has ended reports it.
	require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "late"}))
	d := receiveOne(t, q)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.ErrorIs(t, q.Ack(ctx, d), context.Canceled)
}

// TestAckBatch acks more deliveries than one script call takes, while
// other goroutines ack on the same handle, with a delivery another consumer
// took over, a settled one and a foreign one among them: each gets Ack's
// outcome, at its index.
func TestAckBatch(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	q := open(t, batutaredis.Config{Stream: stream})
	var _ batuta.AckBatcher = q

	// One delivery taken over by another consumer (XCLAIM), one settled.
	require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "lost"}))
	lost := receiveOne(t, q)
	pend, err := admin.XPendingExt(t.Context(), &redis.XPendingExtArgs{Stream: stream, Group: "batuta", Start: "-", End: "+", Count: 10}).Result()
	require.NoError(t, err)
	require.Len(t, pend, 1)
	require.NoError(t, admin.XClaim(t.Context(), &redis.XClaimArgs{Stream: stream, Group: "batuta", Consumer: "intruder", Messages: []string{pend[0].ID}}).Err())
	require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "settled"}))
	settled := receiveOne(t, q)
	require.NoError(t, q.Ack(t.Context(), settled))

	const n = 300
	for i := range n {
		require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: fmt.Sprintf("m-%d", i)}))
	}
	var ds []batuta.Delivery
	for len(ds) < n {
		got, err := q.Receive(t.Context(), n-len(ds))
		require.NoError(t, err)
		ds = append(ds, got...)
	}
	// A third of them acked one by one meanwhile, the rest in the batch.
	var lone []batuta.Delivery
	batch := []batuta.Delivery{lost}
	for i, d := range ds {
		if i%3 == 0 {
			lone = append(lone, d)
		} else {
			batch = append(batch, d)
		}
	}
	batch = append(batch, batuta.Delivery{Message: batuta.Message{ID: "foreign"}, Receipt: "nope"}, settled)
	errc := make(chan error, len(lone))
	for _, d := range lone {
		go func() { errc <- q.Ack(t.Context(), d) }()
	}
	errs := q.AckBatch(t.Context(), batch)
	for range lone {
		require.NoError(t, <-errc)
	}
	require.Len(t, errs, len(batch))
	require.ErrorIs(t, errs[0], batuta.ErrLeaseLost, "a delivery another consumer holds")
	for i, err := range errs[1 : len(batch)-2] {
		require.NoError(t, err, "delivery %d", i+1)
	}
	require.ErrorContains(t, errs[len(batch)-2], "not a delivery of a batutaredis queue")
	require.NoError(t, errs[len(batch)-1], "a settled entry: a no-op, as for Ack")
	require.EqualValues(t, 1, admin.XLen(t.Context(), stream).Val(), "only the entry the intruder holds is left")
	p, err := admin.XPending(t.Context(), stream, "batuta").Result()
	require.NoError(t, err)
	require.EqualValues(t, 1, p.Count)

	// All acked: nil.
	require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "last"}))
	require.Nil(t, q.AckBatch(t.Context(), []batuta.Delivery{receiveOne(t, q)}))
	// An ended ctx fails every delivery with its error.
	require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "late"}))
	d := receiveOne(t, q)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	errs = q.AckBatch(ctx, []batuta.Delivery{d})
	require.Len(t, errs, 1)
	require.ErrorIs(t, errs[0], context.Canceled)
	require.NoError(t, q.Ack(t.Context(), d))
}
