// Outbox conformance suite.
//
// TestOutbox checks a database adapter's transactional outbox end to end:
// Emit, capture triggers and the outbox Trigger together, against the real
// database. The adapters run it unchanged from their own tests, each with a
// fixture over its driver (this package imports none):
//
//	func TestOutboxConformance(t *testing.T) {
//		batutatest.TestOutbox(t, batutatest.OutboxSuite{
//			New:            func(t *testing.T) batutatest.OutboxFixture { return newOutboxFixture(t) },
//			MetaDeliveries: MetaDeliveries,
//		})
//	}
//
// It checks that:
//   - Emit writes an event inside the caller's transaction: delivered with
//     its fields after commit, never after rollback; an event without an ID
//     or Source gets the outbox-derived ones; installing twice is a no-op;
//   - an emitted event keeps its fields and its metadata but for the
//     adapter's keys, which the outbox sets (a spoofed row id is
//     overwritten), and is no row change (DecodeChange, batuta.ChangeFrom
//     and batuta.QueueMessageFrom refuse it);
//   - Emit refuses, before writing, data over the outbox's cap
//     (batuta.ErrPayloadTooLarge) and NUL bytes or invalid UTF-8 in text
//     fields and metadata (batuta.ErrInvalidPayload);
//   - rows written by concurrent writers, some of whose transactions roll
//     back, give exactly one accepted event per committed row and none for
//     the rolled-back ones, in front of a non-durable store;
//   - a backlog (captured rows and emitted events) written before the
//     Trigger started is delivered whole and the outbox drained;
//   - two consumers on one outbox, whose runs outlast the lease, never fire
//     one row twice (the heartbeat keeps the rows);
//   - a fire refused with batuta.ErrBusy is retried, and a row whose event
//     can never be accepted (batuta.ErrPayloadTooLarge) is kept and marked
//     dead with the reason, while the others are delivered;
//   - the Trigger is a batuta.DeadLetterBox: its dead rows are listed
//     (paginated, with their reason, last error and event), redriven
//     (delivered again once the cause is gone) and deleted, each
//     operation idempotent, a malformed ID refused with
//     batuta.ErrBadDeadLetterID;
//   - Run without RunTracking delivers and deletes; it refuses an outbox
//     that is not installed; Wake (when the Trigger has it) cuts the idle
//     poll short;
//   - while the store is down nothing is accepted or deleted, and on
//     shutdown the consumer hands its rows back (none stays claimed);
//   - the outbox Trigger keeps the delivery contract of every Trigger
//     (TestTrigger, over events written with Emit);
//   - captured changes and an emitted event, through a real Orchestrator,
//     each become one run whose task sees the change; with the in-memory
//     store the rows stay in the outbox until the runs finished, with a
//     durable store (OutboxSuite.DurableStore) they go once the runs are
//     recorded.
//
// Subtests run in parallel, each on its own fixture. Waits are bounded by
// OutboxSuite.Timeout; there are no sleeps.
package batutatest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// OutboxFixture is one fresh user table with an outbox next to it, as an
// adapter's test sets them up: nothing installed yet, both dropped (with
// any capture triggers) when the test ends. The user table has an integer
// key id assigned by the database, a nullable text column name, and
// whatever else the adapter likes (with defaults). Methods are called from
// the test goroutine and from writer goroutines, concurrently.
type OutboxFixture interface {
	// InstallOutbox installs the outbox (the adapter's InstallOutbox).
	InstallOutbox(ctx context.Context) error
	// InstallCapture installs the outbox and the capture triggers of the
	// user table into it, for insert, update and delete.
	InstallCapture(ctx context.Context) error
	// Insert inserts one row per name into the user table in one
	// transaction, committed or rolled back.
	Insert(ctx context.Context, names []string, rollback bool) error
	// Emit writes evs into the outbox with the adapter's Emit in one
	// transaction, committed or rolled back.
	Emit(ctx context.Context, rollback bool, evs ...batuta.Event) error
	// EmitCapped calls the adapter's Emit for ev on the outbox with its
	// MaxEmitBytes set to maxBytes, in a transaction it then rolls back,
	// and returns Emit's error.
	EmitCapped(ctx context.Context, maxBytes int, ev batuta.Event) error
	// Count returns how many rows the outbox holds, how many of them are
	// claimed (claimed_by set), and the last_error of each dead one.
	Count(ctx context.Context) (rows, claimed int, deadErrors []string, err error)
	// Derived returns the Event.ID prefix of an event the outbox derives
	// from a row id (e.g. "mysql/test.outbox/", followed by the row id),
	// and the Source an emitted event without one gets.
	Derived() (idPrefix, source string)
	// RowIDs returns the outbox's row ids in order.
	RowIDs(ctx context.Context) ([]int64, error)
	// Trigger returns a new consumer of the outbox. With Separate, it uses
	// connections of its own, as another process would.
	Trigger(t *testing.T, o OutboxTriggerOptions) batuta.TrackingTrigger
}

// OutboxTriggerOptions are the settings the suite gives a Trigger; a zero
// field means the adapter's default.
type OutboxTriggerOptions struct {
	BatchSize  int
	Lease      time.Duration
	MaxBackoff time.Duration
	// Separate asks for connections of the Trigger's own.
	Separate bool
	// FastPoll asks a polling Trigger to poll every 5 to 50 ms.
	FastPoll bool
}

