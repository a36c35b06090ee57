package batutaredis_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// pendingFor is how many entries of stream are pending for consumer.
func pendingFor(t *testing.T, q *batutaredis.Queue, consumer string) int64 {
	t.Helper()
	p, err := q.Client().XPending(t.Context(), q.Config().Stream, q.Config().Group).Result()
	require.NoError(t, err)
	return p.Consumers[consumer]
}

// TestReadAhead: a Receive of one message reads up to ReadAhead more,
// which the next Receive calls return in order without touching the
// stream; Close hands back those never returned without counting a
// delivery, and the one returned but unsettled with one counted.
func TestReadAhead(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	a := open(t, batutaredis.Config{Stream: stream, ReadAhead: 3})
	for i := range 6 {
		require.NoError(t, a.Publish(t.Context(), batuta.Message{ID: fmt.Sprint("m", i)}))
	}
	d := receiveOne(t, a)
	require.Equal(t, "m0", d.ID)
	require.EqualValues(t, 4, pendingFor(t, a, a.Config().Consumer), "one returned, three read ahead")
	require.NoError(t, a.Ack(t.Context(), d))
	for i := 1; i <= 2; i++ {
		d := receiveOne(t, a)
		require.Equal(t, fmt.Sprint("m", i), d.ID)
		require.Equal(t, 1, d.Attempt)
		if i == 1 {
			require.NoError(t, a.Ack(t.Context(), d))
		}
	}
	// m2 is held unsettled, m3 is read ahead; m4 and m5 are not read yet.
	require.EqualValues(t, 2, pendingFor(t, a, a.Config().Consumer))
	require.NoError(t, a.Close())

	b := open(t, batutaredis.Config{Stream: stream, ReadAhead: -1})
	attempts := map[string]int{}
	for range 4 {
		d := receiveOne(t, b)
		attempts[d.ID] = d.Attempt
		require.NoError(t, b.Ack(t.Context(), d))
	}
	require.Equal(t, map[string]int{"m2": 2, "m3": 1, "m4": 1, "m5": 1}, attempts)
	expectNothing(t, b, 100*time.Millisecond)
}

// TestReadAheadOff: with ReadAhead -1 a read takes only what Receive asked
// for, so another consumer gets the rest.
func TestReadAheadOff(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	a := open(t, batutaredis.Config{Stream: stream, ReadAhead: -1})
	b := open(t, batutaredis.Config{Stream: stream, ReadAhead: -1})
	require.NoError(t, a.Publish(t.Context(), batuta.Message{ID: "x"}))
	require.NoError(t, a.Publish(t.Context(), batuta.Message{ID: "y"}))
	require.Equal(t, "x", receiveOne(t, a).ID)
	require.EqualValues(t, 1, pendingFor(t, a, a.Config().Consumer))
	require.Equal(t, "y", receiveOne(t, b).ID)
}

