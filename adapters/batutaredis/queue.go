package batutaredis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/pullstash"
	"github.com/batuta-dev/batuta/internal/redact"
	"github.com/redis/go-redis/v9"
)

// ErrStreamNotFound reports that the stream or its consumer group does not
// exist (Config.NoCreate, or it was deleted while in use).
//
// It is the core's batuta.ErrQueueNotFound, so callers can match it
// whatever the broker.
var ErrStreamNotFound = batuta.ErrQueueNotFound

// Fence results of the settling scripts (see fence in scripts.go).
const (
	fencedHeld    = -1 // pending, but held by another consumer or delivered again
	fencedSettled = -2 // not pending any more
)

// releaseTimeout bounds the Redis calls Close makes to hand back the
// deliveries it still holds.
const releaseTimeout = 10 * time.Second

// A Queue is a batuta.Queue on one Redis stream and consumer group. Each
// Queue is one consumer of the group (Config.Consumer); open several, in one
// process or many, to share the work. All methods are safe for concurrent
// use.
type Queue struct {
	rdb    redis.UniversalClient
	owned  bool // Close closes rdb (made by Open)
	cfg    Config
	keys   []string // stream, delayed set
	log    *slog.Logger
	delDel string // "1" when Ack deletes the entry

	closing chan struct{}      // closed by Close
	life    context.Context    // the handle's background work; canceled by Close
	endLife context.CancelFunc // cancels life

	mu      sync.Mutex
	closed  bool
	held    map[string]held  // entry ID -> delivery held by this handle
	stash   *pullstash.Stash // reads in flight, and what abandoned ones read for the next Receive
	wakeAt  time.Time        // when the wake loop should promote delayed entries
	wakeCh  chan struct{}    // nudges the wake loop after wakeAt moved earlier
	waking  bool             // the wake loop is running
	bg      sync.WaitGroup   // the wake loop and the read-ahead keeper
	ahead   []aheadItem      // entries read ahead for the next Receive, oldest first
	keeping bool             // the read-ahead keeper runs

	backlog atomic.Bool // the last read returned entries: read without blocking first

	acks     []*ackReq     // acks waiting to be sent, guarded by ackMu
	ackMu    sync.Mutex    // guards acks
	ackToken chan struct{} // held by the caller sending a batch of acks

	hk          sync.Mutex // one housekeeping pass at a time
	nextClaim   time.Time
	nextPromote time.Time
}

// held is what the handle remembers of a delivery it holds.
type held struct {
	count   int64 // the PEL's delivery count when delivered
	attempt int
}

// aheadItem is an entry read ahead: delivered to this consumer, not yet
// handed out by Receive. at is when its visibility was last reset.
type aheadItem struct {
	d  batuta.Delivery
	at time.Time
}

// receipt is the batuta.Delivery.Receipt of this adapter.
type receipt struct {
	entryID string
	count   int64
}

// New returns a Queue that uses client, an existing go-redis client
// (*redis.Client, *redis.ClusterClient, a failover client...), which Close
// leaves open. Unless cfg.NoCreate, it creates the stream and the group if
// they are missing; with NoCreate it fails with ErrStreamNotFound unless
// both exist. ctx bounds the calls made here.
func New(ctx context.Context, client redis.UniversalClient, cfg Config) (*Queue, error) {
	if client == nil {
		return nil, fmt.Errorf("batutaredis: New: nil client: %w", batuta.ErrInvalidConfig)
	}
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("batutaredis: %w", err)
	}
	q := &Queue{
		rdb:      client,
		cfg:      cfg,
		keys:     []string{cfg.Stream, "{" + cfg.Stream + "}:delayed"},
		log:      cfg.Logger.With("stream", cfg.Stream, "group", cfg.Group, "consumer", cfg.Consumer),
		delDel:   "1",
		closing:  make(chan struct{}),
		held:     make(map[string]held),
		stash:    pullstash.New("batutaredis"),
		wakeCh:   make(chan struct{}, 1),
		ackToken: make(chan struct{}, ackFlushers),
	}
	if cfg.RetainAcked {
		q.delDel = "0"
	}
	q.life, q.endLife = context.WithCancel(context.WithoutCancel(ctx))
	if err := q.ensureGroup(ctx); err != nil {
		q.endLife()
		return nil, err
	}
	return q, nil
}

// Open connects to the Redis server at url ("redis://[user:password@]host:port/db",
// "rediss://..." for TLS, "unix:///path"; the query parameters of
// redis.ParseURL such as dial_timeout, read_timeout, pool_size and
// protocol tune the client) and returns a Queue over it, as New does. The
// connection is checked with PING. Close closes the client. Errors never
// show the password.
func Open(ctx context.Context, url string, cfg Config) (*Queue, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		msg := fmt.Sprintf("batutaredis: invalid URL %q: %v", redact.URL(url), err)
		return nil, redact.Err(redact.NewError(msg, batuta.ErrInvalidConfig), url)
	}
	client := redis.NewClient(opts)
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, redact.Err(fmt.Errorf("batutaredis: connect to %s: %w", redact.URL(url), err), url)
	}
	q, err := New(ctx, client, cfg)
	if err != nil {
		_ = client.Close()
		return nil, redact.Err(err, url)
	}
	q.owned = true
	return q, nil
}

