package outboxloop

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rowState is where a fake outbox row stands.
type rowState int

const (
	free rowState = iota
	claimed
	dead
	deleted
)

// fakeDriver is an in-memory outbox: rows keyed by id, claimed by one
// consumer at a time. Errors can be injected per operation.
type fakeDriver struct {
	mu       sync.Mutex
	rows     map[int64]rowState
	bad      map[int64]error // Row.Err for these ids
	renewed  map[int64]int   // lease renewals per row
	failNext map[string]int  // operation -> how many calls fail
	claims   int
}

func newFakeDriver(ids ...int64) *fakeDriver {
	d := &fakeDriver{rows: map[int64]rowState{}, bad: map[int64]error{}, renewed: map[int64]int{}, failNext: map[string]int{}}
	d.add(ids...)
	return d
}

func (d *fakeDriver) add(ids ...int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, id := range ids {
		d.rows[id] = free
	}
}

var errInjected = errors.New("injected failure")

// fail makes the next n calls of op fail; the caller holds d.mu.
func (d *fakeDriver) fail(op string) bool {
	if d.failNext[op] > 0 {
		d.failNext[op]--
		return true
	}
	return false
}

func (d *fakeDriver) Claim(_ context.Context, n int) ([]Row[int64], error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.claims++
	if d.fail("claim") {
		return nil, errInjected
	}
	var ids []int64
	for id, st := range d.rows {
		if st == free {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	ids = ids[:min(n, len(ids))]
	out := make([]Row[int64], 0, len(ids))
	for _, id := range slices.Backward(ids) { // the engine sorts
		d.rows[id] = claimed
		out = append(out, Row[int64]{ID: id, Event: batuta.Event{ID: fmt.Sprintf("fake/%d", id)}, Err: d.bad[id]})
	}
	return out, nil
}

func (d *fakeDriver) set(op string, ids []int64, from, to rowState) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail(op) {
		return errInjected
	}
	for _, id := range ids {
		if d.rows[id] != from {
			return fmt.Errorf("%s: row %d is %d, not %d", op, id, d.rows[id], from)
		}
		d.rows[id] = to
	}
	return nil
}

func (d *fakeDriver) Renew(_ context.Context, ids []int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, id := range ids {
		d.renewed[id]++
	}
	return nil
}

func (d *fakeDriver) Delete(_ context.Context, ids []int64) error {
	return d.set("delete", ids, claimed, deleted)
}

func (d *fakeDriver) Release(_ context.Context, ids []int64) error {
	return d.set("release", ids, claimed, free)
}

func (d *fakeDriver) MarkDead(_ context.Context, id int64, _ error) error {
	return d.set("dead", []int64{id}, claimed, dead)
}

// in returns the ids in state st, sorted.
func (d *fakeDriver) in(st rowState) []int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []int64
	for id, s := range d.rows {
		if s == st {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// fakeRuns is a batuta.Runs whose Fire answers with the next of a script
// of errors (nil once exhausted) and whose runs finish when the test says.
type fakeRuns struct {
	durable bool

	mu       sync.Mutex
	fired    []string // event IDs, in order
	script   []error
	finished map[string]chan struct{}
}

func newFakeRuns(durable bool, script ...error) *fakeRuns {
	return &fakeRuns{durable: durable, script: script, finished: map[string]chan struct{}{}}
}

func (r *fakeRuns) Fire(_ context.Context, ev batuta.Event) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.script) > 0 {
		err := r.script[0]
		r.script = r.script[1:]
		if err != nil {
			return "", err
		}
	}
	r.fired = append(r.fired, ev.ID)
	if _, ok := r.finished[ev.ID]; !ok {
		r.finished[ev.ID] = make(chan struct{})
	}
	return ev.ID, nil
}

func (r *fakeRuns) done(runID string) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch, ok := r.finished[runID]
	if !ok {
		ch = make(chan struct{})
		r.finished[runID] = ch
	}
	return ch
}

