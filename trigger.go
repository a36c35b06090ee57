package batuta

import (
	"context"
	"time"
)

// An Event is what a trigger delivers: one database row change, one queue
// message, one cron tick, one HTTP call. Field names follow CloudEvents.
//
// ID is the idempotency key: within the dedupe retention of the Store, a
// second event with the same ID for the same workflow does not start a second
// run (Submit returns the existing run instead). Triggers derive IDs that are
// stable across redelivery (the outbox row, the broker message ID, the
// schedule name and tick time), so a redelivered event is deduplicated.
type Event struct {
	// ID identifies the event within its Source. If empty, Submit assigns a
	// random one (and no deduplication is possible).
	ID string `json:"id"`
	// Source names the producer, e.g. "postgres/public.orders" or "cron/daily-report".
	// The values the library's triggers set are constants (SourceHTTP,
	// SourceQueue, SourceInvoke, SourceCronPrefix, the database adapters'
	// SourcePrefix); docs/events.md lists each trigger's whole event, and
	// CronTickFrom, HTTPRequestFrom, QueueMessageFrom and ChangeFrom read
	// them typed.
	Source string `json:"source,omitempty"`
	// Type says what happened, e.g. "order.created".
	Type string `json:"type,omitempty"`
	// Subject is the thing the event is about, e.g. an order ID. Optional.
	Subject string `json:"subject,omitempty"`
	// Time is when it happened. If zero, Submit sets it to the clock's now.
	Time time.Time `json:"time"`
	// Data is the payload, JSON by convention. It is never interpreted by
	// batuta except through the typed accessors (see EventData).
	Data []byte `json:"data,omitempty"`
	// Metadata carries string extension attributes (CloudEvents extensions,
	// broker headers, trace context).
	Metadata map[string]string `json:"metadata,omitempty"`
}

// A FireFunc hands one event to the orchestrator. It returns nil once the run
// is accepted (recorded in the Store; for a duplicate event ID, once the
// existing run is found). Any error means "not accepted, deliver again
// later": the trigger must keep the event at its source (not ack the message,
// not delete the outbox row) and retry. ErrBusy signals backpressure.
type FireFunc func(ctx context.Context, ev Event) error

// A Trigger is a source of events: a database outbox, a queue, a cron
// schedule, an HTTP endpoint.
//
// Run blocks until ctx is done, calling fire once per event, and returns
// ctx.Err() (or nil) when ctx ends. An event counts as delivered only when
// fire returned nil. A Trigger that returns early with an error is restarted
// by the orchestrator with backoff, and the error is logged.
type Trigger interface {
	Run(ctx context.Context, fire FireFunc) error
}

// TriggerFunc adapts a function to the Trigger interface.
type TriggerFunc func(ctx context.Context, fire FireFunc) error

// Run calls f(ctx, fire).
func (f TriggerFunc) Run(ctx context.Context, fire FireFunc) error { return f(ctx, fire) }

// A TrackingTrigger is a Trigger that needs to follow the runs it starts:
// the cron trigger's overlap policies, a queue trigger that acks only after
// the run finished, a database trigger in front of a non-durable store. When a
// bound trigger implements it, the orchestrator calls RunTracking instead of
// Run, handing it a Runs bound to the trigger's workflow.
type TrackingTrigger interface {
	Trigger
	RunTracking(ctx context.Context, runs Runs) error
}

// Runs is the orchestrator as seen by a TrackingTrigger: the runs of one
// workflow. All methods are safe for concurrent use.
type Runs interface {
	// Workflow returns the name of the workflow the trigger is bound to.
	Workflow() string
	// Fire is FireFunc that also returns the ID of the run the event
	// started (or of the existing run, for a duplicate event ID).
	Fire(ctx context.Context, ev Event) (runID string, err error)
	// Get returns a snapshot of a run. ErrRunNotFound if unknown.
	Get(ctx context.Context, runID string) (*Run, error)
	// Wait blocks until the run is finished (succeeded, failed or
	// canceled) or ctx ends, and returns its final snapshot.
	Wait(ctx context.Context, runID string) (*Run, error)
	// Cancel cancels the run: pending tasks are canceled and running tasks
	// see their ctx canceled.
	Cancel(ctx context.Context, runID string) error
	// Durable reports whether the Store survives a process crash. A trigger
	// in front of a non-durable store should release its source (delete the
	// outbox row, ack the message) only after the run finished.
	Durable() bool
	// Clock returns the orchestrator's clock.
	Clock() Clock
	// LastTick returns the last tick recorded for the named schedule by
	// RecordTick (the zero time if none). With a durable store it survives
	// restarts, so catch-up after downtime is computed from it.
	LastTick(ctx context.Context, schedule string) (time.Time, error)
	// RecordTick records tick as the schedule's last tick if it is later
	// than the one stored; it reports whether it advanced.
	RecordTick(ctx context.Context, schedule string, tick time.Time) (bool, error)
}
