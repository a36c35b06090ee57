// Dead-letter box conformance suite for queue triggers.
//
// TestQueueDeadLetterBox checks the batuta.DeadLetterBox of a queue
// trigger whose dead letters go to a browsable destination: a
// batuta.DeadLetterQueue over a batuta.BrowsableQueue (the memory queue,
// batutaredis, batutanats) or a batuta.DeadLetterKeeper (batutaamqp's
// Queue.DeadLetters). Every such destination runs it unchanged:
//
//	func TestDeadLetterBoxConformance(t *testing.T) {
//		batutatest.TestQueueDeadLetterBox(t, batutatest.DeadLetterBoxSuite{
//			New: func(t *testing.T) (batuta.Queue, batuta.DeadLetterHandler) {
//				src, dead := openFresh(t), openFresh(t) // unique, closed by t.Cleanup
//				return src, batuta.DeadLetterQueue(dead)
//			},
//			BadID: "not-an-id",
//		})
//	}
//
// What it requires, beyond the DeadLetterBox comments:
//   - the trigger's DeadLetterBox reports a box;
//   - a message that fails MaxDeliveries times is listed with its event
//     ID, reason (max_deliveries), the handler's error, its attempts and
//     its headers as metadata (without the dead-letter headers);
//   - the listing is oldest first and pages by After/Limit without gaps
//     or repeats;
//   - Redrive publishes a dead letter back to the source, where it is
//     fired again with its ID, data and metadata, without dead-letter
//     headers and with batuta.HeaderRedriven (even when the source
//     deduplicates publishes by message ID), and removes it from the box; redriving it again, or
//     deleting it, does nothing (0, nil); Redrive and Delete take several
//     IDs and count each dead letter once even if named twice;
//   - concurrent redrives of one dead letter redrive it once in all;
//   - a malformed ID (DeadLetterBoxSuite.BadID) fails with an error
//     matching batuta.ErrBadDeadLetterID.
//
// Subtests run in parallel, each on its own queues.
package batutatest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// DeadLetterBoxSuite drives TestQueueDeadLetterBox.
type DeadLetterBoxSuite struct {
	// New returns, for one subtest, a fresh empty source queue and the
	// dead-letter handler of a fresh empty destination that nobody else
	// uses, and registers their closing (and deletion) with t.Cleanup.
	// Required. It may call t.Skip (service unreachable).
	New func(t *testing.T) (source batuta.Queue, dead batuta.DeadLetterHandler)
	// BadID is an ID the box refuses as malformed; "" skips that check.
	BadID string
	// Timeout bounds every wait for something that should happen.
	// Default 20 s.
	Timeout time.Duration
}

// TestQueueDeadLetterBox runs the dead-letter box conformance suite.
func TestQueueDeadLetterBox(t *testing.T, s DeadLetterBoxSuite) {
	t.Helper()
	if s.New == nil {
		t.Fatal("batutatest: DeadLetterBoxSuite.New is required")
	}
	if s.Timeout <= 0 {
		s.Timeout = 20 * time.Second
	}
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, DeadLetterBoxSuite)
	}{
		{"ListRedriveDelete", testBoxListRedriveDelete},
		{"ConcurrentRedriveOnce", testBoxConcurrentRedrive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, s)
		})
	}
}

// boxRig is a running queue trigger whose handler fails while down.
type boxRig struct {
	src  batuta.Queue
	box  batuta.DeadLetterBox
	down atomic.Bool

	mu    sync.Mutex
	fired []batuta.Event
}

func (r *boxRig) firedEvents() []batuta.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.fired)
}

// startBoxRig runs a queue trigger over a fresh source whose messages fail
// once and go to the fresh dead-letter destination.
func startBoxRig(t *testing.T, s DeadLetterBoxSuite) *boxRig {
	t.Helper()
	src, dead := s.New(t)
	r := &boxRig{src: src}
	r.down.Store(true)
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: src, DeadLetter: dead, MaxDeliveries: 1, RetryDelay: time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("NewQueueTrigger: %v", err)
	}
	box, ok := trig.DeadLetterBox()
	if !ok {
		t.Fatalf("the trigger over %T with dead letters to %T has no DeadLetterBox", src, dead)
	}
	if box.DeadLetterSource() == "" {
		t.Error("DeadLetterSource is empty")
	}
	r.box = box
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- trig.Run(ctx, func(_ context.Context, ev batuta.Event) error {
			if r.down.Load() {
				return errors.New("handler down")
			}
			r.mu.Lock()
			r.fired = append(r.fired, ev)
			r.mu.Unlock()
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("trigger Run: %v", err)
		}
	})
	return r
}

