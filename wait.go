package batuta

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// SignalWait makes a task wait for a signal (Task.Signal).
type SignalWait struct {
	// Name is the signal's name (same alphabet as task names).
	Name string
	// Timeout bounds the wait, from when the task starts waiting (0: no
	// limit). What happens then is OnTimeout.
	Timeout time.Duration
	// OnTimeout says how the task ends when Timeout passes.
	OnTimeout TimeoutAction
	// Default is the task's output when it times out with TimeoutSucceed.
	Default any
}

// TimeoutAction says how a wait that timed out ends.
type TimeoutAction uint8

// The timeout actions.
const (
	// TimeoutFail (the default): the task fails with ErrTimeout.
	TimeoutFail TimeoutAction = iota
	// TimeoutSucceed: the task succeeds with SignalWait.Default.
	TimeoutSucceed
)

// Signal sends a signal to a run: a task of it waiting for name (Task.Signal)
// completes with data as its output, or, if the run has not reached that
// task yet, the signal is kept for it (bounded). ErrRunNotFound,
// ErrNoWaiter (the run has no unfinished task waiting for name),
// ErrSignalBufferFull.
func (o *Orchestrator) Signal(ctx context.Context, runID, name string, data any) error {
	return fmt.Errorf("batuta: Signal: %w", errors.ErrUnsupported)
}

// SignalWhere signals (as Signal) every unfinished run of workflow whose
// event Subject is subject, for webhooks that know only a business key. It
// returns how many runs took the signal; ErrNoWaiter if none did.
func (o *Orchestrator) SignalWhere(ctx context.Context, workflow, subject, name string, data any) (int, error) {
	return 0, fmt.Errorf("batuta: SignalWhere: %w", errors.ErrUnsupported)
}
