package batuta_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

func TestMemoryQueueBrowseLookupRemove(t *testing.T) {
	q := newQueue(t, batuta.MemoryQueueConfig{})
	ctx := waitCtx(t)
	publishN(t, q, 5, "m")
	ds, err := q.Receive(ctx, 1) // m-0 in flight
	require.NoError(t, err)
	require.NoError(t, q.Nack(ctx, receiveWithin(t, q, 1)[0], time.Hour)) // m-1 delayed

	all, err := q.Browse(ctx, "", 10)
	require.NoError(t, err)
	require.Len(t, all, 5, "in flight and delayed messages are listed too")
	for i, m := range all {
		assert.Equal(t, "m"+string(rune('0'+i)), m.ID, "publish order")
	}
	page, err := q.Browse(ctx, all[1].Key, 2)
	require.NoError(t, err)
	require.Len(t, page, 2)
	assert.Equal(t, all[2].Key, page[0].Key)

	got, err := q.Lookup(ctx, all[4].Key, all[0].Key, "999")
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, "m0", got[0].ID)

	n, err := q.Remove(ctx, all[0].Key, all[1].Key, all[2].Key)
	require.NoError(t, err)
	assert.Equal(t, 3, n, "in flight, delayed and ready")
	assert.Equal(t, 2, q.Len())
	require.ErrorIs(t, q.Ack(ctx, ds[0]), batuta.ErrLeaseLost, "the removed in-flight delivery is gone")
	n, err = q.Remove(ctx, all[0].Key)
	require.NoError(t, err)
	assert.Zero(t, n, "idempotent")
	_, err = q.Remove(ctx, "m3")
	require.ErrorIs(t, err, batuta.ErrBadDeadLetterID)
	// The others are received as usual.
	rest := receiveWithin(t, q, 2)
	require.Len(t, rest, 2)
	assert.Equal(t, "m3", rest[0].ID)
}

