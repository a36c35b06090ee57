package batuta

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// SendSignal implements Store.
func (s *MemoryStore) SendSignal(ctx context.Context, sig SignalSend) (SignalResult, error) {
	return SignalResult{}, fmt.Errorf("batuta: MemoryStore.SendSignal: %w", errors.ErrUnsupported)
}

// RetryRun implements Store.
func (s *MemoryStore) RetryRun(ctx context.Context, runID string, p RetryParams) (RetryResult, error) {
	return RetryResult{}, fmt.Errorf("batuta: MemoryStore.RetryRun: %w", errors.ErrUnsupported)
}

// WorkflowStats implements Store.
func (s *MemoryStore) WorkflowStats(ctx context.Context, since, now time.Time) ([]WorkflowStats, error) {
	return nil, fmt.Errorf("batuta: MemoryStore.WorkflowStats: %w", errors.ErrUnsupported)
}
