package batuta

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Flow-control methods of the memory store. Placeholders until the flow
// branch lands: CreateRuns loops over CreateRun, the rest are unsupported.

// CreateRuns implements Store.
func (s *MemoryStore) CreateRuns(ctx context.Context, runs []NewRun) ([]CreateResult, error) {
	out := make([]CreateResult, len(runs))
	for i := range runs {
		id, created, err := s.CreateRun(ctx, runs[i])
		if err != nil {
			return nil, err
		}
		out[i] = CreateResult{ID: id, Created: created}
	}
	return out, nil
}

// NextDue implements Store.
func (s *MemoryStore) NextDue(ctx context.Context, workflows []string, now time.Time) (time.Time, error) {
	return time.Time{}, nil
}

// SetPaused implements Store.
func (s *MemoryStore) SetPaused(ctx context.Context, workflow string, paused bool) (bool, error) {
	return false, fmt.Errorf("batuta: memory store: pause: %w", errors.ErrUnsupported)
}

// PausedWorkflows implements Store.
func (s *MemoryStore) PausedWorkflows(ctx context.Context) ([]string, error) { return nil, nil }

// ReserveRate implements Store.
func (s *MemoryStore) ReserveRate(ctx context.Context, spec RateSpec, now time.Time) (time.Time, error) {
	return time.Time{}, fmt.Errorf("batuta: memory store: rate limits: %w", errors.ErrUnsupported)
}