func TestQueueTriggerDeadLetterBoxRedrivesAndDeletes(t *testing.T) {
	src := newQueue(t, batuta.MemoryQueueConfig{})
	dlq := newQueue(t, batuta.MemoryQueueConfig{})
	var broken atomic.Bool
	broken.Store(true)
	trig := newTrigger(t, batuta.QueueTriggerConfig{
		Queue: src, DeadLetter: batuta.DeadLetterQueue(dlq), Logger: quiet,
		Event: func(d batuta.Delivery) (batuta.Event, error) {
			if broken.Load() {
				return batuta.Event{}, errors.New("schema v3 unknown")
			}
			return batuta.DefaultQueueEvent(d, "orders"), nil
		},
	})
	var ran atomic.Int32
	o := setup(t, batuta.Config{}, &batuta.Workflow{Name: "orders", Tasks: []batuta.Task{{Name: "t", Run: func(context.Context, *batuta.Input) (any, error) {
		ran.Add(1)
		return nil, nil
	}}}})
	require.NoError(t, o.Bind("orders", trig))
	// A queue trigger without a browsable dead-letter queue has no box.
	plain := newTrigger(t, batuta.QueueTriggerConfig{Queue: src, DeadLetter: batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error { return nil })})
	_, ok := plain.DeadLetterBox()
	assert.False(t, ok)

	ctx := waitCtx(t)
	require.NoError(t, src.Publish(ctx, batuta.Message{ID: "a", Body: []byte(`{"n":1}`), Headers: map[string]string{"tenant": "x"}}))
	require.NoError(t, src.Publish(ctx, batuta.Message{ID: "b", Body: []byte(`{"n":2}`)}))
	waitBrowse(t, dlq, 2)

	boxes := o.DeadLetterBoxes()
	require.Len(t, boxes, 1)
	assert.Equal(t, "orders", boxes[0].Workflow)
	box := boxes[0].DeadLetterBox
	assert.NotEmpty(t, box.DeadLetterSource())
	items, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{})
	require.NoError(t, err)
	require.Len(t, items, 2)
	assert.Equal(t, "a", items[0].Event.ID)
	assert.Equal(t, batuta.DeadLetterMalformed, items[0].Reason)
	assert.Contains(t, items[0].Error, "schema v3 unknown")
	assert.Equal(t, map[string]string{"tenant": "x"}, items[0].Event.Metadata, "the dead-letter headers are not event metadata")
	page, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{After: items[0].ID, Limit: 5})
	require.NoError(t, err)
	require.Len(t, page, 1)
	assert.Equal(t, "b", page[0].Event.ID)

	broken.Store(false) // the consumer learnt schema v3
	n, err := box.Redrive(ctx, items[0].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	n, err = box.Redrive(ctx, items[0].ID)
	require.NoError(t, err)
	assert.Zero(t, n, "idempotent")
	runs := waitRuns(t, o, "orders", 1)
	assert.Equal(t, "a", runs[0].Event.ID)
	r, err := o.Wait(ctx, runs[0].ID)
	require.NoError(t, err)
	assert.Equal(t, batuta.RunSucceeded, r.State)
	assert.Equal(t, "x", r.Event.Metadata["tenant"])
	_, dlHeader := r.Event.Metadata[batuta.HeaderDeadLetterReason]
	assert.False(t, dlHeader, "the redriven message has no dead-letter headers")

	n, err = box.Delete(ctx, items[1].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	n, err = box.Delete(ctx, items[1].ID)
	require.NoError(t, err)
	assert.Zero(t, n, "idempotent")
	assert.Zero(t, dlq.Len())
	_, err = box.Delete(ctx, "nope")
	require.ErrorIs(t, err, batuta.ErrBadDeadLetterID)
}

func waitRuns(t *testing.T, o *batuta.Orchestrator, wf string, n int) []*batuta.Run {
	t.Helper()
	ctx := waitCtx(t)
	for {
		rs, err := o.ListRuns(ctx, batuta.RunFilter{Workflow: wf})
		require.NoError(t, err)
		if len(rs) >= n {
			return rs
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d runs of %s, want %d", len(rs), wf, n)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestMemoryQueueDeadLetterBoxConformance: the box of a queue trigger
// whose dead letters go to a MemoryQueue keeps the shared contract.
func TestMemoryQueueDeadLetterBoxConformance(t *testing.T) {
	batutatest.TestQueueDeadLetterBox(t, batutatest.DeadLetterBoxSuite{
		New: func(t *testing.T) (batuta.Queue, batuta.DeadLetterHandler) {
			return newQueue(t, batuta.MemoryQueueConfig{}), batuta.DeadLetterQueue(newQueue(t, batuta.MemoryQueueConfig{}))
		},
		BadID: "not-a-sequence",
	})
}

// TestWorkflowDeadLetterBoxRetriesRuns: a workflow whose DeadLetter is a
// DeadLetterQueue over a browsable queue has a box in DeadLetterBoxes; its
// redrive retries the failed run (which then succeeds) and removes the
// dead letter, once; delete removes one for good.
func TestWorkflowDeadLetterBoxRetriesRuns(t *testing.T) {
	dlq := newQueue(t, batuta.MemoryQueueConfig{})
	var broken atomic.Bool
	broken.Store(true)
	o := setup(t, batuta.Config{}, &batuta.Workflow{Name: "pay", DeadLetter: batuta.DeadLetterQueue(dlq),
		Tasks: []batuta.Task{{Name: "charge", Run: func(context.Context, *batuta.Input) (any, error) {
			if broken.Load() {
				return nil, batuta.Permanent(errors.New("gateway down"))
			}
			return "ok", nil
		}}}})
	ctx := waitCtx(t)
	var runIDs []string
	for _, e := range []string{"p1", "p2"} {
		id, err := o.Submit(ctx, "pay", batuta.Event{ID: e})
		require.NoError(t, err)
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunFailed, r.State)
		runIDs = append(runIDs, id)
	}
	waitBrowse(t, dlq, 2)
	var box batuta.BoundDeadLetterBox
	for _, b := range o.DeadLetterBoxes() {
		if b.Workflow == "pay" {
			box = b
		}
	}
	require.NotNil(t, box.DeadLetterBox, "the workflow's dead-letter queue is a box")
	assert.Contains(t, box.DeadLetterSource(), "pay")
	items, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{})
	require.NoError(t, err)
	require.Len(t, items, 2)
	byRun := map[string]batuta.DeadLetterItem{}
	for _, it := range items {
		assert.Equal(t, batuta.DeadLetterFailed, it.Reason)
		assert.Contains(t, it.Error, "gateway down")
		byRun[it.RunID] = it
	}
	require.Contains(t, byRun, runIDs[0])
	require.Contains(t, byRun, runIDs[1])

	broken.Store(false)
	id0 := byRun[runIDs[0]].ID
	n, err := box.Redrive(ctx, id0, id0)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	r, err := o.Wait(ctx, runIDs[0])
	require.NoError(t, err)
	assert.Equal(t, batuta.RunSucceeded, r.State, "the run was retried from its failed task")
	n, err = box.Redrive(ctx, id0)
	require.NoError(t, err)
	assert.Zero(t, n, "idempotent")

	// A dead letter whose run was retried some other way is stale: removed, not counted.
	id1 := byRun[runIDs[1]].ID
	require.NoError(t, o.Retry(ctx, runIDs[1]))
	_, err = o.Wait(ctx, runIDs[1])
	require.NoError(t, err)
	n, err = box.Redrive(ctx, id1)
	require.NoError(t, err)
	assert.Zero(t, n)
	assert.Zero(t, dlq.Len())
}
