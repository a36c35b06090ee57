package batuta

import (
	"context"
	"errors"
	"fmt"
)

// A RetryOption changes what Orchestrator.Retry resets.
type RetryOption func(*retryOptions)

type retryOptions struct{ from string }

// FromTask makes Retry reset the named task and every task downstream of
// it, whatever their state (DBOS's "fork from a step"); a succeeded run can
// be retried this way.
func FromTask(name string) RetryOption { return func(o *retryOptions) { o.from = name } }

// Retry reopens a failed or canceled run: its failed, canceled and
// upstream-failed tasks, and every task downstream of them, run again with
// a fresh retry budget; the tasks that succeeded keep their outputs. The
// run keeps its ID and its history of attempts. ErrNotRetryable for a run
// that is unfinished or succeeded (without FromTask).
func (o *Orchestrator) Retry(ctx context.Context, runID string, opts ...RetryOption) error {
	return fmt.Errorf("batuta: Retry: %w", errors.ErrUnsupported)
}

// BulkResult is what RetryRuns and CancelRuns did.
type BulkResult struct {
	// Matched is how many runs the filter selected; Done how many were
	// retried or canceled; Skipped how many were not (finished meanwhile,
	// not retryable).
	Matched, Done, Skipped int
}

// A BulkOption tunes RetryRuns and CancelRuns.
type BulkOption func(*bulkOptions)

type bulkOptions struct {
	batch    int
	progress func(BulkResult)
}

// BatchSize sets how many runs one batch lists and acts on (default 100).
func BatchSize(n int) BulkOption { return func(o *bulkOptions) { o.batch = n } }

// WithProgress calls fn after each batch with the totals so far.
func WithProgress(fn func(BulkResult)) BulkOption { return func(o *bulkOptions) { o.progress = fn } }

// RetryRuns retries every run f selects (see Retry), in batches.
func (o *Orchestrator) RetryRuns(ctx context.Context, f RunFilter, opts ...BulkOption) (BulkResult, error) {
	return BulkResult{}, fmt.Errorf("batuta: RetryRuns: %w", errors.ErrUnsupported)
}

// CancelRuns cancels every unfinished run f selects, in batches.
func (o *Orchestrator) CancelRuns(ctx context.Context, f RunFilter, opts ...BulkOption) (BulkResult, error) {
	return BulkResult{}, fmt.Errorf("batuta: CancelRuns: %w", errors.ErrUnsupported)
}