// OutboxSuite drives TestOutbox.
type OutboxSuite struct {
	// New returns a fresh fixture; it may call t.Skip (database
	// unreachable) or t.Fatal. Required.
	New func(t *testing.T) OutboxFixture
	// MetaDeliveries and MetaOutboxID are the adapter's metadata keys for
	// the delivery count and the row id. Required.
	MetaDeliveries, MetaOutboxID string
	// DecodeChange is the adapter's DecodeChange (into a map); it must
	// refuse an emitted event with batuta.ErrWrongSource. Required.
	DecodeChange func(ev batuta.Event) error
	// TimePrecision is how precisely the outbox keeps Event.Time. Default
	// a microsecond.
	TimePrecision time.Duration
	// Rows is how many rows the concurrent writers write. Default 10,000.
	Rows int
	// TwoConsumerRows is how many rows the two-consumers case delivers.
	// Default 1,000.
	TwoConsumerRows int
	// TwoConsumerLease is the lease in the two-consumers case (runs take
	// 1.5 leases). Default 2 s.
	TwoConsumerLease time.Duration
	// Timeout bounds each wait. Default 60 s.
	Timeout time.Duration
	// DurableStore, if set, returns a durable Store next to the fixture's
	// outbox; EndToEnd then also runs with it.
	DurableStore func(t *testing.T, f OutboxFixture) batuta.Store
}

func (s OutboxSuite) withDefaults() OutboxSuite {
	if s.TimePrecision == 0 {
		s.TimePrecision = time.Microsecond
	}
	if s.Rows == 0 {
		s.Rows = 10000
	}
	if s.TwoConsumerRows == 0 {
		s.TwoConsumerRows = 1000
	}
	if s.TwoConsumerLease == 0 {
		s.TwoConsumerLease = 2 * time.Second
	}
	if s.Timeout == 0 {
		s.Timeout = 60 * time.Second
	}
	return s
}

// TestOutbox runs the Outbox conformance suite. See the comment at the top
// of this file for what it checks.
func TestOutbox(t *testing.T, s OutboxSuite) {
	t.Helper()
	if s.New == nil || s.MetaDeliveries == "" || s.MetaOutboxID == "" || s.DecodeChange == nil {
		t.Fatal("batutatest: OutboxSuite.New, MetaDeliveries, MetaOutboxID and DecodeChange are required")
	}
	s = s.withDefaults()
	tests := []struct {
		name string
		fn   func(t *testing.T, s OutboxSuite, f OutboxFixture)
	}{
		{"Emit", testOutboxEmit},
		{"EmitRefusesBadInput", testOutboxEmitRefuses},
		{"ConcurrentWritersExactlyOnce", testOutboxConcurrentWriters},
		{"BacklogDeliveredAfterStart", testOutboxBacklog},
		{"TwoConsumersNeverFireOneRowTwice", testOutboxTwoConsumers},
		{"FireErrors", testOutboxFireErrors},
		{"DeadLetterBox", testOutboxDeadLetterBox},
		{"BacklogReporter", testOutboxBacklogReporter},
		{"RunWithoutTracking", testOutboxRunWithoutTracking},
		{"StoreDownKeepsRows", testOutboxStoreDown},
		{"TriggerConformance", testOutboxTriggerConformance},
		{"EmitIsNoRowChange", testOutboxEmitIsNoRowChange},
		{"EndToEndMemoryStore", testOutboxEndToEnd},
		{"EndToEndDurableStore", testOutboxEndToEnd},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.name == "TriggerConformance" {
				tc.fn(t, s, nil) // a fixture per TestTrigger subtest
				return
			}
			if tc.name == "EndToEndDurableStore" && s.DurableStore == nil {
				t.Skip("no OutboxSuite.DurableStore")
			}
			tc.fn(t, s, s.New(t))
		})
	}
}

// testOutboxTriggerConformance runs TestTrigger on the outbox: events
// emitted with Emit, one transaction per event, the key in the JSON data
// and the event ID left empty, so the derived row ID is what TestTrigger
// checks.
func testOutboxTriggerConformance(t *testing.T, s OutboxSuite, _ OutboxFixture) {
	opts := OutboxTriggerOptions{FastPoll: true, MaxBackoff: 100 * time.Millisecond}
	TestTrigger(t, TriggerSuite{
		New: func(t *testing.T) (batuta.Trigger, TriggerSource) {
			f := s.New(t)
			must(t, f.InstallOutbox(context.Background()), "install outbox")
			return f.Trigger(t, opts), outboxSource{f}
		},
		Restart: func(t *testing.T, src TriggerSource) batuta.Trigger {
			return src.(outboxSource).f.Trigger(t, opts)
		},
	})
}

// outboxSource is the TriggerSource of an outbox fixture.
type outboxSource struct{ f OutboxFixture }

type outboxSourceData struct {
	Key string `json:"key"`
}

func (s outboxSource) Emit(ctx context.Context, key string) error {
	data, err := json.Marshal(outboxSourceData{Key: key})
	if err != nil {
		return err
	}
	return s.f.Emit(ctx, false, batuta.Event{Type: "suite.key", Data: data})
}