// TestReadAheadKeptVisible: entries read ahead stay with their consumer
// past the visibility timeout (the handle extends them while it keeps
// them): another consumer's claim passes do not take them over, and they
// are returned later with Attempt 1.
func TestReadAheadKeptVisible(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	const vt = time.Second
	cfg := batutaredis.Config{Stream: stream, VisibilityTimeout: vt, ClaimInterval: 50 * time.Millisecond, BlockTimeout: 50 * time.Millisecond}
	a := open(t, cfg)
	b := open(t, cfg)
	for i := range 3 {
		require.NoError(t, a.Publish(t.Context(), batuta.Message{ID: fmt.Sprint("k", i)}))
	}
	d := receiveOne(t, a)
	require.NoError(t, a.Ack(t.Context(), d))
	// b keeps scanning for idle deliveries for two and a half visibility
	// timeouts.
	expectNothing(t, b, 5*vt/2)
	for i := 1; i <= 2; i++ {
		d := receiveOne(t, a)
		require.Equal(t, fmt.Sprint("k", i), d.ID)
		require.Equal(t, 1, d.Attempt, "never taken over, never counted again")
		require.NoError(t, a.Ack(t.Context(), d))
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMaxDeliveriesBackstopParksWhenDeadLetterFails: an entry over
// MaxDeliveries whose move to the dead-letter stream fails is parked in
// the delayed set for DeadLetterParkDelay (logged at error level), not
// left pending to be retried after every visibility timeout without end;
// once the dead-letter stream works again, it is moved there when it
// comes back. Before, it stayed pending and the move was retried (and
// logged) on every claim pass after the visibility timeout.
func TestMaxDeliveriesBackstopParksWhenDeadLetterFails(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	var logs syncBuffer
	q := open(t, batutaredis.Config{
		Stream: stream, MaxDeliveries: 1, VisibilityTimeout: 100 * time.Millisecond,
		ClaimInterval: 20 * time.Millisecond, BlockTimeout: 20 * time.Millisecond,
		DeadLetterParkDelay: time.Hour,
		Logger:              slog.New(slog.NewTextHandler(&logs, nil)),
	})
	// The dead-letter key holds a string: XADD to it fails (WRONGTYPE).
	require.NoError(t, admin.Set(t.Context(), stream+":dead", "not a stream", 0).Err())
	require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "poison"}))
	require.Equal(t, 1, receiveOne(t, q).Attempt) // its consumer "crashes"

	// Delivery 2 is over MaxDeliveries: the move fails, the entry is parked.
	delayed := "{" + stream + "}:delayed"
	require.Eventually(t, func() bool {
		receiveBriefly(t, q)
		return admin.ZCard(t.Context(), delayed).Val() == 1
	}, 10*time.Second, time.Millisecond, "parked in the delayed set")
	p, err := admin.XPending(t.Context(), stream, "batuta").Result()
	require.NoError(t, err)
	require.Zero(t, p.Count, "not left pending")
	require.Zero(t, admin.XLen(t.Context(), stream).Val())
	require.Contains(t, logs.String(), "level=ERROR")
	require.Contains(t, logs.String(), "entry parked in the delayed set")
	tries := strings.Count(logs.String(), "dead-letter failed")
	expectNothing(t, q, 500*time.Millisecond) // five visibility timeouts
	require.Equal(t, tries, strings.Count(logs.String(), "dead-letter failed"), "no retry before the park delay")

	// Fixed, and the park is over (made due now): the move succeeds.
	require.NoError(t, admin.Del(t.Context(), stream+":dead").Err())
	require.NoError(t, admin.ZAddArgs(t.Context(), delayed, zDueNow(t, admin, delayed)).Err())
	require.Eventually(t, func() bool {
		receiveBriefly(t, q)
		return admin.XLen(t.Context(), stream+":dead").Val() == 1
	}, 10*time.Second, time.Millisecond, "dead-lettered once the stream works")
	dead, err := admin.XRange(t.Context(), stream+":dead", "-", "+").Result()
	require.NoError(t, err)
	require.Equal(t, "poison", dead[0].Values["id"])
	require.Zero(t, admin.ZCard(t.Context(), delayed).Val())
}

// receiveBriefly runs one Receive that gives up after a few milliseconds
// (a consumer's loop turning: claim passes, promotions). What it gets is
// left unsettled.
func receiveBriefly(t *testing.T, q batuta.Queue) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	_, _ = q.Receive(ctx, 1)
}

// zDueNow returns the ZADD that makes every member of the delayed set key
// due now.
func zDueNow(t *testing.T, admin *redis.Client, key string) redis.ZAddArgs {
	t.Helper()
	members, err := admin.ZRange(t.Context(), key, 0, -1).Result()
	require.NoError(t, err)
	args := redis.ZAddArgs{XX: true}
	for _, m := range members {
		args.Members = append(args.Members, redis.Z{Score: 0, Member: m})
	}
	return args
}

// TestReadAheadCrashRedelivers: a consumer that dies (here: its connection
// is gone and never comes back) while it holds entries read ahead loses
// nothing: once their visibility timeout passes, another consumer takes
// them over, each with one delivery counted (Attempt 2), like the entry
// it was running.
func TestReadAheadCrashRedelivers(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	cfg := batutaredis.Config{Stream: stream, VisibilityTimeout: 300 * time.Millisecond,
		ClaimInterval: 20 * time.Millisecond, BlockTimeout: 20 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)}
	opts, err := redis.ParseURL(redisURL())
	require.NoError(t, err)
	dying := redis.NewClient(opts)
	a, err := batutaredis.New(t.Context(), dying, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	for i := range 3 {
		require.NoError(t, a.Publish(t.Context(), batuta.Message{ID: fmt.Sprint("c", i)}))
	}
	require.Equal(t, "c0", receiveOne(t, a).ID)
	require.EqualValues(t, 3, pendingFor(t, a, a.Config().Consumer), "one running, two read ahead")
	require.NoError(t, dying.Close()) // the consumer is gone

	b := open(t, batutaredis.Config{Stream: stream, VisibilityTimeout: 300 * time.Millisecond,
		ClaimInterval: 20 * time.Millisecond, BlockTimeout: 20 * time.Millisecond})
	got := map[string]int{}
	for len(got) < 3 {
		d := receiveOne(t, b)
		got[d.ID] = d.Attempt
		require.NoError(t, b.Ack(t.Context(), d))
	}
	require.Equal(t, map[string]int{"c0": 2, "c1": 2, "c2": 2}, got)
}
