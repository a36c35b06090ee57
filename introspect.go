package batuta

import (
	"fmt"
	"sync"
	"time"

	"github.com/batuta-dev/batuta/internal/cronexpr"
)

// This file is a read-only view of what an orchestrator was told to run:
// its workflows (their tasks and dependencies) and its bindings (which
// trigger starts which workflow, and how that trigger fares). Dashboards
// and tools read it; nothing here changes the orchestrator.

// WorkflowInfo describes a registered workflow (Orchestrator.Workflows).
type WorkflowInfo struct {
	Name string `json:"name"`
	// Timeout is the workflow-level deadline (zero: none).
	Timeout time.Duration `json:"timeout,omitempty"`
	// Tasks lists the tasks in declaration order.
	Tasks []TaskInfo `json:"tasks"`
}

// TaskInfo describes one task of a registered workflow.
type TaskInfo struct {
	Name string `json:"name"`
	// Deps are the task's direct dependencies, in declaration order.
	Deps []string `json:"deps,omitempty"`
	// Join is the task's join rule (Task.When), e.g. "all_succeeded".
	Join string `json:"join"`
	// MaxAttempts is the retry policy's attempt budget (1: no retry).
	MaxAttempts int `json:"max_attempts"`
	// Timeout bounds one attempt (zero: none).
	Timeout time.Duration `json:"timeout,omitempty"`
}

// Workflows returns the registered workflows, sorted by name. The result
// is a copy: changing it changes nothing.
func (o *Orchestrator) Workflows() []WorkflowInfo {
	o.mu.RLock()
	defer o.mu.RUnlock()
	out := make([]WorkflowInfo, 0, len(o.wfNames))
	for _, name := range o.wfNames {
		cw := o.workflows[name]
		wi := WorkflowInfo{Name: cw.name, Timeout: cw.timeout, Tasks: make([]TaskInfo, len(cw.tasks))}
		for i := range cw.tasks {
			ct := &cw.tasks[i]
			att := ct.retry.MaxAttempts
			if att < 1 {
				att = 1
			}
			wi.Tasks[i] = TaskInfo{Name: ct.name, Deps: append([]string(nil), ct.deps...), Join: ct.when.String(), MaxAttempts: att, Timeout: ct.timeout}
		}
		out = append(out, wi)
	}
	return out
}

// Workflow returns the registered workflow named name; ok is false if
// there is none.
func (o *Orchestrator) Workflow(name string) (wi WorkflowInfo, ok bool) {
	for _, w := range o.Workflows() {
		if w.Name == name {
			return w, true
		}
	}
	return WorkflowInfo{}, false
}

// The kinds of trigger BindingInfo.Kind reports.
const (
	TriggerKindCron  = "cron"
	TriggerKindQueue = "queue"
	// Any other trigger is reported by its Go type, e.g. "*batutapg.OutboxTrigger".
)

// BindingInfo describes one Bind call: which trigger starts which
// workflow, and how the trigger fares in this process.
type BindingInfo struct {
	Workflow string `json:"workflow"`
	// Kind is TriggerKindCron, TriggerKindQueue, or the trigger's Go type.
	Kind string `json:"kind"`
	// Trigger is the bound trigger itself (for type assertions).
	Trigger Trigger `json:"-"`
	// Schedule describes a cron trigger; nil for other kinds.
	Schedule *ScheduleInfo `json:"schedule,omitempty"`
	// Running reports that the trigger is running now in this process:
	// the orchestrator runs and the trigger has not returned (or it has,
	// and is restarted after its backoff: Running is then false).
	Running bool `json:"running"`
	// Restarts counts how often the trigger returned early (an error or a
	// panic, or nil before the orchestrator stopped) since it was bound.
	Restarts int `json:"restarts,omitempty"`
	// LastError is the error of the last early return, and LastErrorAt
	// when it happened (zero if none).
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// Parked is, for a queue trigger, how many messages it holds back
	// locally after a dead-letter destination failed (QueueTrigger.Parked);
	// -1 when the trigger does not tell.
	Parked int64 `json:"parked"`
	// Backlog tells the work waiting at the trigger's source (the
	// trigger, or a QueueTrigger's queue, implementing BacklogReporter);
	// nil when the source does not tell. It asks the source each time:
	// read it with ReadBacklog or ReadBacklogs, under a short deadline.
	Backlog BacklogReporter `json:"-"`
}