// Config returns the configuration in use, defaults applied.
func (q *Queue) Config() Config { return q.cfg }

// Client returns the go-redis client the queue uses.
func (q *Queue) Client() redis.UniversalClient { return q.rdb }

func (q *Queue) ensureGroup(ctx context.Context) error {
	if q.cfg.NoCreate {
		groups, err := q.rdb.XInfoGroups(ctx, q.cfg.Stream).Result()
		if err != nil {
			if isNoSuchKey(err) {
				return fmt.Errorf("batutaredis: stream %q does not exist (Config.NoCreate is set): %w", q.cfg.Stream, ErrStreamNotFound)
			}
			return fmt.Errorf("batutaredis: check stream %q: %w", q.cfg.Stream, err)
		}
		for _, g := range groups {
			if g.Name == q.cfg.Group {
				return nil
			}
		}
		return fmt.Errorf("batutaredis: stream %q has no consumer group %q (Config.NoCreate is set): %w", q.cfg.Stream, q.cfg.Group, ErrStreamNotFound)
	}
	err := q.rdb.XGroupCreateMkStream(ctx, q.cfg.Stream, q.cfg.Group, "0").Err()
	if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return fmt.Errorf("batutaredis: create group %q on stream %q: %w", q.cfg.Group, q.cfg.Stream, q.wrapErr(err))
	}
	return nil
}