func (s outboxSource) Key(ev batuta.Event) string {
	var d outboxSourceData
	if json.Unmarshal(ev.Data, &d) != nil {
		return ""
	}
	return d.Key
}

// OutboxRuns is a batuta.Runs for driving an outbox Trigger in tests: it
// records what was fired, deduplicates by event ID like a Store, and
// finishes runs at once or, with Hold, when told to.
type OutboxRuns struct {
	durable bool
	// Hold keeps runs unfinished until FinishOlderThan. Set before use.
	Hold bool
	// FireErr, if set before use, is consulted before accepting an event
	// (under the recorder's lock).
	FireErr func(ev batuta.Event) error

	mu        sync.Mutex
	fires     map[string]int    // Fire calls per event ID
	byEvent   map[string]string // event ID -> run ID
	runs      map[string]*outboxRun
	accepted  []batuta.Event // one per run, in order
	totalFire int
}

type outboxRun struct {
	ev      batuta.Event
	created time.Time
	done    chan struct{}
}

var _ batuta.Runs = (*OutboxRuns)(nil)

// NewOutboxRuns returns an empty recorder; durable is what Durable reports.
func NewOutboxRuns(durable bool) *OutboxRuns {
	return &OutboxRuns{durable: durable, fires: map[string]int{}, byEvent: map[string]string{}, runs: map[string]*outboxRun{}}
}

// Workflow implements batuta.Runs.
func (f *OutboxRuns) Workflow() string { return "wf" }

// Fire implements batuta.Runs.
func (f *OutboxRuns) Fire(ctx context.Context, ev batuta.Event) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.totalFire++
	f.fires[ev.ID]++
	if f.FireErr != nil {
		if err := f.FireErr(ev); err != nil {
			return "", err
		}
	}
	if id, ok := f.byEvent[ev.ID]; ok {
		return id, nil
	}
	id := fmt.Sprintf("run-%d", len(f.runs)+1)
	r := &outboxRun{ev: ev, created: time.Now(), done: make(chan struct{})}
	if !f.Hold {
		close(r.done)
	}
	f.runs[id] = r
	f.byEvent[ev.ID] = id
	f.accepted = append(f.accepted, ev)
	return id, nil
}

// Get implements batuta.Runs.
func (f *OutboxRuns) Get(_ context.Context, id string) (*batuta.Run, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.runs[id]
	if !ok {
		return nil, batuta.ErrRunNotFound
	}
	return &batuta.Run{ID: id, Workflow: "wf", Event: r.ev}, nil
}

// Wait implements batuta.Runs.
func (f *OutboxRuns) Wait(ctx context.Context, id string) (*batuta.Run, error) {
	f.mu.Lock()
	r, ok := f.runs[id]
	f.mu.Unlock()
	if !ok {
		return nil, batuta.ErrRunNotFound
	}
	select {
	case <-r.done:
		return &batuta.Run{ID: id, Workflow: "wf", Event: r.ev, State: batuta.RunSucceeded}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Cancel implements batuta.Runs; it is not supported.
func (f *OutboxRuns) Cancel(context.Context, string) error { return errors.ErrUnsupported }

// Durable implements batuta.Runs.
func (f *OutboxRuns) Durable() bool { return f.durable }

// Clock implements batuta.Runs.
func (f *OutboxRuns) Clock() batuta.Clock { return batuta.SystemClock{} }

// LastTick implements batuta.Runs.
func (f *OutboxRuns) LastTick(context.Context, string) (time.Time, error) { return time.Time{}, nil }

// RecordTick implements batuta.Runs.
func (f *OutboxRuns) RecordTick(context.Context, string, time.Time) (bool, error) { return false, nil }

// FinishOlderThan finishes the held runs created more than d ago and
// reports how many runs are still unfinished.
func (f *OutboxRuns) FinishOlderThan(d time.Duration) (unfinished int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.runs {
		select {
		case <-r.done:
			continue
		default:
		}
		if time.Since(r.created) >= d {
			close(r.done)
		} else {
			unfinished++
		}
	}
	return unfinished
}

// Accepted returns the accepted events, one per run, in order.
func (f *OutboxRuns) Accepted() []batuta.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]batuta.Event(nil), f.accepted...)
}

// AcceptedCount returns how many events were accepted.
func (f *OutboxRuns) AcceptedCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.accepted)
}

// TotalFires returns how many times Fire was called.
func (f *OutboxRuns) TotalFires() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.totalFire
}

// MaxFires returns the event ID that Fire was called for most, and how
// many times.
func (f *OutboxRuns) MaxFires() (string, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	worst, n := "", 0
	for id, c := range f.fires {
		if c > n {
			worst, n = id, c
		}
	}
	return worst, n
}

