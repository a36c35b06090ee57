package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/batuta-dev/batuta"
)

// filterFlags are the run selection flags of list, retry and cancel.
type filterFlags struct {
	workflow, eventID, subject, errText, parent string
	states                                      []string
	since, until                                string
}

func (f *filterFlags) register(fs *pflag.FlagSet) {
	fs.StringVarP(&f.workflow, "workflow", "w", "", "only runs of this workflow")
	fs.StringSliceVarP(&f.states, "state", "s", nil, "only runs in these states: pending, running, succeeded, failed, canceled (repeat or comma-separate)")
	fs.StringVar(&f.eventID, "event-id", "", "only the runs of this event ID")
	fs.StringVar(&f.subject, "subject", "", "only runs whose event has this subject")
	fs.StringVar(&f.errText, "error", "", "only runs whose error contains this text (case-insensitive)")
	fs.StringVar(&f.parent, "parent", "", "only the child runs of this run ID")
	fs.StringVar(&f.since, "since", "", "only runs created at or after this time (RFC 3339, or a duration ago: 90m, 24h)")
	fs.StringVar(&f.until, "until", "", "only runs created before this time (RFC 3339, or a duration ago)")
}

// set reports whether any filter flag was given.
func (f *filterFlags) set() bool {
	return f.workflow != "" || len(f.states) > 0 || f.eventID != "" || f.subject != "" ||
		f.errText != "" || f.parent != "" || f.since != "" || f.until != ""
}

// filter builds the RunFilter; defaultStates apply when --state is absent.
func (f *filterFlags) filter(now time.Time, defaultStates ...batuta.RunState) (batuta.RunFilter, error) {
	rf := batuta.RunFilter{
		Workflow: f.workflow, EventID: f.eventID, Subject: f.subject,
		ErrorContains: f.errText, Parent: f.parent,
	}
	for _, s := range f.states {
		st := batuta.RunState(strings.ToLower(strings.TrimSpace(s)))
		switch st {
		case batuta.RunPending, batuta.RunRunning, batuta.RunSucceeded, batuta.RunFailed, batuta.RunCanceled:
		default:
			return rf, usageErrorf("--state %q: not one of pending, running, succeeded, failed, canceled", s)
		}
		if !slices.Contains(rf.States, st) {
			rf.States = append(rf.States, st)
		}
	}
	if len(rf.States) == 0 {
		rf.States = defaultStates
	}
	if len(rf.States) == 1 {
		rf.State, rf.States = rf.States[0], nil
	}
	var err error
	if rf.CreatedAfter, err = parseWhen("--since", f.since, now); err != nil {
		return rf, err
	}
	if rf.CreatedBefore, err = parseWhen("--until", f.until, now); err != nil {
		return rf, err
	}
	return rf, nil
}

// parseWhen reads an RFC 3339 time or a duration before now.
func parseWhen(flag, s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, usageErrorf("%s %q: not an RFC 3339 time (2026-03-01T12:00:00Z) nor a duration (90m)", flag, s)
}

// matches re-checks a run against the filter on this side, so a store that
// ignores a filter field it does not know yet never lets a bulk action
// reach a run the user did not select.
func matches(r *batuta.Run, f batuta.RunFilter) bool {
	switch {
	case f.Workflow != "" && r.Workflow != f.Workflow,
		f.State != "" && r.State != f.State,
		len(f.States) > 0 && !slices.Contains(f.States, r.State),
		f.EventID != "" && r.Event.ID != f.EventID,
		f.Subject != "" && r.Event.Subject != f.Subject,
		!f.CreatedAfter.IsZero() && r.CreatedAt.Before(f.CreatedAfter),
		!f.CreatedBefore.IsZero() && !r.CreatedAt.Before(f.CreatedBefore),
		f.ErrorContains != "" && !strings.Contains(strings.ToLower(r.Error), strings.ToLower(f.ErrorContains)),
		f.Parent != "" && (r.Parent == nil || r.Parent.RunID != f.Parent),
		f.ParentTask != "" && (r.Parent == nil || r.Parent.Task != f.ParentTask):
		return false
	}
	return true
}

