package batuta

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// BatchConfig makes the queue trigger hand messages to its workflow in
// batches, as AWS Lambda's event-source mappings do: one run per batch of
// up to Size messages, or whatever arrived within Window of the batch's
// first message. The run's event carries a Batch (decode it with
// EventData[Batch] or declare a function taking a Batch); the run reports
// the items that failed with a BatchResult output, and only those are
// redelivered. A batch whose run failed as a whole is redelivered entirely,
// and so is one whose BatchResult names an item with an empty ID or an ID
// that is not in the batch (AWS Lambda's rule: a result that cannot be
// matched to the batch is not trusted).
// Each message keeps its own delivery count: one that failed its
// MaxDeliveries-th delivery, or outlived MaxAge, goes to the dead-letter
// destination instead of another batch.
//
// Batch mode needs the trigger bound to an orchestrator (it waits for each
// batch's run to finish before acking). Keep Size times the largest message
// under the orchestrator's payload limit. A batch function should usually
// not retry by itself (RetryPolicy.MaxAttempts 1): redelivery is the retry.
type BatchConfig struct {
	// Size is the most messages per batch. 0 or 1 turns batching off.
	Size int
	// Window is how long the trigger waits, after the first message of a
	// batch arrived, for the batch to fill. 0: a batch is what one Receive
	// returns.
	Window time.Duration
	// ResultTask names the task whose output is the BatchResult. Default:
	// the run's first task (a function's handler).
	ResultTask string
}

func (c BatchConfig) withDefaults() BatchConfig { return c }

func (c BatchConfig) validate() error {
	switch {
	case c.Size < 0:
		return &ConfigError{Field: "Batch.Size", Reason: "must not be negative"}
	case c.Window < 0:
		return &ConfigError{Field: "Batch.Window", Reason: "must not be negative"}
	}
	return nil
}

// A Batch is the event data of a batch run: the messages of one batch, in
// the order they were received.
type Batch struct {
	Items []BatchItem `json:"items"`
}

// A BatchItem is one message of a batch: the event the trigger made of it
// (ID, body as Data, headers as Metadata) and its delivery count. Decode its
// data with DecodeEvent.
type BatchItem struct {
	Event
	// Attempt counts deliveries of the message, from 1.
	Attempt int `json:"attempt"`
}

// BatchResult is what a batch run returns (as the output of its result
// task) to report the items that failed. Only those are redelivered; the
// others are acked. A nil output counts as "all succeeded".
type BatchResult struct {
	Failed []BatchItemFailure `json:"failed,omitempty"`
}

// BatchItemFailure names a failed item by its event ID. An empty ID, or one
// that names no item of the batch, fails the whole batch.
type BatchItemFailure struct {
	ID    string `json:"id"`
	Error string `json:"error,omitempty"`
}

// Fail records that the item with the given ID failed with err.
func (r *BatchResult) Fail(id string, err error) {
	f := BatchItemFailure{ID: id}
	if err != nil {
		f.Error = err.Error()
	}
	r.Failed = append(r.Failed, f)
}

// DecodeEvent decodes ev.Data as JSON into a T. An empty payload decodes
// to T's zero value; malformed JSON is an error matching ErrInvalidPayload.
func DecodeEvent[T any](ev Event) (T, error) {
	var v T
	if len(ev.Data) == 0 {
		return v, nil
	}
	if err := json.Unmarshal(ev.Data, &v); err != nil {
		return v, fmt.Errorf("%w: event %q: %w", ErrInvalidPayload, ev.ID, err)
	}
	return v, nil
}

// receiveBatch receives up to Batch.Size deliveries, waiting up to
// Batch.Window after the first for the batch to fill. Once it holds
// deliveries it returns them with a nil error, whatever happens next (the
// caller settles them).
func (c *queueConsumer) receiveBatch(ctx context.Context) ([]Delivery, error) {
	size := c.cfg.Batch.Size
	ds, err := c.cfg.Queue.Receive(ctx, size)
	if err != nil || len(ds) >= size || c.cfg.Batch.Window <= 0 {
		return ds, err
	}
	wctx, cancel := context.WithCancel(ctx)
	tm := c.cfg.Clock.NewTimer(c.cfg.Batch.Window)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-tm.C():
			cancel()
		case <-wctx.Done():
		}
	}()
	defer func() {
		tm.Stop()
		cancel()
		wg.Wait()
	}()
	for len(ds) < size {
		more, err := c.cfg.Queue.Receive(wctx, size-len(ds))
		if err != nil {
			break
		}
		ds = append(ds, more...)
	}
	return ds, nil
}