// finish ends run runID.
func (r *fakeRuns) finish(runID string) { close(r.done(runID)) }

func (r *fakeRuns) Wait(ctx context.Context, runID string) (*batuta.Run, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-r.done(runID):
		return &batuta.Run{ID: runID}, nil
	}
}

func (r *fakeRuns) firedIDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.fired)
}

func (r *fakeRuns) Workflow() string { return "wf" }
func (r *fakeRuns) Get(context.Context, string) (*batuta.Run, error) {
	return nil, batuta.ErrRunNotFound
}
func (r *fakeRuns) Cancel(context.Context, string) error { return nil }
func (r *fakeRuns) Durable() bool                        { return r.durable }
func (r *fakeRuns) Clock() batuta.Clock                  { return batuta.SystemClock{} }
func (r *fakeRuns) LastTick(context.Context, string) (time.Time, error) {
	return time.Time{}, nil
}
func (r *fakeRuns) RecordTick(context.Context, string, time.Time) (bool, error) { return false, nil }

// start runs a consumer over d until the returned stop is called (or the
// test ends); stop returns Run's error.
func start(t *testing.T, d *fakeDriver, sink Sink, tweak func(*Config[int64])) (stop func() error) {
	t.Helper()
	cfg := Config[int64]{
		Driver: d, Sink: sink, Package: "test", Outbox: "fake",
		BatchSize: 3, MaxWaiting: 100,
		MinPollInterval: time.Millisecond, MaxPollInterval: 5 * time.Millisecond,
		Lease: time.Hour, MaxBackoff: 5 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Run(ctx, cfg) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-errc })
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func eventually(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	require.Eventually(t, cond, 10*time.Second, time.Millisecond, msg)
}

func ids(from, to int64) []int64 {
	var out []int64
	for id := from; id <= to; id++ {
		out = append(out, id)
	}
	return out
}

func eventIDs(ids ...int64) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = fmt.Sprintf("fake/%d", id)
	}
	return out
}

// TestDeleteAfterAccept: with a durable Runs (or a plain FireFunc) rows are
// fired in id order and deleted as soon as they were accepted.
func TestDeleteAfterAccept(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		sink func(*fakeRuns) Sink
	}{
		{"tracking durable", func(r *fakeRuns) Sink { return Tracking(r) }},
		{"fire func", func(r *fakeRuns) Sink {
			return Fire(func(ctx context.Context, ev batuta.Event) error { _, err := r.Fire(ctx, ev); return err })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := newFakeDriver(ids(1, 7)...)
			runs := newFakeRuns(true)
			stop := start(t, d, tc.sink(runs), nil)
			eventually(t, func() bool { return len(d.in(deleted)) == 7 }, "all rows deleted")
			require.Equal(t, eventIDs(ids(1, 7)...), runs.firedIDs())

			d.add(8) // found by polling
			eventually(t, func() bool { return len(d.in(deleted)) == 8 }, "new row deleted")
			require.ErrorIs(t, stop(), context.Canceled)
			require.Empty(t, d.in(claimed))
		})
	}
}

// TestWaitForFinish: with a non-durable Runs a row is deleted only once its
// run finished, and at most MaxWaiting rows are held meanwhile.
func TestWaitForFinish(t *testing.T) {
	t.Parallel()
	d := newFakeDriver(ids(1, 5)...)
	runs := newFakeRuns(false)
	stop := start(t, d, Tracking(runs), func(c *Config[int64]) { c.MaxWaiting = 2 })
	eventually(t, func() bool { return len(runs.firedIDs()) == 2 }, "two rows fired")
	require.Equal(t, []int64{1, 2}, d.in(claimed), "MaxWaiting bounds the rows held")
	require.Empty(t, d.in(deleted))

	runs.finish("fake/2")
	eventually(t, func() bool { return slices.Equal(d.in(deleted), []int64{2}) }, "finished run's row deleted")
	eventually(t, func() bool { return len(runs.firedIDs()) == 3 }, "room for one more")
	require.Equal(t, []int64{1, 3}, d.in(claimed))

	for _, id := range []string{"fake/1", "fake/3", "fake/4", "fake/5"} {
		runs.finish(id)
	}
	eventually(t, func() bool { return len(d.in(deleted)) == 5 }, "all rows deleted")
	require.Equal(t, eventIDs(1, 2, 3, 4, 5), runs.firedIDs())
	require.ErrorIs(t, stop(), context.Canceled)
}