// deadLetters publishes messages ids (with a header k=id) and waits until
// the box lists them all; it returns the listing.
func (r *boxRig) deadLetters(t *testing.T, s DeadLetterBoxSuite, ids ...string) []batuta.DeadLetterItem {
	t.Helper()
	ctx := context.Background()
	for _, id := range ids {
		if err := r.src.Publish(ctx, batuta.Message{ID: id, Body: []byte(`{"id":"` + id + `"}`), Headers: map[string]string{"k": id}}); err != nil {
			t.Fatalf("Publish %s: %v", id, err)
		}
	}
	var items []batuta.DeadLetterItem
	Eventually(t, s.Timeout, fmt.Sprintf("%d dead letters listed", len(ids)), func() bool {
		var err error
		items, err = r.box.DeadLetters(ctx, batuta.DeadLetterQuery{})
		if err != nil {
			t.Fatalf("DeadLetters: %v", err)
		}
		return len(items) >= len(ids)
	})
	if len(items) != len(ids) {
		t.Fatalf("%d dead letters listed, want %d: %+v", len(items), len(ids), items)
	}
	return items
}

func testBoxListRedriveDelete(t *testing.T, s DeadLetterBoxSuite) {
	ctx := context.Background()
	r := startBoxRig(t, s)
	items := r.deadLetters(t, s, "a", "b", "c")
	byEvent := map[string]batuta.DeadLetterItem{}
	seen := map[string]bool{}
	for _, it := range items {
		if seen[it.ID] {
			t.Errorf("dead letter ID %q listed twice", it.ID)
		}
		seen[it.ID] = true
		byEvent[it.Event.ID] = it
		if it.Reason != batuta.DeadLetterMaxDeliveries || it.Error != "handler down" || it.Attempts < 1 {
			t.Errorf("dead letter %s (event %s): reason %q, error %q, attempts %d; want %q, %q, >= 1",
				it.ID, it.Event.ID, it.Reason, it.Error, it.Attempts, batuta.DeadLetterMaxDeliveries, "handler down")
		}
		if want := map[string]string{"k": it.Event.ID}; !maps.Equal(it.Event.Metadata, want) {
			t.Errorf("dead letter %s: metadata %v, want %v (the dead-letter headers are not metadata)", it.ID, it.Event.Metadata, want)
		}
		if want := `{"id":"` + it.Event.ID + `"}`; string(it.Event.Data) != want {
			t.Errorf("dead letter %s: data %q, want %q", it.ID, it.Event.Data, want)
		}
	}
	if len(byEvent) != 3 || byEvent["a"].ID == "" || byEvent["b"].ID == "" || byEvent["c"].ID == "" {
		t.Fatalf("dead letters of events %v, want a, b and c", slices.Sorted(maps.Keys(byEvent)))
	}

	// Pages: one, then the next two, then nothing.
	p1, err := r.box.DeadLetters(ctx, batuta.DeadLetterQuery{Limit: 1})
	must(t, err, "DeadLetters page 1")
	if len(p1) != 1 || p1[0].ID != items[0].ID {
		t.Fatalf("page 1 %+v, want [%s]", p1, items[0].ID)
	}
	p2, err := r.box.DeadLetters(ctx, batuta.DeadLetterQuery{After: p1[0].ID, Limit: 5})
	must(t, err, "DeadLetters page 2")
	if len(p2) != 2 || p2[0].ID != items[1].ID || p2[1].ID != items[2].ID {
		t.Fatalf("page 2 %+v, want [%s %s]", p2, items[1].ID, items[2].ID)
	}
	p3, err := r.box.DeadLetters(ctx, batuta.DeadLetterQuery{After: p2[1].ID})
	must(t, err, "DeadLetters page 3")
	if len(p3) != 0 {
		t.Fatalf("page 3 %+v, want none", p3)
	}
	if s.BadID != "" {
		if _, err := r.box.Redrive(ctx, s.BadID); !errors.Is(err, batuta.ErrBadDeadLetterID) {
			t.Errorf("Redrive(%q): %v, want ErrBadDeadLetterID", s.BadID, err)
		}
		if _, err := r.box.Delete(ctx, s.BadID); !errors.Is(err, batuta.ErrBadDeadLetterID) {
			t.Errorf("Delete(%q): %v, want ErrBadDeadLetterID", s.BadID, err)
		}
	}

	// Redrive a (named twice) once the handler works: fired again, as it was.
	r.down.Store(false)
	a, b, c := byEvent["a"].ID, byEvent["b"].ID, byEvent["c"].ID
	if n, err := r.box.Redrive(ctx, a, a); err != nil || n != 1 {
		t.Fatalf("Redrive(a, a): %d, %v; want 1, nil", n, err)
	}
	Eventually(t, s.Timeout, "the redriven dead letter fired", func() bool { return len(r.firedEvents()) >= 1 })
	ev := r.firedEvents()[0]
	if ev.ID != "a" || string(ev.Data) != `{"id":"a"}` || ev.Metadata["k"] != "a" || ev.Metadata[batuta.HeaderRedriven] != a {
		t.Errorf("fired %+v, want event a with its data and metadata, and %s=%s", ev, batuta.HeaderRedriven, a)
	}
	for k := range ev.Metadata {
		if strings.HasPrefix(k, "batuta-dead-letter-") {
			t.Errorf("the redriven event carries the dead-letter header %q", k)
		}
	}
	if n, err := r.box.Redrive(ctx, a); err != nil || n != 0 {
		t.Errorf("second Redrive(a): %d, %v; want 0, nil", n, err)
	}
	if n, err := r.box.Delete(ctx, a); err != nil || n != 0 {
		t.Errorf("Delete(a) after its redrive: %d, %v; want 0, nil", n, err)
	}

	// Delete b; again: nothing; redriving it: nothing.
	if n, err := r.box.Delete(ctx, b, b); err != nil || n != 1 {
		t.Errorf("Delete(b, b): %d, %v; want 1, nil", n, err)
	}
	for name, op := range map[string]func(context.Context, ...string) (int, error){"Delete": r.box.Delete, "Redrive": r.box.Redrive} {
		if n, err := op(ctx, b); err != nil || n != 0 {
			t.Errorf("%s(b) after its deletion: %d, %v; want 0, nil", name, n, err)
		}
	}
	// Several at once: b is gone, c is redriven.
	if n, err := r.box.Redrive(ctx, b, c); err != nil || n != 1 {
		t.Errorf("Redrive(b, c): %d, %v; want 1, nil", n, err)
	}
	Eventually(t, s.Timeout, "c fired", func() bool {
		return slices.ContainsFunc(r.firedEvents(), func(e batuta.Event) bool { return e.ID == "c" })
	})
	left, err := r.box.DeadLetters(ctx, batuta.DeadLetterQuery{})
	must(t, err, "DeadLetters")
	if len(left) != 0 {
		t.Errorf("dead letters left: %+v", left)
	}
	for _, e := range r.firedEvents() {
		if e.ID == "b" {
			t.Error("the deleted dead letter b fired")
		}
	}
}

func testBoxConcurrentRedrive(t *testing.T, s DeadLetterBoxSuite) {
	ctx := context.Background()
	r := startBoxRig(t, s)
	items := r.deadLetters(t, s, "x")
	r.down.Store(false)
	const callers = 4
	var wg sync.WaitGroup
	var total atomic.Int64
	errs := make(chan error, callers)
	for range callers {
		wg.Go(func() {
			n, err := r.box.Redrive(ctx, items[0].ID)
			if err != nil {
				errs <- err
			}
			total.Add(int64(n))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent Redrive: %v", err)
	}
	if total.Load() != 1 {
		t.Errorf("%d concurrent redrives of one dead letter redrove %d in all, want 1", callers, total.Load())
	}
	Eventually(t, s.Timeout, "the redriven dead letter fired", func() bool { return len(r.firedEvents()) >= 1 })
	left, err := r.box.DeadLetters(ctx, batuta.DeadLetterQuery{})
	must(t, err, "DeadLetters")
	if len(left) != 0 {
		t.Errorf("dead letters left: %+v", left)
	}
}