// StartTracking runs trig.RunTracking(runs) until the returned stop is
// called (or the test ends); stop fails the test unless it returned
// context.Canceled within 30 s.
func StartTracking(t testing.TB, trig batuta.TrackingTrigger, runs batuta.Runs) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- trig.RunTracking(ctx, runs) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("RunTracking returned %v, want context.Canceled", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("trigger did not stop within 30s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// Eventually waits for cond, checked every 5 ms, up to timeout, and fails
// the test with what when it does not hold by then.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// RowChangeData decodes the Data of a captured row change (the ChangeData
// of every database adapter) with numbers as json.Number.
func RowChangeData(ev batuta.Event) (op string, newRow, oldRow map[string]any, err error) {
	var raw struct {
		Op  string          `json:"op"`
		New json.RawMessage `json:"new"`
		Old json.RawMessage `json:"old"`
	}
	if err := json.Unmarshal(ev.Data, &raw); err != nil {
		return "", nil, nil, err
	}
	dec := func(b json.RawMessage) (map[string]any, error) {
		if len(b) == 0 || string(b) == "null" {
			return nil, nil
		}
		var m map[string]any
		d := json.NewDecoder(strings.NewReader(string(b)))
		d.UseNumber()
		return m, d.Decode(&m)
	}
	if newRow, err = dec(raw.New); err != nil {
		return "", nil, nil, err
	}
	if oldRow, err = dec(raw.Old); err != nil {
		return "", nil, nil, err
	}
	return raw.Op, newRow, oldRow, nil
}

func must(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// outboxCount returns the fixture's outbox row count, failing the test on
// error.
func outboxCount(t testing.TB, f OutboxFixture) int {
	t.Helper()
	n, _, _, err := f.Count(context.Background())
	must(t, err, "count outbox rows")
	return n
}

// insertRows inserts total rows named prefix-<n> in transactions of 100.
func insertRows(t testing.TB, f OutboxFixture, prefix string, total int) {
	t.Helper()
	for done := 0; done < total; {
		n := min(100, total-done)
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("%s-%d", prefix, done+i)
		}
		must(t, f.Insert(context.Background(), names, false), "insert rows")
		done += n
	}
}

func testOutboxEmit(t *testing.T, s OutboxSuite, f OutboxFixture) {
	ctx := context.Background()
	must(t, f.InstallOutbox(ctx), "install outbox")
	must(t, f.InstallOutbox(ctx), "install outbox again (idempotent)")

	at := time.Date(2026, 1, 2, 15, 4, 5, 123456789, time.UTC).Truncate(s.TimePrecision)
	must(t, f.Emit(ctx, false, batuta.Event{
		ID: "order-7-placed", Source: "shop", Type: "order.placed", Subject: "7", Time: at,
		Data: []byte(`{"order":7}`), Metadata: map[string]string{"traceparent": "00-abc-01"},
	}, batuta.Event{Type: "order.noted"}), "emit and commit")
	must(t, f.Emit(ctx, true, batuta.Event{ID: "rolled-back", Type: "order.placed"}), "emit and roll back")

	runs := NewOutboxRuns(true)
	stop := StartTracking(t, f.Trigger(t, OutboxTriggerOptions{}), runs)
	Eventually(t, s.Timeout, "both emitted events delivered", func() bool { return runs.AcceptedCount() == 2 && outboxCount(t, f) == 0 })
	stop()

	evs := runs.Accepted()
	if len(evs) != 2 {
		t.Fatalf("accepted %d events, want 2", len(evs))
	}
	got := evs[0]
	if got.ID != "order-7-placed" || got.Source != "shop" || got.Type != "order.placed" || got.Subject != "7" {
		t.Errorf("first event %+v: ID, Source, Type or Subject not kept", got)
	}
	if !at.Equal(got.Time) {
		t.Errorf("time %v, want %v", got.Time, at)
	}
	var data any
	if err := json.Unmarshal(got.Data, &data); err != nil || fmt.Sprint(data) != "map[order:7]" {
		t.Errorf("data %s, want {\"order\":7}", got.Data)
	}
	if got.Metadata["traceparent"] != "00-abc-01" || got.Metadata[s.MetaDeliveries] != "1" {
		t.Errorf("metadata %v: traceparent lost or %s is not 1", got.Metadata, s.MetaDeliveries)
	}
	idPrefix, source := f.Derived()
	second := evs[1]
	if !regexp.MustCompile(`^` + regexp.QuoteMeta(idPrefix) + `[0-9]+$`).MatchString(second.ID) {
		t.Errorf("derived ID %q, want %s<row id>: stable per row", second.ID, idPrefix)
	}
	if second.Source != source || second.Type != "order.noted" {
		t.Errorf("second event Source %q Type %q, want %q and order.noted", second.Source, second.Type, source)
	}
	if d := time.Since(second.Time); d < -time.Minute || d > time.Minute {
		t.Errorf("second event time %v, want about now", second.Time)
	}
	for _, ev := range evs {
		if ev.ID == "rolled-back" {
			t.Error("an event emitted in a rolled-back transaction was delivered")
		}
	}
}

func testOutboxEmitRefuses(t *testing.T, _ OutboxSuite, f OutboxFixture) {
	ctx := context.Background()
	must(t, f.InstallOutbox(ctx), "install outbox")
	tests := []struct {
		name string
		ev   batuta.Event
		want error
	}{
		{"data over the cap", batuta.Event{Data: make([]byte, 17)}, batuta.ErrPayloadTooLarge},
		{"NUL in type", batuta.Event{Type: "a\x00b"}, batuta.ErrInvalidPayload},
		{"invalid UTF-8 in ID", batuta.Event{ID: "a\xffb"}, batuta.ErrInvalidPayload},
		{"invalid UTF-8 in metadata", batuta.Event{Metadata: map[string]string{"k": "\xff"}}, batuta.ErrInvalidPayload},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := f.EmitCapped(ctx, 16, tt.ev); !errors.Is(err, tt.want) {
				t.Errorf("Emit returned %v, want %v", err, tt.want)
			}
		})
	}
	if n := outboxCount(t, f); n != 0 {
		t.Errorf("%d rows written, want none", n)
	}
}

