package batutatest

import (
	"context"
	"sync"

	"github.com/batuta-dev/batuta"
)

// PushTrigger is a Trigger that tests push events into. Bind it to a
// workflow, run the orchestrator, then Push: it returns fire's result, so a
// test sees backpressure (batuta.ErrBusy) and acceptance exactly as a real
// source would. Safe for concurrent use.
type PushTrigger struct {
	mu      sync.Mutex
	fire    batuta.FireFunc
	running chan struct{}
}

// NewPushTrigger returns a PushTrigger.
func NewPushTrigger() *PushTrigger {
	return &PushTrigger{running: make(chan struct{})}
}

// Run implements batuta.Trigger: it makes Push work until ctx ends.
func (p *PushTrigger) Run(ctx context.Context, fire batuta.FireFunc) error {
	p.mu.Lock()
	p.fire = fire
	select {
	case <-p.running:
	default:
		close(p.running)
	}
	p.mu.Unlock()
	<-ctx.Done()
	p.mu.Lock()
	p.fire = nil
	p.running = make(chan struct{})
	p.mu.Unlock()
	return ctx.Err()
}

// Push fires ev, waiting (until ctx ends) for the trigger to be running.
// It returns nil once the orchestrator accepted the event.
func (p *PushTrigger) Push(ctx context.Context, ev batuta.Event) error {
	for {
		p.mu.Lock()
		fire, running := p.fire, p.running
		p.mu.Unlock()
		if fire != nil {
			return fire(ctx, ev)
		}
		select {
		case <-running:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