// errNoCursor: the store answered a page without honouring RunFilter.After.
var errNoCursor = errors.New("the store ignored the listing cursor (RunFilter.After); upgrade its adapter")

// listPage lists one page and re-checks it against f.
func listPage(ctx context.Context, s batuta.Store, f batuta.RunFilter) (page []*batuta.Run, more bool, last string, err error) {
	runs, err := s.ListRuns(ctx, f)
	if err != nil {
		return nil, false, "", fmt.Errorf("list runs: %w", err)
	}
	for _, r := range runs {
		if f.After != "" && ((f.Ascending && r.ID <= f.After) || (!f.Ascending && r.ID >= f.After)) {
			return nil, false, "", errNoCursor
		}
		if matches(r, f) {
			page = append(page, r)
		}
	}
	if len(runs) > 0 {
		last = runs[len(runs)-1].ID
	}
	return page, f.Limit > 0 && len(runs) >= f.Limit, last, nil
}

// selectRuns returns the IDs of every run f selects, oldest first, listing
// pages of pageSize with the cursor. The set is fixed before any action,
// so runs that start matching meanwhile are left alone.
func selectRuns(ctx context.Context, s batuta.Store, f batuta.RunFilter, pageSize int) ([]string, error) {
	f.Ascending, f.Limit, f.After = true, pageSize, ""
	var ids []string
	for {
		page, more, last, err := listPage(ctx, s, f)
		if err != nil {
			return nil, err
		}
		for _, r := range page {
			ids = append(ids, r.ID)
		}
		if !more {
			return ids, nil
		}
		f.After = last
	}
}

func (a *app) runsCommand() *cobra.Command {
	c := groupCommand("runs", "List, show, retry and cancel runs", "List, show, retry and cancel the runs of the store.")
	c.AddCommand(a.runsListCommand(), a.runsShowCommand(), a.runsRetryCommand(), a.runsCancelCommand())
	return c
}

func (a *app) runsListCommand() *cobra.Command {
	var (
		ff    filterFlags
		limit int
		after string
		asc   bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List runs, newest first",
		Long: `List runs, newest first (--asc: oldest first), in pages of --limit. When a page is
full, the command prints the --after value that lists the next page (to stderr,
so --json output stays a plain array).`,
		Example: `  batuta runs list --state failed --workflow orders
  batuta runs list --state pending,running --since 1h
  batuta runs list --error "connection refused" --json | jq -r '.[].id'
  batuta runs list --limit 100 --after 0193a7c4-5e1f-7b6a-9d2c-3f4e5a6b7c8d`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 || limit > 10000 {
				return usageErrorf("--limit %d: must be between 1 and 10000", limit)
			}
			f, err := ff.filter(a.now())
			if err != nil {
				return err
			}
			f.Limit, f.After, f.Ascending = limit, after, asc
			ctx, cancel := a.context(cmd.Context())
			defer cancel()
			s, closeStore, err := a.openStore(ctx)
			if err != nil {
				return err
			}
			defer closeStore()
			runs, more, last, err := listPage(ctx, s, f)
			if err != nil {
				return err
			}
			if a.json {
				if runs == nil {
					runs = []*batuta.Run{}
				}
				views := make([]jsonRun, len(runs))
				for i, r := range runs {
					views[i] = viewRun(r, false)
				}
				if err := writeJSON(a.out(cmd), views); err != nil {
					return err
				}
			} else {
				writeRunTable(a.out(cmd), runs, a.now())
			}
			if more {
				printf(a.stderr, "more runs: add --after %s\n", last)
			}
			return nil
		},
	}
	ff.register(cmd.Flags())
	cmd.Flags().IntVarP(&limit, "limit", "n", 50, "list at most this many runs (1-10000)")
	cmd.Flags().StringVar(&after, "after", "", "list the runs after this run ID (the cursor of the previous page)")
	cmd.Flags().BoolVar(&asc, "asc", false, "oldest first")
	return cmd
}