// testOutboxConcurrentWriters: s.Rows rows inserted by 8 concurrent
// writers, some in transactions that roll back, with a consumer running in
// front of a non-durable store: exactly one accepted event per committed
// row, none for rolled-back ones. Rows are known by name: a database may
// hand the ids of a rolled-back insert out again.
func testOutboxConcurrentWriters(t *testing.T, s OutboxSuite, f OutboxFixture) {
	ctx := context.Background()
	must(t, f.InstallCapture(ctx), "install capture")
	runs := NewOutboxRuns(false)
	stop := StartTracking(t, f.Trigger(t, OutboxTriggerOptions{}), runs)

	const writers = 8
	perWriter := s.Rows / writers
	var mu sync.Mutex
	committed, rolledBack := map[string]bool{}, map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for done := 0; done < perWriter; {
				n := min(1+rng.IntN(20), perWriter-done)
				rollback := rng.IntN(10) == 0
				names := make([]string, n)
				for i := range names {
					names[i] = fmt.Sprintf("w%d-%d", w, done+i)
				}
				if err := f.Insert(ctx, names, rollback); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				for _, name := range names {
					if rollback {
						rolledBack[name] = true
					} else {
						committed[name] = true
					}
				}
				mu.Unlock()
				done += n
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("writer: %v", err)
	}
	if len(rolledBack) == 0 || len(committed)+len(rolledBack) != writers*perWriter {
		t.Fatalf("%d committed and %d rolled back, want %d in all, some rolled back", len(committed), len(rolledBack), writers*perWriter)
	}
	Eventually(t, s.Timeout, "every committed row delivered and the outbox drained", func() bool {
		return runs.AcceptedCount() >= len(committed) && outboxCount(t, f) == 0
	})
	stop()

	seen := map[string]bool{}
	for _, ev := range runs.Accepted() {
		_, newRow, _, err := RowChangeData(ev)
		must(t, err, "decode row change")
		name, _ := newRow["name"].(string)
		switch {
		case rolledBack[name]:
			t.Fatalf("event for rolled-back row %q", name)
		case !committed[name]:
			t.Fatalf("event for unknown row %q", name)
		case seen[name]:
			t.Fatalf("two events for row %q", name)
		}
		seen[name] = true
	}
	if len(seen) != len(committed) {
		t.Errorf("%d rows delivered, want %d", len(seen), len(committed))
	}
	if id, n := runs.MaxFires(); n != 1 {
		t.Errorf("event %s fired %d times, want once", id, n)
	}
}

func testOutboxBacklog(t *testing.T, s OutboxSuite, f OutboxFixture) {
	ctx := context.Background()
	must(t, f.InstallCapture(ctx), "install capture")
	insertRows(t, f, "backlog", 1000)
	evs := make([]batuta.Event, 100)
	for i := range evs {
		evs[i] = batuta.Event{Type: "note", Data: []byte(strconv.Itoa(i))}
	}
	must(t, f.Emit(ctx, false, evs...), "emit")
	if n := outboxCount(t, f); n != 1100 {
		t.Fatalf("outbox holds %d rows, want 1100", n)
	}
	runs := NewOutboxRuns(false)
	stop := StartTracking(t, f.Trigger(t, OutboxTriggerOptions{}), runs)
	Eventually(t, s.Timeout, "whole backlog delivered", func() bool { return runs.AcceptedCount() == 1100 && outboxCount(t, f) == 0 })
	stop()
}

// testOutboxTwoConsumers runs two consumers on one outbox in front of a
// non-durable store whose runs take longer than the lease: the heartbeat
// must keep the rows, and no row may be fired by both.
func testOutboxTwoConsumers(t *testing.T, s OutboxSuite, f OutboxFixture) {
	ctx := context.Background()
	must(t, f.InstallCapture(ctx), "install capture")
	insertRows(t, f, "two", s.TwoConsumerRows)

	runs := NewOutboxRuns(false)
	runs.Hold = true
	o := OutboxTriggerOptions{Lease: s.TwoConsumerLease, BatchSize: 20}
	StartTracking(t, f.Trigger(t, o), runs)
	o.Separate = true
	StartTracking(t, f.Trigger(t, o), runs)
	// Runs finish 1.5 leases after they were started.
	Eventually(t, s.Timeout, "all rows delivered once their runs finished", func() bool {
		unfinished := runs.FinishOlderThan(s.TwoConsumerLease * 3 / 2)
		return runs.AcceptedCount() == s.TwoConsumerRows && unfinished == 0 && outboxCount(t, f) == 0
	})
	if id, n := runs.MaxFires(); n != 1 {
		t.Errorf("event %s fired %d times, want once", id, n)
	}
}

