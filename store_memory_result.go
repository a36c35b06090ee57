package batuta

import (
	"context"
	"fmt"
)

// taskResultReader is implemented by stores that read the result of one
// task of a run cheaply (the in-memory store). Output reads an ancestor
// that is not a direct dependency through it when it can, and otherwise
// with one GetRun per attempt.
type taskResultReader interface {
	// taskResult returns the state, output and error of the task at
	// position pos of the run (the order of NewRun.Tasks), named name.
	taskResult(ctx context.Context, runID string, pos int, name string) (UpstreamResult, error)
}

// taskResult implements taskResultReader without a snapshot of the run.
func (s *MemoryStore) taskResult(ctx context.Context, runID string, pos int, name string) (UpstreamResult, error) {
	if err := ctx.Err(); err != nil {
		return UpstreamResult{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.runs[runID]
	if r == nil {
		return UpstreamResult{}, fmt.Errorf("%w: %s", ErrRunNotFound, runID)
	}
	if pos < 0 || pos >= len(r.tasks) || r.tasks[pos].spec().Name != name {
		return UpstreamResult{}, fmt.Errorf("batuta: run %s has no task %q at position %d", runID, name, pos)
	}
	t := &r.tasks[pos]
	return UpstreamResult{Name: name, State: t.state.ts(), Output: t.output, Error: t.err}, nil
}