// writeRunTable prints runs as a table.
func writeRunTable(w io.Writer, runs []*batuta.Run, now time.Time) {
	if len(runs) == 0 {
		printf(w, "no runs\n")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	printf(tw, "ID\tWORKFLOW\tSTATE\tCREATED\tTOOK\tTASKS\tERROR\n")
	for _, r := range runs {
		done := 0
		for _, t := range r.Tasks {
			if t.State.Finished() {
				done++
			}
		}
		printf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", r.ID, sanitize(r.Workflow, 30), r.State,
			r.CreatedAt.UTC().Format(time.RFC3339), runTook(r, now), done, len(r.Tasks), sanitize(r.Error, 60))
	}
	_ = tw.Flush()
}

// runTook is how long a finished run took, or how long ago an unfinished
// one was created ("4m12s ago" style, without the "ago").
func runTook(r *batuta.Run, now time.Time) string {
	if r.Finished() && !r.FinishedAt.IsZero() {
		return human(r.FinishedAt.Sub(r.CreatedAt))
	}
	return "(" + human(now.Sub(r.CreatedAt)) + ")"
}

// human formats a duration for a table: milliseconds below a second,
// tenths below a minute, whole seconds above.
func human(d time.Duration) string {
	switch {
	case d < 0:
		return "-"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}

// jsonRun is a run as --json prints it: batuta.Run's own JSON, with the
// event's data inline when it is JSON (base64 otherwise).
type jsonRun struct {
	*batuta.Run
	Event jsonEvent `json:"event"`
	// Tasks is omitted from listings (show prints them).
	Tasks []batuta.TaskRun `json:"tasks,omitempty"`
}

type jsonEvent struct {
	ID         string            `json:"id"`
	Source     string            `json:"source,omitempty"`
	Type       string            `json:"type,omitempty"`
	Subject    string            `json:"subject,omitempty"`
	Time       time.Time         `json:"time,omitzero"`
	Data       json.RawMessage   `json:"data,omitempty"`
	DataBase64 []byte            `json:"data_base64,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
}

func viewRun(r *batuta.Run, tasks bool) jsonRun {
	v := jsonRun{Run: r, Event: jsonEvent{
		ID: r.Event.ID, Source: r.Event.Source, Type: r.Event.Type, Subject: r.Event.Subject,
		Time: r.Event.Time, Metadata: r.Event.Metadata,
	}}
	if len(r.Event.Data) > 0 {
		if json.Valid(r.Event.Data) {
			v.Event.Data = r.Event.Data
		} else {
			v.Event.DataBase64 = r.Event.Data
		}
	}
	if tasks {
		v.Tasks = r.Tasks
	}
	return v
}

func (a *app) runsShowCommand() *cobra.Command {
	var data bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show one run: its tasks, attempts and errors",
		Example: `  batuta runs show 0193a7c4-5e1f-7b6a-9d2c-3f4e5a6b7c8d
  batuta runs show 0193a7c4-5e1f-7b6a-9d2c-3f4e5a6b7c8d --data
  batuta runs show 0193a7c4-5e1f-7b6a-9d2c-3f4e5a6b7c8d --json | jq '.tasks[] | select(.state=="failed")'`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := a.context(cmd.Context())
			defer cancel()
			s, closeStore, err := a.openStore(ctx)
			if err != nil {
				return err
			}
			defer closeStore()
			r, err := s.GetRun(ctx, args[0])
			if errors.Is(err, batuta.ErrRunNotFound) {
				return withCode(exitNotFound, fmt.Errorf("run %s: %w", args[0], err))
			}
			if err != nil {
				return fmt.Errorf("run %s: %w", args[0], err)
			}
			if a.json {
				return writeJSON(a.out(cmd), viewRun(r, true))
			}
			writeRun(a.out(cmd), r, a.now(), data)
			return nil
		},
	}
	cmd.Flags().BoolVar(&data, "data", false, "also print the event's data and the tasks' outputs (capped at 4 KiB each)")
	return cmd
}

// writeRun prints one run for people.
func writeRun(w io.Writer, r *batuta.Run, now time.Time, data bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	field := func(k, v string) {
		if v != "" {
			printf(tw, "%s:\t%s\n", k, v)
		}
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	field("Run", r.ID)
	field("Workflow", r.Workflow)
	field("State", string(r.State))
	field("Created", ts(r.CreatedAt))
	field("Start at", ts(r.StartAt))
	field("Started", ts(r.StartedAt))
	field("Finished", ts(r.FinishedAt))
	field("Took", strings.Trim(runTook(r, now), "()"))
	field("Deadline", ts(r.Deadline))
	if r.Priority != 0 {
		field("Priority", fmt.Sprint(r.Priority))
	}
	field("Concurrency", r.ConcurrencyKey)
	if r.Parent != nil {
		field("Parent", r.Parent.RunID+" (task "+r.Parent.Task+")")
	}
	if r.Retries > 0 {
		field("Retries", fmt.Sprint(r.Retries))
	}
	field("Error", sanitize(r.Error, 0))
	ev := r.Event.ID
	for _, x := range []string{r.Event.Source, r.Event.Type, r.Event.Subject} {
		if x != "" {
			ev += "  " + x
		}
	}
	field("Event", sanitize(ev, 0))
	_ = tw.Flush()

	printf(w, "\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	printf(tw, "TASK\tSTATE\tATTEMPTS\tTOOK\tDEPS\tNOTE\n")
	for i := range r.Tasks {
		t := &r.Tasks[i]
		note := t.Error
		if note == "" && t.WaitingFor != "" && !t.State.Finished() {
			note = "waiting for " + t.WaitingFor
		}
		if note == "" && t.Child != "" {
			note = "child run " + t.Child
		}
		if t.Rescues > 0 {
			note = strings.TrimSpace(fmt.Sprintf("%s (rescued %d×)", note, t.Rescues))
		}
		took := "-"
		if len(t.Attempts) > 0 {
			took = human(t.Duration())
		}
		deps := strings.Join(t.Deps, ",")
		if deps == "" {
			deps = "-"
		}
		printf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", sanitize(t.Name, 40), t.State, t.AttemptCount(), took, sanitize(deps, 40), sanitize(note, 70))
	}
	_ = tw.Flush()

	// Errors in full: the table cut them, and a panic's stack needs its lines.
	for i := range r.Tasks {
		t := &r.Tasks[i]
		if t.State != batuta.TaskFailed || len(t.Attempts) == 0 {
			continue
		}
		printf(w, "\n%s: attempts\n", t.Name)
		for _, at := range t.Attempts {
			printf(w, "  #%d  %s  %s  %s\n", at.Number, at.StartedAt.UTC().Format(time.RFC3339Nano), human(at.FinishedAt.Sub(at.StartedAt)), at.Outcome)
			if at.Error != "" {
				printf(w, "      %s\n", strings.ReplaceAll(strings.TrimRight(at.Error, "\n"), "\n", "\n      "))
			}
		}
	}
	if data {
		printf(w, "\nEvent data:\n%s\n", capped(r.Event.Data))
		for _, t := range r.Tasks {
			if t.Output == nil {
				continue
			}
			b, err := json.Marshal(t.Output)
			if err != nil {
				b = []byte(fmt.Sprint(t.Output))
			}
			printf(w, "\nOutput of %s:\n%s\n", t.Name, capped(b))
		}
	}
}

// maxShown caps the data and outputs show --data prints.
const maxShown = 4096

// capped pretty-prints JSON (or quotes other bytes), cut at maxShown.
func capped(b []byte) string {
	if len(b) == 0 {
		return "  (none)"
	}
	var s string
	var buf strings.Builder
	if json.Valid(b) {
		var v any
		if json.Unmarshal(b, &v) == nil {
			out, _ := json.MarshalIndent(v, "  ", "  ")
			s = "  " + string(out)
		}
	}
	if s == "" {
		s = fmt.Sprintf("  %q", b)
	}
	if len(s) > maxShown {
		fmt.Fprintf(&buf, "%s\n  ... (%d bytes more)", s[:maxShown], len(s)-maxShown)
		return buf.String()
	}
	return s
}