func testOutboxFireErrors(t *testing.T, s OutboxSuite, f OutboxFixture) {
	ctx := context.Background()
	must(t, f.InstallCapture(ctx), "install capture")
	insertRows(t, f, "fire", 50)
	ids, err := f.RowIDs(ctx)
	must(t, err, "row ids")
	idPrefix, _ := f.Derived()
	poison := idPrefix + strconv.FormatInt(ids[7], 10) // the 8th row

	runs := NewOutboxRuns(true)
	busy := map[string]bool{}
	runs.FireErr = func(ev batuta.Event) error {
		if ev.ID == poison {
			return &batuta.PayloadTooLargeError{What: "event data", Size: 10, Limit: 1}
		}
		if !busy[ev.ID] { // every event is refused once
			busy[ev.ID] = true
			return batuta.ErrBusy
		}
		return nil
	}
	stop := StartTracking(t, f.Trigger(t, OutboxTriggerOptions{BatchSize: 10, MaxBackoff: 20 * time.Millisecond}), runs)
	Eventually(t, s.Timeout, "all but the poison row delivered", func() bool { return runs.AcceptedCount() == 49 && outboxCount(t, f) == 1 })
	stop()

	_, _, dead, err := f.Count(ctx)
	must(t, err, "count")
	if len(dead) != 1 || !strings.Contains(dead[0], "over the limit") {
		t.Errorf("dead rows' errors %q, want the poison row's, over the limit", dead)
	}
}

func testOutboxRunWithoutTracking(t *testing.T, s OutboxSuite, f OutboxFixture) {
	ctx := context.Background()
	trig := f.Trigger(t, OutboxTriggerOptions{})
	if err := trig.Run(ctx, func(context.Context, batuta.Event) error { return nil }); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Fatalf("Run on a missing outbox returned %v, want an error saying it is not installed", err)
	}

	must(t, f.InstallCapture(ctx), "install capture")
	insertRows(t, f, "run", 10)
	var mu sync.Mutex
	var got []string
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- trig.Run(runCtx, func(_ context.Context, ev batuta.Event) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, ev.ID)
			return nil
		})
	}()
	Eventually(t, s.Timeout, "ten events", func() bool { return count() == 10 && outboxCount(t, f) == 0 })
	insertRows(t, f, "woken", 1)
	if w, ok := trig.(interface{ Wake() }); ok {
		w.Wake() // cuts the idle poll short
	}
	Eventually(t, s.Timeout, "the next row delivered", func() bool { return count() == 11 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v, want context.Canceled", err)
	}
}

func testOutboxStoreDown(t *testing.T, s OutboxSuite, f OutboxFixture) {
	ctx := context.Background()
	must(t, f.InstallCapture(ctx), "install capture")
	insertRows(t, f, "down", 5)

	down := errors.New("store down")
	runs := NewOutboxRuns(true)
	runs.FireErr = func(batuta.Event) error { return down }
	stop := StartTracking(t, f.Trigger(t, OutboxTriggerOptions{MaxBackoff: 20 * time.Millisecond}), runs)
	Eventually(t, s.Timeout, "fire retried", func() bool { return runs.TotalFires() >= 3 })
	stop()
	rows, claimed, _, err := f.Count(ctx)
	must(t, err, "count")
	if rows != 5 || claimed != 0 {
		t.Errorf("outbox holds %d rows, %d claimed, want 5 and none claimed (handed back on shutdown)", rows, claimed)
	}
	if n := runs.AcceptedCount(); n != 0 {
		t.Errorf("%d runs accepted, want none", n)
	}
}

func testOutboxEndToEnd(t *testing.T, s OutboxSuite, f OutboxFixture) {
	ctx := context.Background()
	must(t, f.InstallCapture(ctx), "install capture")
	durable := strings.HasSuffix(t.Name(), "DurableStore")
	cfg := batuta.Config{Logger: quietLogger()}
	if durable {
		cfg.Store = s.DurableStore(t, f)
	}
	o, err := batuta.New(cfg)
	must(t, err, "new orchestrator")
	var mu sync.Mutex
	seen := map[string]int{} // event type without the table -> count
	names := map[string]bool{}
	release := make(chan struct{})
	must(t, o.Register(&batuta.Workflow{Name: "on-change", Tasks: []batuta.Task{{
		Name: "record",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			<-release // hold every run until the test saw the rows in the outbox
			ev := in.Event()
			mu.Lock()
			defer mu.Unlock()
			if ev.Type == "placed" {
				seen["placed"]++
				return nil, nil
			}
			op, newRow, _, err := RowChangeData(ev)
			if err != nil {
				return nil, err
			}
			seen[op]++
			name, _ := newRow["name"].(string)
			names[name] = true
			return nil, nil
		},
	}}}), "register")
	trig := f.Trigger(t, OutboxTriggerOptions{})
	must(t, o.Bind("on-change", trig), "bind")
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("orchestrator Run: %v", err)
		}
	}()

	must(t, f.Insert(ctx, []string{"a", "b", "c"}, false), "insert")
	must(t, f.Emit(ctx, false, batuta.Event{ID: "order-1", Type: "placed"}), "emit")
	if w, ok := trig.(interface{ Wake() }); ok {
		w.Wake()
	}
	Eventually(t, s.Timeout, "four runs started", func() bool {
		runs, err := o.ListRuns(ctx, batuta.RunFilter{Workflow: "on-change"})
		return err == nil && len(runs) == 4
	})
	if durable {
		Eventually(t, s.Timeout, "rows deleted once the runs were recorded", func() bool { return outboxCount(t, f) == 0 })
	} else if n := outboxCount(t, f); n != 4 {
		t.Fatalf("outbox holds %d rows while the runs are unfinished, want 4 (the store is in memory)", n)
	}
	close(release)
	Eventually(t, s.Timeout, "rows deleted and the tasks ran", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return outboxCount(t, f) == 0 && seen["insert"] == 3 && seen["placed"] == 1
	})
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || fmt.Sprint(names) != "map[a:true b:true c:true]" {
		t.Errorf("tasks saw %v with names %v, want 3 inserts (a, b, c) and 1 placed", seen, names)
	}
}