// Publish appends msg to the stream and returns once Redis has it (as
// durable as the server's persistence settings make it). It assigns a
// UUIDv7 ID if msg.ID is empty and the current time if msg.Time is zero. It
// fails with a *batuta.PayloadTooLargeError for a body over MaxBodyBytes,
// with ErrStreamNotFound if the stream is missing and Config.NoCreate is
// set, and with batuta.ErrClosed after Close.
func (q *Queue) Publish(ctx context.Context, msg batuta.Message) error {
	if q.isClosed() {
		return fmt.Errorf("batutaredis: publish: %w", batuta.ErrClosed)
	}
	msg, err := pullstash.PreparePublish("batutaredis", msg, q.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	vals, err := encodeMessage(msg, 0)
	if err != nil {
		return fmt.Errorf("batutaredis: publish %q: %w", msg.ID, err)
	}
	err = q.rdb.XAdd(ctx, q.xaddArgs(q.cfg.Stream, vals)).Err()
	if errors.Is(err, redis.Nil) {
		return fmt.Errorf("batutaredis: publish %q: stream %q does not exist: %w", msg.ID, q.cfg.Stream, ErrStreamNotFound)
	}
	if err != nil {
		return fmt.Errorf("batutaredis: publish %q: %w", msg.ID, q.wrapErr(err))
	}
	return nil
}

func (q *Queue) xaddArgs(stream string, vals []any) *redis.XAddArgs {
	return &redis.XAddArgs{
		Stream:     stream,
		NoMkStream: q.cfg.NoCreate,
		MaxLen:     q.cfg.MaxLen,
		Approx:     q.cfg.MaxLen > 0,
		Values:     vals,
	}
}

// Receive blocks until at least one message is available, ctx ends or the
// queue is closed, and returns up to n (>= 1) deliveries: entries an
// earlier read took ahead (Config.ReadAhead) first, then deliveries taken
// over from consumers that let them idle past the visibility timeout, then
// new entries. It returns ctx's error when ctx ends (at once while a read
// is blocked in Redis, one round trip later during a read that does not
// block: what such a read still brings is kept for the next Receive, or
// handed back by Close), batuta.ErrClosed after Close, and
// ErrStreamNotFound if the stream or group was deleted. Other errors
// (connection lost...) are returned as they come; call again to retry.
func (q *Queue) Receive(ctx context.Context, n int) ([]batuta.Delivery, error) {
	if n < 1 {
		return nil, fmt.Errorf("batutaredis: receive: max must be at least 1, got %d", n)
	}
	for {
		if q.isClosed() {
			return nil, fmt.Errorf("batutaredis: receive: %w", batuta.ErrClosed)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if ds := q.takeAhead(ctx, n); len(ds) > 0 {
			return ds, nil
		}
		if ds := q.takeStash(ctx, n); len(ds) > 0 {
			return ds, nil
		}
		ds, next, err := q.housekeep(ctx, n)
		if err != nil {
			return nil, err
		}
		if len(ds) > 0 {
			return ds, nil
		}
		if q.backlog.Load() {
			// The last read found entries, so more are likely waiting: a
			// read that does not block, on this goroutine (no hand-off).
			// ctx's end is noticed when it returns, one round trip later.
			ds, err := q.read(ctx, n, -1)
			if err != nil {
				return nil, err
			}
			if len(ds) > 0 {
				if err := ctx.Err(); err != nil {
					q.putBack(ds)
					return nil, err
				}
				return ds, nil
			}
		}
		block := min(max(next, time.Millisecond), q.cfg.BlockTimeout)
		// The read runs in its own goroutine, so that Receive can return
		// when ctx ends without waiting for Redis to answer.
		ds, _, err = q.stash.Read(ctx, q.closing, func() ([]batuta.Delivery, error) { return q.read(ctx, n, block) })
		if err != nil || len(ds) > 0 {
			return ds, err
		}
		// Nothing read, or another read left deliveries in the stash: loop.
	}
}

// takeStash returns up to n stashed deliveries. One that waited in the
// stash for more than half the visibility timeout is extended first, and
// dropped if it was taken over meanwhile.
func (q *Queue) takeStash(ctx context.Context, n int) []batuta.Delivery {
	var out []batuta.Delivery
	for _, s := range q.stash.Take(n) {
		if time.Since(s.At) > q.cfg.VisibilityTimeout/2 {
			if err := q.Extend(ctx, s.D); errors.Is(err, batuta.ErrLeaseLost) {
				continue
			}
		}
		out = append(out, s.D)
	}
	return out
}

// read runs one XREADGROUP for up to n new entries plus what read-ahead
// has room for (block < 0: do not block). It returns up to n deliveries
// and keeps the rest ahead for the next Receive. ctx's cancellation does
// not cut the read short: entries Redis delivered are never left behind
// in a lost reply because the caller gave up.
func (q *Queue) read(ctx context.Context, n int, block time.Duration) ([]batuta.Delivery, error) {
	timeout := releaseTimeout
	if block > 0 {
		timeout += block
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	res, err := q.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group:    q.cfg.Group,
		Consumer: q.cfg.Consumer,
		Streams:  []string{q.cfg.Stream, ">"},
		Count:    int64(n + q.aheadRoom()),
		Block:    block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		q.backlog.Store(false)
		return nil, nil
	}
	if err != nil {
		q.backlog.Store(false)
		return nil, fmt.Errorf("batutaredis: receive: %w", q.wrapErr(err))
	}
	var out []batuta.Delivery
	for _, s := range res {
		for _, m := range s.Messages {
			if d, ok := q.deliver(ctx, m.ID, m.Values, 1); ok {
				out = append(out, d)
			}
		}
	}
	q.backlog.Store(len(out) > 0)
	if len(out) > n {
		q.keepAhead(out[n:])
		out = out[:n:n]
	}
	return out, nil
}

// aheadRoom is how many more entries may be read ahead.
func (q *Queue) aheadRoom() int {
	if q.cfg.ReadAhead <= 0 {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return max(q.cfg.ReadAhead-len(q.ahead), 0)
}

// keepAhead appends entries read ahead and makes sure the keeper, which
// extends their visibility while they wait, runs.
func (q *Queue) keepAhead(ds []batuta.Delivery) {
	now := time.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, d := range ds {
		q.ahead = append(q.ahead, aheadItem{d: d, at: now})
	}
	q.startKeeperLocked()
}

// putBack returns deliveries read for a Receive whose ctx ended meanwhile
// to the front of the read-ahead list.
func (q *Queue) putBack(ds []batuta.Delivery) {
	now := time.Now()
	items := make([]aheadItem, 0, len(ds))
	for _, d := range ds {
		items = append(items, aheadItem{d: d, at: now})
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.ahead = append(items, q.ahead...)
	q.startKeeperLocked()
}

// startKeeperLocked starts the read-ahead keeper unless it runs or the
// queue is closed. The caller holds mu.
func (q *Queue) startKeeperLocked() {
	if q.keeping || q.closed || len(q.ahead) == 0 {
		return
	}
	q.keeping = true
	q.bg.Add(1)
	go q.keeper()
}

// takeAhead returns up to n entries read ahead, oldest first. One whose
// visibility was last reset more than half the visibility timeout ago is
// extended first, and dropped if it was taken over meanwhile.
func (q *Queue) takeAhead(ctx context.Context, n int) []batuta.Delivery {
	q.mu.Lock()
	k := min(n, len(q.ahead))
	if k == 0 {
		q.mu.Unlock()
		return nil
	}
	out := make([]batuta.Delivery, k)
	var stale []bool // set when some entry waited past half the timeout
	now := time.Now()
	for i, a := range q.ahead[:k] {
		out[i] = a.d
		if now.Sub(a.at) > q.cfg.VisibilityTimeout/2 {
			if stale == nil {
				stale = make([]bool, k)
			}
			stale[i] = true
		}
	}
	rest := copy(q.ahead, q.ahead[k:])
	clear(q.ahead[rest:])
	q.ahead = q.ahead[:rest]
	q.mu.Unlock()
	if stale == nil {
		return out
	}
	kept := out[:0]
	for i, d := range out {
		if stale[i] {
			if err := q.Extend(ctx, d); errors.Is(err, batuta.ErrLeaseLost) {
				continue
			}
		}
		kept = append(kept, d)
	}
	return kept
}

// keeper extends the visibility of the entries read ahead, every third of
// the visibility timeout, while there are any, so that an entry waiting
// for a slow consumer is neither taken over nor counted as a delivery
// again. It drops the entries it finds taken over or settled.
func (q *Queue) keeper() {
	defer q.bg.Done()
	every := max(q.cfg.VisibilityTimeout/3, time.Millisecond)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-q.closing:
			return
		case <-tick.C:
		}
		now := time.Now()
		q.mu.Lock()
		if len(q.ahead) == 0 || q.closed {
			q.keeping = false
			q.mu.Unlock()
			return
		}
		var due []receipt
		for _, a := range q.ahead {
			if now.Sub(a.at) >= every {
				due = append(due, a.d.Receipt.(receipt))
			}
		}
		q.mu.Unlock()
		if len(due) == 0 {
			continue
		}
		res, err := q.extendMany(q.life, due)
		if err != nil {
			q.log.Warn("batutaredis: extending entries read ahead failed; retrying", "entries", len(due), "err", err)
			continue
		}
		q.mu.Lock()
		lost := map[receipt]bool{}
		for i, r := range due {
			if res[i] < 0 {
				lost[r] = true
				if h, ok := q.held[r.entryID]; ok && h.count == r.count {
					delete(q.held, r.entryID)
				}
			}
		}
		kept := q.ahead[:0]
		for _, a := range q.ahead {
			r := a.d.Receipt.(receipt)
			if lost[r] {
				continue
			}
			if slices.Contains(due, r) {
				a.at = now
			}
			kept = append(kept, a)
		}
		clear(q.ahead[len(kept):])
		q.ahead = kept
		q.mu.Unlock()
	}
}

// extendMany resets the visibility of several held deliveries in one
// round trip; one result per receipt, as extendScript's.
func (q *Queue) extendMany(ctx context.Context, rs []receipt) ([]int64, error) {
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	args := make([]any, 0, 2+2*len(rs))
	args = append(args, q.cfg.Group, q.cfg.Consumer)
	for _, r := range rs {
		args = append(args, r.entryID, r.count)
	}
	res, err := extendManyScript.Run(ctx, q.rdb, q.keys[:1], args...).Int64Slice()
	if err != nil {
		return nil, q.wrapErr(err)
	}
	if len(res) != len(rs) {
		return nil, fmt.Errorf("unexpected reply of %d results for %d entries", len(res), len(rs))
	}
	return res, nil
}

// deliver records an entry now held with the given delivery count and
// returns its Delivery. An entry over Config.MaxDeliveries is dead-lettered
// instead (ok false).
func (q *Queue) deliver(ctx context.Context, entryID string, values map[string]any, count int64) (batuta.Delivery, bool) {
	msg, attempts := decodeEntry(entryID, values)
	d := batuta.Delivery{
		Message: msg,
		Attempt: attempts + int(count),
		Receipt: receipt{entryID: entryID, count: count},
	}
	q.mu.Lock()
	q.held[entryID] = held{count: count, attempt: d.Attempt}
	q.mu.Unlock()
	if q.cfg.MaxDeliveries > 0 && d.Attempt > q.cfg.MaxDeliveries {
		reason := fmt.Sprintf("delivered %d times, over MaxDeliveries %d", d.Attempt, q.cfg.MaxDeliveries)
		if err := q.DeadLetter(ctx, d, reason); err != nil && !errors.Is(err, batuta.ErrLeaseLost) {
			q.park(ctx, d, err)
		}
		return d, false
	}
	return d, true
}

// park keeps d, whose move to the dead-letter stream failed with dlErr,
// in the delayed set for DeadLetterParkDelay (its attempts kept), so the
// MaxDeliveries backstop tries the move once per DeadLetterParkDelay
// rather than after every visibility timeout. If even that fails, the
// entry stays pending and comes back after the visibility timeout.
func (q *Queue) park(ctx context.Context, d batuta.Delivery, dlErr error) {
	r := d.Receipt.(receipt)
	if err := q.requeue(ctx, r, d.Attempt, q.cfg.DeadLetterParkDelay); err != nil {
		if !errors.Is(err, batuta.ErrLeaseLost) {
			q.log.Warn("batutaredis: dead-letter failed and so did parking the entry; it stays pending and is retried after the visibility timeout",
				"id", d.ID, "entry", r.entryID, "attempt", d.Attempt, "err", dlErr, "park_err", err)
		}
		return
	}
	q.log.Error("batutaredis: dead-letter failed; entry parked in the delayed set, the move is retried when it comes back",
		"id", d.ID, "entry", r.entryID, "attempt", d.Attempt, "err", dlErr,
		"parked_for", q.cfg.DeadLetterParkDelay, "dead_letter_stream", q.cfg.DeadLetterStream)
}

// housekeep runs the periodic work that is due: moving due delayed entries
// into the stream and taking over idle deliveries, which it returns (up to
// n). It also returns how long until the next pass is due.
func (q *Queue) housekeep(ctx context.Context, n int) ([]batuta.Delivery, time.Duration, error) {
	if !q.hk.TryLock() {
		return nil, q.cfg.ClaimInterval, nil
	}
	defer q.hk.Unlock()
	now := time.Now()
	if !now.Before(q.nextPromote) {
		wait, err := q.promote(ctx)
		if err != nil {
			return nil, 0, err
		}
		q.nextPromote = now.Add(q.cfg.ClaimInterval)
		if wait >= 0 && now.Add(wait).Before(q.nextPromote) {
			q.nextPromote = now.Add(wait)
		}
	}
	var ds []batuta.Delivery
	if !now.Before(q.nextClaim) {
		var err error
		ds, err = q.claim(ctx, n)
		if err != nil {
			return nil, 0, err
		}
	}
	next := min(q.nextClaim.Sub(now), q.nextPromote.Sub(now))
	return ds, next, nil
}

// claim takes over up to n deliveries idle past the visibility timeout.
// The next pass is due after ClaimInterval, or at once if this one was
// full (more may be waiting).
func (q *Queue) claim(ctx context.Context, n int) ([]batuta.Delivery, error) {
	res, err := claimScript.Run(ctx, q.rdb, q.keys[:1],
		q.cfg.Group, q.cfg.Consumer, q.cfg.VisibilityTimeout.Milliseconds(), n).Slice()
	if err != nil {
		return nil, fmt.Errorf("batutaredis: claim idle deliveries: %w", q.wrapErr(err))
	}
	if len(res) != 2 {
		return nil, fmt.Errorf("batutaredis: claim idle deliveries: unexpected reply %v", res)
	}
	entries, _ := res[0].([]any)
	counts, _ := res[1].([]any)
	if len(entries) >= n {
		q.nextClaim = time.Now()
	} else {
		q.nextClaim = time.Now().Add(q.cfg.ClaimInterval)
	}
	var out []batuta.Delivery
	for i, e := range entries {
		pair, _ := e.([]any)
		if len(pair) != 2 || i >= len(counts) {
			continue
		}
		id, _ := pair[0].(string)
		flat, _ := pair[1].([]any)
		count, _ := counts[i].(int64)
		values := make(map[string]any, len(flat)/2)
		for j := 0; j+1 < len(flat); j += 2 {
			k, _ := flat[j].(string)
			values[k] = flat[j+1]
		}
		if d, ok := q.deliver(ctx, id, values, max(count, 1)); ok {
			out = append(out, d)
		}
	}
	return out, nil
}

// promote moves due delayed entries into the stream and returns how long
// until the next one is due (-1: none).
func (q *Queue) promote(ctx context.Context) (time.Duration, error) {
	const batch = 100
	for {
		res, err := promoteScript.Run(ctx, q.rdb, q.keys, batch, q.cfg.MaxLen).Int64Slice()
		if err != nil {
			return 0, fmt.Errorf("batutaredis: move due delayed entries: %w", q.wrapErr(err))
		}
		if len(res) != 2 {
			return 0, fmt.Errorf("batutaredis: move due delayed entries: unexpected reply %v", res)
		}
		if res[0] < batch {
			if res[1] < 0 {
				return -1, nil
			}
			return time.Duration(res[1]) * time.Millisecond, nil
		}
	}
}

// scheduleWake makes the wake loop promote delayed entries at due, so a
// delayed nack comes back on time even while every consumer is blocked in
// a read.
func (q *Queue) scheduleWake(due time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	if !q.waking {
		q.waking = true
		q.bg.Add(1)
		go q.wakeLoop()
	}
	if q.wakeAt.IsZero() || due.Before(q.wakeAt) {
		q.wakeAt = due
		select {
		case q.wakeCh <- struct{}{}:
		default:
		}
	}
}

func (q *Queue) wakeLoop() {
	defer q.bg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		q.mu.Lock()
		at := q.wakeAt
		q.mu.Unlock()
		var fire <-chan time.Time
		if !at.IsZero() {
			timer.Reset(time.Until(at))
			fire = timer.C
		}
		select {
		case <-q.closing:
			return
		case <-q.wakeCh:
			continue
		case <-fire:
		}
		q.mu.Lock()
		if q.wakeAt.Equal(at) {
			q.wakeAt = time.Time{}
		}
		q.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
		wait, err := q.promote(ctx)
		cancel()
		switch {
		case err != nil:
			q.log.Warn("batutaredis: moving due delayed entries failed; retrying", "err", err)
			q.scheduleWake(time.Now().Add(q.cfg.ClaimInterval))
		case wait >= 0:
			q.scheduleWake(time.Now().Add(wait))
		}
	}
}

// Ack settles d: the entry is acknowledged (XACK) and, unless
// Config.RetainAcked, deleted. It fails with batuta.ErrLeaseLost if another
// consumer took d over after the visibility timeout and still holds it (or
// this handle took it over again: a newer delivery), and with
// batuta.ErrClosed after Close. Acking an entry that is not pending any
// more (settled already) succeeds: Ack is idempotent, so a call retried
// after a lost reply does no harm.
func (q *Queue) Ack(ctx context.Context, d batuta.Delivery) error {
	r, err := q.settling(d, "ack")
	if err != nil {
		return err
	}
	req := &ackReq{r: r, done: make(chan struct{})}
	if err := q.ackCombined(ctx, []*ackReq{req}); err != nil {
		return fmt.Errorf("batutaredis: ack %q: %w", d.ID, err)
	}
	return q.acked(d, req)
}

// AckBatch acks every delivery of ds, as Ack does, in one script call
// (one round trip) for up to 256 of them, combined with the Ack calls
// running concurrently on this handle. It returns nil when every ack
// succeeded, else one error per delivery (nil for those acked), each as
// Ack would return it. This is the adapter's batuta.AckBatcher, which the
// queue trigger uses to send the acks that are ready together.
func (q *Queue) AckBatch(ctx context.Context, ds []batuta.Delivery) []error {
	var errs []error
	fail := func(i int, err error) {
		if errs == nil {
			errs = make([]error, len(ds))
		}
		errs[i] = err
	}
	reqs := make([]*ackReq, 0, len(ds))
	idx := make([]int, 0, len(ds)) // reqs[j] acks ds[idx[j]]
	for i, d := range ds {
		r, err := q.settling(d, "ack")
		if err != nil {
			fail(i, err)
			continue
		}
		reqs = append(reqs, &ackReq{r: r, done: make(chan struct{})})
		idx = append(idx, i)
	}
	if len(reqs) == 0 {
		return errs
	}
	if err := q.ackCombined(ctx, reqs); err != nil {
		for _, i := range idx {
			fail(i, fmt.Errorf("batutaredis: ack %q: %w", ds[i].ID, err))
		}
		return errs
	}
	for j, req := range reqs {
		if err := q.acked(ds[idx[j]], req); err != nil {
			fail(idx[j], err)
		}
	}
	return errs
}

// acked reads the outcome of req, the ack of d, once it was sent.
func (q *Queue) acked(d batuta.Delivery, req *ackReq) error {
	if req.err != nil {
		return fmt.Errorf("batutaredis: ack %q: %w", d.ID, q.wrapErr(req.err))
	}
	q.forget(req.r)
	if req.res == fencedHeld {
		return fmt.Errorf("batutaredis: ack %q (attempt %d): delivery no longer held: %w", d.ID, d.Attempt, batuta.ErrLeaseLost)
	}
	return nil // settled now, or already (fencedSettled)
}

// Nack settles d for redelivery after delay (0: at once), counted as a
// delivery: the next one has Attempt d.Attempt+1. A copy of the entry is
// re-added to the stream, or to the delayed set when delay > 0, and the
// original is acked, in one atomic step. With Config.MaxDeliveries set, a
// delivery on its last allowed attempt is dead-lettered instead. Errors as
// for Ack; like Ack, a Nack of an entry settled already is a no-op.
func (q *Queue) Nack(ctx context.Context, d batuta.Delivery, delay time.Duration) error {
	r, err := q.settling(d, "nack")
	if err != nil {
		return err
	}
	if q.cfg.MaxDeliveries > 0 && d.Attempt >= q.cfg.MaxDeliveries {
		return q.DeadLetter(ctx, d, fmt.Sprintf("nacked on delivery %d of MaxDeliveries %d", d.Attempt, q.cfg.MaxDeliveries))
	}
	if err := q.requeue(ctx, r, d.Attempt, delay); err != nil {
		return fmt.Errorf("batutaredis: nack %q (attempt %d): %w", d.ID, d.Attempt, err)
	}
	return nil
}

// ackReq is one Ack waiting to be sent.
type ackReq struct {
	r    receipt
	done chan struct{}
	res  int64
	err  error
}

// maxAckBatch bounds the acks sent in one script call.
const maxAckBatch = 256

// ackFlushers is how many batches of acks may be in flight at once: an
// Ack that finds them all busy waits for one to return and rides on the
// next batch.
const ackFlushers = 1

// ackCombined sends reqs, combined with the Ack calls running
// concurrently on this handle: a caller that finds fewer than ackFlushers
// batches in flight sends every ack waiting at that moment in one script
// call (one round trip; up to maxAckBatch acks) and hands the results out.
// A lone Ack is sent at once; under load, acks that queued up while every
// slot was busy share the next batch. It returns once every request of
// reqs is done (its res or err set), or with ctx's error if ctx ends first
// (the acks may still be sent).
func (q *Queue) ackCombined(ctx context.Context, reqs []*ackReq) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	q.ackMu.Lock()
	q.acks = append(q.acks, reqs...)
	q.ackMu.Unlock()
	for _, req := range reqs {
		if err := q.ackWait(ctx, req); err != nil {
			return err
		}
	}
	return nil
}