// handleBatch fires one run for the deliveries, waits for it and settles
// each delivery by the run's BatchResult.
func (r *receiver) handleBatch(ctx context.Context, ds []Delivery) {
	c := r.c
	if ctx.Err() != nil {
		c.nackAll(ctx, ds, 0)
		return
	}
	items := make([]BatchItem, 0, len(ds))
	live := make([]Delivery, 0, len(ds))
	for _, d := range ds {
		ev, ok := c.prepare(ctx, d)
		if !ok {
			continue
		}
		items = append(items, BatchItem{Event: ev, Attempt: d.Attempt})
		live = append(live, d)
	}
	if len(items) == 0 {
		return
	}
	data, err := json.Marshal(Batch{Items: items})
	if err != nil {
		// Event fields are all encodable; this is a bug, not the messages'
		// fault: redeliver them.
		c.cfg.Logger.ErrorContext(ctx, "batuta: queue trigger: encoding batch", "error", err)
		c.nackAll(ctx, live, c.cfg.RetryDelay)
		return
	}
	ev := Event{
		ID:     batchID(items),
		Source: c.cfg.Source,
		Type:   BatchEventType,
		Time:   c.cfg.Clock.Now(),
		Data:   data,
	}
	runID, err := c.fire(ctx, ev)
	if err != nil {
		if errors.Is(err, ErrBusy) && ctx.Err() == nil {
			r.busy++
			delay := backoffDelay(c.cfg.BusyDelay, c.cfg.MaxRetryDelay, r.busy)
			c.nackAll(ctx, live, delay)
			c.pause(ctx, delay)
			return
		}
		for i, d := range live {
			c.failedItem(ctx, d, items[i].Event, err.Error())
		}
		return
	}
	r.busy = 0
	var keys []uint64
	if c.ext != nil {
		keys = make([]uint64, len(live))
		for i, d := range live {
			keys[i] = c.ext.add(d) // kept while the batch's run goes on
		}
	}
	run, err := c.runs.Wait(ctx, runID)
	for _, k := range keys {
		c.ext.remove(k)
	}
	if err != nil {
		c.nackAll(ctx, live, 0) // shutting down; the batch ID dedupes a redelivery of the same batch
		return
	}
	failed, whole := c.batchFailures(ctx, run, items)
	for i, d := range live {
		msg, bad := failed[items[i].ID]
		switch {
		case whole != "":
			c.failedItem(ctx, d, items[i].Event, whole)
		case bad:
			c.failedItem(ctx, d, items[i].Event, msg)
		default:
			r.acks.add(d)
		}
	}
}

// BatchEventType is the Event.Type of batch runs.
const BatchEventType = "batuta.queue.batch"

// failedItem settles a batch item that failed: nack at once on shutdown,
// dead letter if its budget is spent or it is too old, else nack with
// backoff.
func (c *queueConsumer) failedItem(ctx context.Context, d Delivery, ev Event, msg string) {
	switch {
	case ctx.Err() != nil:
		c.nack(ctx, d, 0)
	case d.Attempt >= c.cfg.MaxDeliveries:
		c.deadLetter(ctx, d, ev, DeadLetterMaxDeliveries, msg)
	case c.tooOld(d):
		c.deadLetter(ctx, d, ev, DeadLetterMaxAge, msg)
	default:
		c.nack(ctx, d, backoffDelay(c.cfg.RetryDelay, c.cfg.MaxRetryDelay, d.Attempt))
	}
}

// batchFailures reads the finished batch run: the failed item IDs with
// their errors, or a non-empty whole when the entire batch failed. As in
// AWS Lambda's partial batch response (ReportBatchItemFailures), a result
// that cannot be trusted fails the whole batch: a failure with an empty ID,
// or with an ID that names no item of the batch (a typo, an ID from another
// batch), would otherwise ack the item that really failed. A failure
// listed twice fails its item once.
func (c *queueConsumer) batchFailures(ctx context.Context, run *Run, items []BatchItem) (failed map[string]string, whole string) {
	if run.State != RunSucceeded {
		if run.Error != "" {
			return nil, fmt.Sprintf("batch run %s %s: %s", run.ID, run.State, run.Error)
		}
		return nil, fmt.Sprintf("batch run %s %s", run.ID, run.State)
	}
	var task *TaskRun
	if c.cfg.Batch.ResultTask != "" {
		task = run.Task(c.cfg.Batch.ResultTask)
	} else if len(run.Tasks) > 0 {
		task = &run.Tasks[0]
	}
	if task == nil || task.Output == nil {
		return nil, ""
	}
	var res BatchResult
	switch v := task.Output.(type) {
	case BatchResult:
		res = v
	case *BatchResult:
		if v != nil {
			res = *v
		}
	default:
		var err error
		if res, err = OutputAs[BatchResult](v); err != nil {
			c.cfg.Logger.ErrorContext(ctx, "batuta: queue trigger: batch result is not a BatchResult; redelivering the batch",
				"run", run.ID, "task", task.Name, "error", err)
			return nil, "batch result: " + err.Error()
		}
	}
	inBatch := make(map[string]bool, len(items))
	for _, it := range items {
		inBatch[it.ID] = true
	}
	failed = make(map[string]string, len(res.Failed))
	for i, f := range res.Failed {
		if f.ID == "" || !inBatch[f.ID] {
			what := "an empty item ID"
			if f.ID != "" {
				what = fmt.Sprintf("item ID %.64q, which is not in the batch", f.ID)
			}
			whole = fmt.Sprintf("invalid batch result of run %s: failure %d has %s", run.ID, i, what)
			c.cfg.Logger.ErrorContext(ctx, "batuta: queue trigger: "+whole+"; redelivering the whole batch",
				"run", run.ID, "task", task.Name)
			return nil, whole
		}
		if _, dup := failed[f.ID]; dup {
			continue // the first error reported for an item wins
		}
		msg := f.Error
		if msg == "" {
			msg = "reported failed by batch run " + run.ID
		}
		failed[f.ID] = msg
	}
	return failed, ""
}

// batchID derives a batch's event ID from its messages and their delivery
// counts: the same deliveries make the same ID (a redelivered batch finds
// its run), a retry of an item makes a new one.
func batchID(items []BatchItem) string {
	h := sha256.New()
	for _, it := range items {
		h.Write([]byte(it.ID))
		h.Write([]byte{0})
		h.Write([]byte(strconv.Itoa(it.Attempt)))
		h.Write([]byte{0})
	}
	return "batch-" + hex.EncodeToString(h.Sum(nil)[:16])
}