func testOutboxEmitIsNoRowChange(t *testing.T, s OutboxSuite, f OutboxFixture) {
	ctx := context.Background()
	must(t, f.InstallOutbox(ctx), "install outbox")
	must(t, f.Emit(ctx, false, batuta.Event{ID: "order-7", Source: "shop", Type: "order.placed", Subject: "7",
		Data: []byte(`{"op":"insert","table":"order"}`), Metadata: map[string]string{"k": "v", s.MetaOutboxID: "spoof"}},
		batuta.Event{Type: "order.noted"}), "emit")
	runs := NewOutboxRuns(true)
	StartTracking(t, f.Trigger(t, OutboxTriggerOptions{}), runs)
	Eventually(t, s.Timeout, "two events", func() bool { return runs.AcceptedCount() == 2 })
	_, source := f.Derived()
	for _, ev := range runs.Accepted() {
		if id := ev.Metadata[s.MetaOutboxID]; id == "" || id == "spoof" || ev.Metadata[s.MetaDeliveries] != "1" {
			t.Errorf("event %s metadata %v: want the outbox's row id (not spoofed) and 1 delivery", ev.ID, ev.Metadata)
		}
		if ev.ID == "order-7" {
			if ev.Source != "shop" || ev.Type != "order.placed" || ev.Subject != "7" || ev.Metadata["k"] != "v" {
				t.Errorf("emitted event %+v lost its own fields", ev)
			}
		} else if ev.Source != source {
			t.Errorf("emitted event Source %q, want %q", ev.Source, source)
		}
		if err := s.DecodeChange(ev); !errors.Is(err, batuta.ErrWrongSource) {
			t.Errorf("DecodeChange of an emitted event: %v, want batuta.ErrWrongSource", err)
		}
		if _, err := batuta.ChangeFrom[map[string]any](ev); !errors.Is(err, batuta.ErrWrongSource) {
			t.Errorf("batuta.ChangeFrom of an emitted event: %v, want batuta.ErrWrongSource", err)
		}
		if _, err := batuta.QueueMessageFrom(ev); !errors.Is(err, batuta.ErrWrongSource) {
			t.Errorf("batuta.QueueMessageFrom of an emitted event: %v, want batuta.ErrWrongSource", err)
		}
	}
}