// TestBusyBackoffKeepsRows: a refused fire releases the row and the rest of
// its batch, the consumer backs off and delivers them later; nothing is
// lost or deleted early.
func TestBusyBackoffKeepsRows(t *testing.T) {
	t.Parallel()
	d := newFakeDriver(ids(1, 3)...)
	runs := newFakeRuns(true, nil, batuta.ErrBusy, batuta.ErrBusy)
	stop := start(t, d, Tracking(runs), nil)
	eventually(t, func() bool { return len(d.in(deleted)) == 3 }, "all rows delivered after backing off")
	require.Equal(t, eventIDs(1, 2, 3), runs.firedIDs(), "each row accepted once, in order")
	d.mu.Lock()
	claims := d.claims
	d.mu.Unlock()
	require.GreaterOrEqual(t, claims, 3, "rows 2 and 3 were claimed again after each refusal")
	require.ErrorIs(t, stop(), context.Canceled)
}

// TestBusyRowsReleased: while fire keeps refusing, the rows stay in the
// outbox, released (not held, not deleted).
func TestBusyRowsReleased(t *testing.T) {
	t.Parallel()
	d := newFakeDriver(ids(1, 3)...)
	refuse := make(chan struct{})
	var mu sync.Mutex
	refusals := 0
	sink := Fire(func(ctx context.Context, ev batuta.Event) error {
		select {
		case <-refuse:
			return nil
		default:
		}
		mu.Lock()
		refusals++
		mu.Unlock()
		return batuta.ErrBusy
	})
	stop := start(t, d, sink, nil)
	eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return refusals >= 3 }, "fire refused several times")
	require.Empty(t, d.in(deleted))
	close(refuse)
	eventually(t, func() bool { return len(d.in(deleted)) == 3 }, "delivered once accepted")
	require.ErrorIs(t, stop(), context.Canceled)
}

// TestDeadMarking: a row whose event is too large or malformed is marked
// dead and skipped; the others are delivered.
func TestDeadMarking(t *testing.T) {
	t.Parallel()
	d := newFakeDriver(ids(1, 4)...)
	d.bad[3] = fmt.Errorf("bad metadata: %w", batuta.ErrInvalidPayload)
	runs := newFakeRuns(true, nil, batuta.ErrPayloadTooLarge) // row 2 is too large
	stop := start(t, d, Tracking(runs), nil)
	eventually(t, func() bool { return len(d.in(deleted)) == 2 }, "good rows delivered")
	require.Equal(t, []int64{1, 4}, d.in(deleted))
	require.Equal(t, []int64{2, 3}, d.in(dead))
	require.Equal(t, eventIDs(1, 4), runs.firedIDs())
	require.ErrorIs(t, stop(), context.Canceled)
}

// TestDeadMarkingFailureReleases: when marking a row dead fails, the row is
// released and tried again.
func TestDeadMarkingFailureReleases(t *testing.T) {
	t.Parallel()
	d := newFakeDriver(1)
	d.bad[1] = batuta.ErrInvalidPayload
	d.failNext["dead"] = 1
	stop := start(t, d, Fire(func(context.Context, batuta.Event) error { return nil }), nil)
	eventually(t, func() bool { return slices.Equal(d.in(dead), []int64{1}) }, "marked dead on the second try")
	require.ErrorIs(t, stop(), context.Canceled)
}

