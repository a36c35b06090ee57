package batutapg

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
)

// Flow-control methods of the pg store. Placeholders until the flow
// branch lands: CreateRuns loops over CreateRun, the rest are unsupported.

// CreateRuns implements batuta.Store.
func (s *Store) CreateRuns(ctx context.Context, runs []batuta.NewRun) ([]batuta.CreateResult, error) {
	out := make([]batuta.CreateResult, len(runs))
	for i := range runs {
		id, created, err := s.CreateRun(ctx, runs[i])
		if err != nil {
			return nil, err
		}
		out[i] = batuta.CreateResult{ID: id, Created: created}
	}
	return out, nil
}

// NextDue implements batuta.Store.
func (s *Store) NextDue(ctx context.Context, workflows []string, now time.Time) (time.Time, error) {
	return time.Time{}, nil
}

// SetPaused implements batuta.Store.
func (s *Store) SetPaused(ctx context.Context, workflow string, paused bool) (bool, error) {
	return false, fmt.Errorf("batuta: pg store: pause: %w", errors.ErrUnsupported)
}

// PausedWorkflows implements batuta.Store.
func (s *Store) PausedWorkflows(ctx context.Context) ([]string, error) { return nil, nil }

// ReserveRate implements batuta.Store.
func (s *Store) ReserveRate(ctx context.Context, spec batuta.RateSpec, now time.Time) (time.Time, error) {
	return time.Time{}, fmt.Errorf("batuta: pg store: rate limits: %w", errors.ErrUnsupported)
}
