package batutapg

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
)

// SendSignal implements batuta.Store.
func (s *Store) SendSignal(ctx context.Context, sig batuta.SignalSend) (batuta.SignalResult, error) {
	return batuta.SignalResult{}, fmt.Errorf("batutapg: SendSignal: %w", errors.ErrUnsupported)
}

// RetryRun implements batuta.Store.
func (s *Store) RetryRun(ctx context.Context, runID string, p batuta.RetryParams) (batuta.RetryResult, error) {
	return batuta.RetryResult{}, fmt.Errorf("batutapg: RetryRun: %w", errors.ErrUnsupported)
}

// WorkflowStats implements batuta.Store.
func (s *Store) WorkflowStats(ctx context.Context, since, now time.Time) ([]batuta.WorkflowStats, error) {
	return nil, fmt.Errorf("batutapg: WorkflowStats: %w", errors.ErrUnsupported)
}