// ackWait returns once req is done, sending batches of waiting acks
// whenever a flusher slot is free.
func (q *Queue) ackWait(ctx context.Context, req *ackReq) error {
	for {
		select {
		case <-req.done:
			return nil
		case q.ackToken <- struct{}{}:
			sent := q.flushAcks(ctx, req)
			<-q.ackToken
			if sent == 0 {
				// req is in a batch another caller has in flight.
				select {
				case <-req.done:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// flushAcks sends one batch of waiting acks and returns how many it sent.
// The caller holds a slot of ackToken.
func (q *Queue) flushAcks(ctx context.Context, own *ackReq) int {
	q.ackMu.Lock()
	n := min(len(q.acks), maxAckBatch)
	batch := make([]*ackReq, n)
	copy(batch, q.acks)
	q.acks = append(q.acks[:0], q.acks[n:]...)
	q.ackMu.Unlock()
	if n == 0 {
		return 0
	}
	if n > 1 || batch[0] != own {
		// Other callers' acks ride on this call: do not let this
		// caller's cancellation fail them.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
	}
	args := make([]any, 0, 3+2*n)
	args = append(args, q.cfg.Group, q.cfg.Consumer, q.delDel)
	for _, a := range batch {
		args = append(args, a.r.entryID, a.r.count)
	}
	res, err := ackManyScript.Run(ctx, q.rdb, q.keys[:1], args...).Int64Slice()
	if err == nil && len(res) != n {
		err = fmt.Errorf("unexpected reply of %d results for %d acks", len(res), n)
	}
	for i, a := range batch {
		if err != nil {
			a.err = err
		} else {
			a.res = res[i]
		}
		close(a.done)
	}
	return n
}

// requeue runs requeueScript for a held delivery.
func (q *Queue) requeue(ctx context.Context, r receipt, attempts int, delay time.Duration) error {
	ms := int64(0)
	if delay > 0 {
		ms = max(delay.Milliseconds(), 1)
	}
	res, err := requeueScript.Run(ctx, q.rdb, q.keys,
		q.cfg.Group, q.cfg.Consumer, r.entryID, r.count, attempts, ms, q.cfg.MaxLen, q.delDel).Int64()
	if err != nil {
		return q.wrapErr(err)
	}
	q.forget(r)
	switch res {
	case fencedHeld:
		return fmt.Errorf("delivery no longer held: %w", batuta.ErrLeaseLost)
	case 1:
		q.scheduleWake(time.Now().Add(time.Duration(ms) * time.Millisecond))
	case 2:
		q.log.Warn("batutaredis: a nacked entry had been trimmed from the stream (Config.MaxLen); it is gone", "entry", r.entryID)
	}
	return nil
}

// Extend resets the visibility timeout of d, which this handle still
// holds, without counting a delivery (XCLAIM ... JUSTID). Handlers that run
// longer than the visibility timeout call it periodically (say every third
// of it). It fails with batuta.ErrLeaseLost if d was taken over or settled.
// Extend is this adapter's implementation of the optional "extender"
// interface the queue trigger may look for:
//
//	interface{ Extend(ctx context.Context, d batuta.Delivery) error }
func (q *Queue) Extend(ctx context.Context, d batuta.Delivery) error {
	r, err := q.settling(d, "extend")
	if err != nil {
		return err
	}
	res, err := extendScript.Run(ctx, q.rdb, q.keys[:1],
		q.cfg.Group, q.cfg.Consumer, r.entryID, r.count).Int64()
	if err != nil {
		return fmt.Errorf("batutaredis: extend %q: %w", d.ID, q.wrapErr(err))
	}
	if res < 0 {
		q.forget(r)
		return fmt.Errorf("batutaredis: extend %q (attempt %d): delivery no longer held: %w", d.ID, d.Attempt, batuta.ErrLeaseLost)
	}
	return nil
}

// DeadLetter settles d by moving its message to Config.DeadLetterStream,
// with the fields "dead_reason" (reason) and "attempts" (d.Attempt) added,
// and acking it. The dead-letter entry is written first, so a failure in
// between leaves the message in both places rather than in neither. Errors
// as for Ack.
func (q *Queue) DeadLetter(ctx context.Context, d batuta.Delivery, reason string) error {
	r, err := q.settling(d, "dead-letter")
	if err != nil {
		return err
	}
	// Refresh the claim first: it checks we still hold d, and keeps
	// another consumer from taking it over while we move it.
	if err := q.Extend(ctx, d); err != nil {
		return err
	}
	vals, err := encodeMessage(d.Message, d.Attempt)
	if err != nil {
		return fmt.Errorf("batutaredis: dead-letter %q: %w", d.ID, err)
	}
	reason = cutReason(reason)
	vals = append(vals, fieldReason, reason)
	args := q.xaddArgs(q.cfg.DeadLetterStream, vals)
	args.NoMkStream = false
	if err := q.rdb.XAdd(ctx, args).Err(); err != nil {
		return fmt.Errorf("batutaredis: dead-letter %q to %q: %w", d.ID, q.cfg.DeadLetterStream, q.wrapErr(err))
	}
	q.log.Warn("batutaredis: message dead-lettered", "id", d.ID, "attempt", d.Attempt,
		"reason", reason, "dead_letter_stream", q.cfg.DeadLetterStream)
	res, err := ackScript.Run(ctx, q.rdb, q.keys[:1],
		q.cfg.Group, q.cfg.Consumer, r.entryID, r.count, q.delDel).Int64()
	if err != nil {
		return fmt.Errorf("batutaredis: dead-letter %q: ack the original: %w", d.ID, q.wrapErr(err))
	}
	q.forget(r)
	if res == fencedHeld {
		return fmt.Errorf("batutaredis: dead-letter %q: delivery no longer held: %w", d.ID, batuta.ErrLeaseLost)
	}
	return nil
}

// cutReason bounds a dead-letter reason (it is logged and stored with the
// entry), marking the cut.
func cutReason(s string) string {
	if len(s) <= batuta.MaxDeadLetterErrorBytes {
		return s
	}
	return strings.ToValidUTF8(s[:batuta.MaxDeadLetterErrorBytes-3], "") + "..."
}

// settling checks d's receipt and that the queue is open.
func (q *Queue) settling(d batuta.Delivery, op string) (receipt, error) {
	r, ok := d.Receipt.(receipt)
	if !ok || r.entryID == "" {
		return receipt{}, fmt.Errorf("batutaredis: %s %q: not a delivery of a batutaredis queue (receipt %T)", op, d.ID, d.Receipt)
	}
	if q.isClosed() {
		return receipt{}, fmt.Errorf("batutaredis: %s %q: %w", op, d.ID, batuta.ErrClosed)
	}
	return r, nil
}

// forget drops r from the held set if it is the delivery recorded there.
func (q *Queue) forget(r receipt) {
	q.mu.Lock()
	if h, ok := q.held[r.entryID]; ok && h.count == r.count {
		delete(q.held, r.entryID)
	}
	q.mu.Unlock()
}

// Close closes the handle: pending Receive calls return batuta.ErrClosed
// at once, then Close waits for an outstanding read to finish (at most
// Config.BlockTimeout) and hands every delivery this handle still holds back
// to the stream, counted as a delivery (re-added at once, as a Nack with no
// delay would), so other consumers get them without waiting for the
// visibility timeout. Later Ack, Nack and Extend calls fail with
// batuta.ErrClosed. The consumer is removed from the group if it holds
// nothing any more. A client passed to New stays open; one made by Open is
// closed. The stream and group stay. A second Close returns nil.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	close(q.closing)
	q.endLife()
	q.mu.Unlock()
	q.stash.Close()
	q.bg.Wait()

	q.mu.Lock()
	holding := q.held
	q.held = map[string]held{}
	// Entries read ahead were never handed out: they go back without
	// counting a delivery.
	unseen := make(map[receipt]bool, len(q.ahead))
	for _, a := range q.ahead {
		unseen[a.d.Receipt.(receipt)] = true
	}
	q.ahead = nil
	q.mu.Unlock()
	q.ackMu.Lock()
	q.acks = nil // only acks whose callers gave up (ctx) can be left
	q.ackMu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	var errs []error
	for id, h := range holding {
		r := receipt{entryID: id, count: h.count}
		attempts := h.attempt
		if unseen[r] {
			attempts--
		}
		err := q.requeue(ctx, r, attempts, 0)
		if err != nil && !errors.Is(err, batuta.ErrLeaseLost) {
			errs = append(errs, fmt.Errorf("batutaredis: close: hand back entry %s: %w", id, err))
		}
	}
	if len(errs) == 0 {
		// Remove this consumer from the group if nothing is pending for it
		// (a crashed handle's consumer, by contrast, stays until its
		// entries are claimed).
		pending, err := q.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: q.cfg.Stream, Group: q.cfg.Group, Start: "-", End: "+", Count: 1, Consumer: q.cfg.Consumer,
		}).Result()
		if err == nil && len(pending) == 0 {
			_ = q.rdb.XGroupDelConsumer(ctx, q.cfg.Stream, q.cfg.Group, q.cfg.Consumer).Err()
		}
	} else {
		q.log.Warn("batutaredis: close could not hand back every delivery; they come back after the visibility timeout",
			"err", errors.Join(errs...))
	}
	if q.owned {
		if err := q.rdb.Close(); err != nil {
			errs = append(errs, fmt.Errorf("batutaredis: close client: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (q *Queue) isClosed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}

// wrapErr maps Redis errors onto the adapter's sentinels.
func (q *Queue) wrapErr(err error) error {
	if redis.HasErrorPrefix(err, "NOGROUP") {
		return fmt.Errorf("stream %q or its group %q is missing (deleted?): %w: %w", q.cfg.Stream, q.cfg.Group, ErrStreamNotFound, err)
	}
	if errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("%w: %w", batuta.ErrClosed, err)
	}
	return err
}

func isNoSuchKey(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such key")
}

// String describes the queue for logs.
func (q *Queue) String() string {
	return "batutaredis.Queue(" + strconv.Quote(q.cfg.Stream) + ", group " + strconv.Quote(q.cfg.Group) + ")"
}

var _ batuta.Extender = (*Queue)(nil)