// Healthy reports whether the trigger runs and has not failed in the last
// minute.
func (b BindingInfo) Healthy(now time.Time) bool {
	return b.Running && (b.LastErrorAt.IsZero() || now.Sub(b.LastErrorAt) > time.Minute)
}

// ScheduleInfo describes a cron trigger's schedule.
type ScheduleInfo struct {
	// Name is CronConfig.Name: the key of the schedule's last tick
	// (Store.LastTick).
	Name string `json:"name"`
	// Spec is the cron spec (CronConfig.Spec), or the Schedule's String
	// when it has one, else "".
	Spec string `json:"spec,omitempty"`
	// TimeZone is the zone the spec names (CRON_TZ= or TZ=); "" when it
	// names none, and ticks then follow the orchestrator clock's zone.
	TimeZone string `json:"time_zone,omitempty"`
	// Missed and Overlap are the policies' actions (e.g. "skip").
	Missed  string `json:"missed"`
	Overlap string `json:"overlap"`
	// Schedule computes the ticks.
	Schedule Schedule `json:"-"`
}

// NextFires returns the schedule's next n ticks after t (fewer if the
// schedule ends). A tick while the workflow is paused does not fire.
func (s *ScheduleInfo) NextFires(t time.Time, n int) []time.Time {
	var out []time.Time
	for len(out) < n {
		t = s.Schedule.Next(t)
		if t.IsZero() {
			break
		}
		out = append(out, t)
	}
	return out
}

// bindingStatus is what superviseTrigger records of a binding's trigger.
type bindingStatus struct {
	mu          sync.Mutex
	running     bool
	restarts    int
	lastError   string
	lastErrorAt time.Time
}

func (s *bindingStatus) started() {
	s.mu.Lock()
	s.running = true
	s.mu.Unlock()
}

// stopped records the trigger's return; err is nil when it returned
// because the orchestrator stopped.
func (s *bindingStatus) stopped(err error, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running = false
	if err != nil {
		s.restarts++
		s.lastError, s.lastErrorAt = err.Error(), at
	}
}

// Bindings returns the bindings made with Bind, in the order they were
// made, with the health of their triggers in this process.
func (o *Orchestrator) Bindings() []BindingInfo {
	o.mu.RLock()
	bs := append([]*binding(nil), o.bindings...)
	o.mu.RUnlock()
	out := make([]BindingInfo, 0, len(bs))
	for _, b := range bs {
		bi := BindingInfo{Workflow: b.workflow, Trigger: b.trigger, Kind: fmt.Sprintf("%T", b.trigger), Parked: -1,
			Backlog: backlogReporter(b.trigger)}
		switch t := b.trigger.(type) {
		case *CronTrigger:
			bi.Kind = TriggerKindCron
			si := &ScheduleInfo{Name: t.cfg.Name, Spec: t.cfg.Spec, Schedule: t.sched,
				Missed: t.cfg.Missed.Action.String(), Overlap: t.cfg.Overlap.Action.String()}
			if si.Spec == "" {
				if s, ok := t.sched.(fmt.Stringer); ok {
					si.Spec = s.String()
				}
			}
			if e, ok := t.sched.(*cronexpr.Expr); ok && e.Location() != nil {
				si.TimeZone = e.Location().String()
			}
			bi.Schedule = si
		case *QueueTrigger:
			bi.Kind = TriggerKindQueue
			bi.Parked = t.Parked()
		}
		b.status.mu.Lock()
		bi.Running, bi.Restarts = b.status.running, b.status.restarts
		bi.LastError, bi.LastErrorAt = b.status.lastError, b.status.lastErrorAt
		b.status.mu.Unlock()
		out = append(out, bi)
	}
	return out
}

// Now returns the orchestrator clock's current time (Config.Clock), the
// time its schedules and statistics are computed against.
func (o *Orchestrator) Now() time.Time { return o.clock.Now() }