func testOutboxDeadLetterBox(t *testing.T, s OutboxSuite, f OutboxFixture) {
	ctx := context.Background()
	must(t, f.InstallCapture(ctx), "install capture")
	insertRows(t, f, "dead", 5)
	ids, err := f.RowIDs(ctx)
	must(t, err, "row ids")
	idPrefix, _ := f.Derived()
	poison := map[string]bool{idPrefix + strconv.FormatInt(ids[1], 10): true, idPrefix + strconv.FormatInt(ids[3], 10): true}
	var fixed sync.Map // event ID -> true once its cause is gone
	runs := NewOutboxRuns(true)
	runs.FireErr = func(ev batuta.Event) error {
		if _, ok := fixed.Load(ev.ID); poison[ev.ID] && !ok {
			return &batuta.PayloadTooLargeError{What: "event data", Size: 10, Limit: 1}
		}
		return nil
	}
	trig := f.Trigger(t, OutboxTriggerOptions{FastPoll: true})
	box, ok := trig.(batuta.DeadLetterBox)
	if !ok {
		t.Fatalf("%T is not a batuta.DeadLetterBox", trig)
	}
	if box.DeadLetterSource() == "" {
		t.Error("DeadLetterSource is empty")
	}
	StartTracking(t, trig, runs)
	Eventually(t, s.Timeout, "three rows delivered, two dead", func() bool { return runs.AcceptedCount() == 3 && outboxCount(t, f) == 2 })

	items, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{})
	must(t, err, "DeadLetters")
	want := []string{strconv.FormatInt(ids[1], 10), strconv.FormatInt(ids[3], 10)}
	if len(items) != 2 || items[0].ID != want[0] || items[1].ID != want[1] {
		t.Fatalf("dead letters %+v, want rows %v", items, want)
	}
	for _, it := range items {
		if !poison[it.Event.ID] || it.Reason != batuta.DeadLetterPermanent || !strings.Contains(it.Error, "over the limit") ||
			it.Attempts < 1 || it.Time.IsZero() || len(it.Event.Data) == 0 {
			t.Errorf("dead letter %s: event %q, reason %q, error %q, attempts %d, time %v, data %q: want the poison event, permanent, over the limit",
				it.ID, it.Event.ID, it.Reason, it.Error, it.Attempts, it.Time, it.Event.Data)
		}
	}
	// Pages.
	p1, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{Limit: 1})
	must(t, err, "DeadLetters page 1")
	p2, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{Limit: 1, After: want[0]})
	must(t, err, "DeadLetters page 2")
	p3, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{Limit: 1, After: want[1]})
	must(t, err, "DeadLetters page 3")
	if len(p1) != 1 || p1[0].ID != want[0] || len(p2) != 1 || p2[0].ID != want[1] || len(p3) != 0 {
		t.Errorf("pages %v %v %v, want [%s] [%s] []", p1, p2, p3, want[0], want[1])
	}
	if _, err := box.Redrive(ctx, "row-1"); !errors.Is(err, batuta.ErrBadDeadLetterID) {
		t.Errorf("Redrive of a malformed ID: %v, want ErrBadDeadLetterID", err)
	}
	if _, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{After: "x"}); !errors.Is(err, batuta.ErrBadDeadLetterID) {
		t.Errorf("DeadLetters after a malformed ID: %v, want ErrBadDeadLetterID", err)
	}

	// Redrive the first once its cause is gone: delivered; twice: nothing.
	fixed.Store(items[0].Event.ID, true)
	n, err := box.Redrive(ctx, want[0], want[0])
	must(t, err, "Redrive")
	if n != 1 {
		t.Errorf("Redrive redrove %d rows, want 1", n)
	}
	Eventually(t, s.Timeout, "the redriven row delivered", func() bool { return runs.AcceptedCount() == 4 && outboxCount(t, f) == 1 })
	if n, err := box.Redrive(ctx, want[0]); err != nil || n != 0 {
		t.Errorf("second Redrive: %d, %v; want 0, nil", n, err)
	}
	// Delete the second; twice: nothing; redriving it then: nothing.
	if n, err := box.Delete(ctx, want[1]); err != nil || n != 1 {
		t.Errorf("Delete: %d, %v; want 1, nil", n, err)
	}
	for _, op := range []func(context.Context, ...string) (int, error){box.Delete, box.Redrive} {
		if n, err := op(ctx, want[1]); err != nil || n != 0 {
			t.Errorf("Delete or Redrive of a deleted row: %d, %v; want 0, nil", n, err)
		}
	}
	if n := outboxCount(t, f); n != 0 {
		t.Errorf("%d rows left, want 0", n)
	}
	items, err = box.DeadLetters(ctx, batuta.DeadLetterQuery{})
	must(t, err, "DeadLetters")
	if len(items) != 0 {
		t.Errorf("dead letters left: %v", items)
	}
}

// testOutboxBacklogReporter: the Trigger tells its backlog: rows not
// delivered as Pending, rows leased by a consumer (runs not finished) as
// InFlight, the created_at of the oldest as Oldest; nothing once they are
// delivered.
func testOutboxBacklogReporter(t *testing.T, s OutboxSuite, f OutboxFixture) {
	ctx := context.Background()
	must(t, f.InstallCapture(ctx), "install capture")
	trig := f.Trigger(t, OutboxTriggerOptions{FastPoll: true})
	r, ok := trig.(batuta.BacklogReporter)
	if !ok {
		t.Fatalf("%T is not a batuta.BacklogReporter", trig)
	}
	bl, err := r.Backlog(ctx)
	must(t, err, "Backlog of an empty outbox")
	if bl != (batuta.Backlog{OldestKnown: true}) {
		t.Fatalf("Backlog of an empty outbox: %+v, want nothing", bl)
	}
	before := time.Now().Add(-2 * time.Second) // the database's clock may differ a little
	insertRows(t, f, "backlog", 4)
	after := time.Now().Add(2 * time.Second)
	bl, err = r.Backlog(ctx)
	must(t, err, "Backlog")
	if bl.Pending != 4 || bl.InFlight != 0 || !bl.OldestKnown || bl.Oldest.Before(before) || bl.Oldest.After(after) {
		t.Fatalf("Backlog of 4 new rows: %+v, want 4 pending, none in flight, oldest between %v and %v", bl, before, after)
	}
	oldest := bl.Oldest

	runs := NewOutboxRuns(false)
	runs.Hold = true // not durable: the rows stay leased until their runs finish
	StartTracking(t, trig, runs)
	Eventually(t, s.Timeout, "4 rows fired", func() bool { return runs.AcceptedCount() == 4 })
	Eventually(t, s.Timeout, "4 rows in flight", func() bool {
		bl, err = r.Backlog(ctx)
		must(t, err, "Backlog")
		return bl.InFlight == 4
	})
	if bl.Pending != 0 || !bl.Oldest.Equal(oldest) {
		t.Errorf("Backlog with 4 rows in flight: %+v, want none pending and the oldest still %v", bl, oldest)
	}
	runs.FinishOlderThan(0)
	Eventually(t, s.Timeout, "the backlog empty once the runs finished", func() bool {
		bl, err = r.Backlog(ctx)
		must(t, err, "Backlog")
		return bl == batuta.Backlog{OldestKnown: true}
	})
}