// TestLeaseRenewal: the leases of held rows are renewed every Lease/3 while
// their runs are waited for; released rows are not.
func TestLeaseRenewal(t *testing.T) {
	t.Parallel()
	d := newFakeDriver(1, 2)
	runs := newFakeRuns(false)
	stop := start(t, d, Tracking(runs), func(c *Config[int64]) { c.Lease = 30 * time.Millisecond })
	eventually(t, func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.renewed[1] >= 2 && d.renewed[2] >= 2
	}, "held rows renewed repeatedly")
	runs.finish("fake/1")
	runs.finish("fake/2")
	eventually(t, func() bool { return len(d.in(deleted)) == 2 }, "rows deleted")
	require.ErrorIs(t, stop(), context.Canceled)
}

// TestShutdownReleasesRows: on shutdown, rows whose runs did not finish are
// released at once and rows already delivered are deleted.
func TestShutdownReleasesRows(t *testing.T) {
	t.Parallel()
	d := newFakeDriver(ids(1, 3)...)
	runs := newFakeRuns(false)
	stop := start(t, d, Tracking(runs), nil)
	eventually(t, func() bool { return len(runs.firedIDs()) == 3 }, "all rows fired")
	runs.finish("fake/2")
	eventually(t, func() bool { return slices.Equal(d.in(deleted), []int64{2}) }, "finished row deleted")
	require.ErrorIs(t, stop(), context.Canceled)
	require.Equal(t, []int64{1, 3}, d.in(free), "unfinished rows released")
	require.Empty(t, d.in(claimed))
}

// TestDeleteFailureRetried: rows accepted while deleting them fails are
// deleted once the delete works again, not released or fired twice.
func TestDeleteFailureRetried(t *testing.T) {
	t.Parallel()
	d := newFakeDriver(1, 2)
	d.failNext["delete"] = 3
	runs := newFakeRuns(true)
	stop := start(t, d, Tracking(runs), nil)
	eventually(t, func() bool { return len(d.in(deleted)) == 2 }, "rows deleted after the failures")
	require.Equal(t, eventIDs(1, 2), runs.firedIDs())
	require.ErrorIs(t, stop(), context.Canceled)
}

// TestClaimErrorBacksOff: a failed claim is retried after a backoff.
func TestClaimErrorBacksOff(t *testing.T) {
	t.Parallel()
	d := newFakeDriver(1)
	d.failNext["claim"] = 3
	stop := start(t, d, Fire(func(context.Context, batuta.Event) error { return nil }), nil)
	eventually(t, func() bool { return slices.Equal(d.in(deleted), []int64{1}) }, "delivered after the claim recovered")
	require.ErrorIs(t, stop(), context.Canceled)
}

// TestWakeCutsPollShort: with polling practically off, a wake-up makes the
// consumer claim.
func TestWakeCutsPollShort(t *testing.T) {
	t.Parallel()
	d := newFakeDriver()
	wake := make(chan struct{}, 1)
	stop := start(t, d, Fire(func(context.Context, batuta.Event) error { return nil }), func(c *Config[int64]) {
		c.MinPollInterval, c.MaxPollInterval = time.Hour, time.Hour
		c.Wake = wake
	})
	eventually(t, func() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.claims >= 1 }, "first claim")
	d.add(1)
	Signal(wake)
	eventually(t, func() bool { return slices.Equal(d.in(deleted), []int64{1}) }, "woken consumer delivers")
	require.ErrorIs(t, stop(), context.Canceled)
}

func TestInList(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ids  []uint64
		want string
	}{
		{nil, ""},
		{[]uint64{7}, "?"},
		{[]uint64{1, 2, 3}, "?, ?, ?"},
	} {
		in, args := InList(tc.ids)
		require.Equal(t, tc.want, in)
		require.Len(t, args, len(tc.ids))
		for i, id := range tc.ids {
			require.Equal(t, any(id), args[i])
		}
	}
}
