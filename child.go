package batuta

// ChildWorkflow makes a task run another workflow (Task.Child).
type ChildWorkflow struct {
	// Workflow is the child workflow's name; it must be registered in the
	// same orchestrator.
	Workflow string
	// Event builds the child run's event from the task's inputs. Nil: the
	// parent run's event data, with a new ID. The child's Event.ID is
	// always derived from the parent run and task (a retry never starts a
	// second child).
	Event func(in *Input) (Event, error)
}

// ForEach runs a task once per item (Task.ForEach).
type ForEach struct {
	// Items computes the items from the task's inputs (the event, upstream
	// outputs). Each item must be JSON-encodable; Run reads it as its
	// event's data (EventData).
	Items func(in *Input) ([]any, error)
	// MaxParallel caps the items running at once (0: no cap).
	MaxParallel int
	// Tolerate is how many items may fail with the task still succeeding
	// (their outputs are null); 0: every item must succeed; -1: any number.
	Tolerate int
}
