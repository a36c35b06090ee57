package dashboard

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
)

// overviewRow is one workflow on the overview.
type overviewRow struct {
	Name                string
	Tasks               int
	Paused              bool
	Registered          bool
	Hidden              bool // a workflow's hidden OnFailure/DeadLetter workflow
	Finished            int
	RunsPerMin          float64
	SuccessRate         float64 // 0..100; -1 if nothing finished
	P50, P95            time.Duration
	Succeeded, Failed   int
	Canceled            int
	Running, Pending    int
	Waiting             int
	OldestPending       time.Time
	OldestPendingWaited time.Duration
}

type overviewData struct {
	Window         time.Duration
	Rows           []overviewRow
	StatsErr       string // the store's error, or why it reports nothing
	Totals         overviewRow
	RecentFailures []*batuta.Run
}

func (h *handler) overview(r *http.Request, p *page) (int, error) {
	ctx := r.Context()
	now := p.Now
	d := overviewData{Window: h.cfg.StatsWindow}
	paused, err := h.o.Paused(ctx)
	if err != nil {
		return 0, err
	}
	stats, err := h.o.Store().WorkflowStats(ctx, now.Add(-h.cfg.StatsWindow), now)
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		d.StatsErr = "This store does not report statistics yet (Store.WorkflowStats is unsupported): the figures below are missing, not zero."
	case err != nil:
		d.StatsErr = "The store failed to report statistics: " + err.Error()
	}
	byName := map[string]*overviewRow{}
	var order []string
	add := func(name string) *overviewRow {
		if row, ok := byName[name]; ok {
			return row
		}
		row := &overviewRow{Name: name, SuccessRate: -1, Paused: slices.Contains(paused, name), Hidden: batuta.IsFailureWorkflow(name)}
		byName[name] = row
		order = append(order, name)
		return row
	}
	for _, w := range h.o.Workflows() {
		row := add(w.Name)
		row.Registered, row.Tasks = true, len(w.Tasks)
	}
	mins := h.cfg.StatsWindow.Minutes()
	for _, s := range stats {
		row := add(s.Workflow)
		row.Succeeded, row.Failed, row.Canceled = s.Succeeded, s.Failed, s.Canceled
		row.Finished = s.Succeeded + s.Failed + s.Canceled
		row.RunsPerMin = float64(row.Finished) / mins
		if row.Finished > 0 {
			row.SuccessRate = 100 * float64(s.Succeeded) / float64(row.Finished)
		}
		row.P50, row.P95 = s.DurationP50, s.DurationP95
		row.Running, row.Pending, row.Waiting = s.Running, s.Pending, s.Waiting
		if !s.OldestPending.IsZero() {
			row.OldestPending, row.OldestPendingWaited = s.OldestPending, now.Sub(s.OldestPending)
		}
	}
	slices.Sort(order)
	t := &d.Totals
	t.SuccessRate = -1
	for _, name := range order {
		row := *byName[name]
		d.Rows = append(d.Rows, row)
		t.Finished += row.Finished
		t.Succeeded += row.Succeeded
		t.Failed += row.Failed
		t.Canceled += row.Canceled
		t.Running += row.Running
		t.Pending += row.Pending
		t.Waiting += row.Waiting
		if row.OldestPendingWaited > t.OldestPendingWaited {
			t.OldestPending, t.OldestPendingWaited = row.OldestPending, row.OldestPendingWaited
		}
	}
	t.RunsPerMin = float64(t.Finished) / mins
	if t.Finished > 0 {
		t.SuccessRate = 100 * float64(t.Succeeded) / float64(t.Finished)
	}
	d.RecentFailures, err = h.o.ListRuns(ctx, batuta.RunFilter{State: batuta.RunFailed, Limit: 5})
	if err != nil {
		return 0, err
	}
	p.Title, p.Data = "Overview", d
	return 0, nil
}

// runsQuery is the runs page's filter, as its form and links carry it.
type runsQuery struct {
	Workflow, State, Event, Subject, Error string
	Since                                  string // "", "15m", "1h", "24h", "7d"
	From, To                               string // datetime-local, UTC
	After, Before                          string // keyset cursors (run IDs)
}

var sinceChoices = []struct{ Value, Label string }{
	{"", "Any time"}, {"15m", "Last 15 minutes"}, {"1h", "Last hour"}, {"24h", "Last 24 hours"}, {"168h", "Last 7 days"},
}

var runStates = []batuta.RunState{batuta.RunPending, batuta.RunRunning, batuta.RunSucceeded, batuta.RunFailed, batuta.RunCanceled}

const localTimeLayout = "2006-01-02T15:04"

func parseRunsQuery(v url.Values) runsQuery {
	return runsQuery{Workflow: v.Get("workflow"), State: v.Get("state"), Event: strings.TrimSpace(v.Get("event")),
		Subject: strings.TrimSpace(v.Get("subject")), Error: strings.TrimSpace(v.Get("error")), Since: v.Get("since"),
		From: v.Get("from"), To: v.Get("to"), After: v.Get("after"), Before: v.Get("before")}
}

// filter builds the RunFilter (without cursor and limit), or says which
// field is wrong.
func (q runsQuery) filter(now time.Time) (batuta.RunFilter, error) {
	f := batuta.RunFilter{Workflow: q.Workflow, EventID: q.Event, Subject: q.Subject, ErrorContains: q.Error}
	if q.State != "" {
		if !slices.Contains(runStates, batuta.RunState(q.State)) {
			return f, fmt.Errorf("unknown state %q", q.State)
		}
		f.State = batuta.RunState(q.State)
	}
	if q.Since != "" {
		d, err := time.ParseDuration(q.Since)
		if err != nil || d <= 0 {
			return f, fmt.Errorf("bad time window %q", q.Since)
		}
		f.CreatedAfter = now.Add(-d)
	}
	if q.From != "" {
		t, err := time.ParseInLocation(localTimeLayout, q.From, time.UTC)
		if err != nil {
			return f, fmt.Errorf("bad 'from' time %q: want YYYY-MM-DDTHH:MM (UTC)", q.From)
		}
		f.CreatedAfter = t
	}
	if q.To != "" {
		t, err := time.ParseInLocation(localTimeLayout, q.To, time.UTC)
		if err != nil {
			return f, fmt.Errorf("bad 'to' time %q: want YYYY-MM-DDTHH:MM (UTC)", q.To)
		}
		f.CreatedBefore = t
	}
	return f, nil
}

// check is filter for the runs page, which shows what is wrong.
func (q runsQuery) check(now time.Time) (batuta.RunFilter, string) {
	f, err := q.filter(now)
	if err != nil {
		return f, err.Error()
	}
	return f, ""
}

// values encodes the filter (without cursors) for links and forms.
func (q runsQuery) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"workflow": q.Workflow, "state": q.State, "event": q.Event, "subject": q.Subject,
		"error": q.Error, "since": q.Since, "from": q.From, "to": q.To} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

func (q runsQuery) link(cursor, id string) string {
	v := q.values()
	if cursor != "" {
		v.Set(cursor, id)
	}
	if len(v) == 0 {
		return "runs"
	}
	return "runs?" + v.Encode()
}

type runsData struct {
	Q          runsQuery
	Workflows  []string
	States     []batuta.RunState
	Since      []struct{ Value, Label string }
	Runs       []*batuta.Run
	FilterErr  string
	NextLink   string // older runs
	PrevLink   string // newer runs
	FirstLink  string // the newest page
	Filtered   bool
	Hidden     [][2]string // the filter as hidden form fields, for bulk actions
	CanRetry   bool        // the filter selects only failed or canceled runs
	CanCancel  bool
	PageSize   int
	MaxPreview int
}

func (h *handler) runs(r *http.Request, p *page) (int, error) {
	ctx := r.Context()
	q := parseRunsQuery(r.URL.Query())
	if id := strings.TrimSpace(r.URL.Query().Get("id")); id != "" {
		// The header's "go to run" box: show the run if it exists.
		if _, err := h.o.GetRun(ctx, id); err == nil {
			p.Title, p.Data = "Run", nil
			return 0, redirectTo{"runs/" + url.PathEscape(id)}
		}
		q.Event = id // not a run ID: maybe an event ID
	}
	d := runsData{Q: q, States: runStates, Since: sinceChoices, PageSize: h.cfg.PageSize}
	for _, w := range h.o.Workflows() {
		d.Workflows = append(d.Workflows, w.Name)
	}
	p.Title = "Runs"
	f, why := q.check(p.Now)
	if why != "" {
		d.FilterErr = why
		p.Data = d
		return http.StatusBadRequest, nil
	}
	d.Filtered = len(q.values()) > 0
	n := h.cfg.PageSize
	f.Limit = n + 1
	newer := q.Before != ""
	if newer {
		f.After, f.Ascending = q.Before, true
	} else {
		f.After = q.After
	}
	runs, err := h.o.ListRuns(ctx, f)
	if err != nil {
		return 0, err
	}
	more := len(runs) > n
	if more {
		runs = runs[:n]
	}
	if newer {
		slices.Reverse(runs)
	}
	d.Runs = runs
	if len(runs) > 0 {
		if (newer && (q.Before != "")) || (!newer && more) {
			d.NextLink = q.link("after", runs[len(runs)-1].ID)
		}
		if (newer && more) || (!newer && q.After != "") {
			d.PrevLink = q.link("before", runs[0].ID)
		}
	}
	if q.After != "" || q.Before != "" {
		d.FirstLink = q.link("", "")
	}
	for k, vs := range q.values() {
		d.Hidden = append(d.Hidden, [2]string{k, vs[0]})
	}
	slices.SortFunc(d.Hidden, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	d.CanRetry = q.State == string(batuta.RunFailed) || q.State == string(batuta.RunCanceled)
	d.CanCancel = q.State == string(batuta.RunPending) || q.State == string(batuta.RunRunning)
	p.Data = d
	return 0, nil
}

// redirectTo is returned by a page function that sends the browser
// elsewhere (relative to the root).
type redirectTo struct{ target string }

func (r redirectTo) Error() string { return "redirect to " + r.target }

type taskView struct {
	batuta.TaskRun
	Index       int
	Output      preview
	HasOutput   bool
	ErrorFirst  string // the first line of the error
	ErrorMore   bool   // the error has more lines (a stack)
	Join        string
	MaxAttempts int
}

type runData struct {
	Run        *batuta.Run
	Tasks      []taskView
	DAG        dag
	Timeline   timeline
	Event      preview
	CanRetry   bool
	CanCancel  bool
	CanFork    bool
	Duration   time.Duration
	TaskNames  []string
	Registered bool
	ErrorFirst string // the run error's first line
	ErrorMore  bool   // it has more (a stack)
}

func (h *handler) run(r *http.Request, p *page) (int, error) {
	id := r.PathValue("id")
	run, err := h.o.GetRun(r.Context(), id)
	if errors.Is(err, batuta.ErrRunNotFound) {
		return 0, notFound{"There is no run " + strconv.Quote(id) + " (it may have been pruned)."}
	}
	if err != nil {
		return 0, err
	}
	wf, registered := h.o.Workflow(run.Workflow)
	info := map[string]batuta.TaskInfo{}
	for _, t := range wf.Tasks {
		info[t.Name] = t
	}
	d := runData{Run: run, Registered: registered,
		CanRetry:  run.State == batuta.RunFailed || run.State == batuta.RunCanceled,
		CanCancel: !run.Finished(), CanFork: run.Finished() && registered}
	d.Event = makePreview(run.Event.Data, h.cfg.MaxPreviewBytes)
	d.ErrorFirst, _, d.ErrorMore = strings.Cut(strings.TrimSpace(run.Error), "\n")
	for i, t := range run.Tasks {
		if len(t.Deps) == 0 {
			t.Deps = info[t.Name].Deps
		}
		tv := taskView{TaskRun: t, Index: i, Join: info[t.Name].Join, MaxAttempts: info[t.Name].MaxAttempts}
		if t.Output != nil {
			tv.Output, tv.HasOutput = makePreview(t.Output, h.cfg.MaxPreviewBytes), true
		}
		tv.ErrorFirst, _, tv.ErrorMore = strings.Cut(strings.TrimSpace(t.Error), "\n")
		d.Tasks = append(d.Tasks, tv)
		d.TaskNames = append(d.TaskNames, t.Name)
	}
	end := run.FinishedAt
	if end.IsZero() {
		end = p.Now
	}
	d.Duration = end.Sub(run.CreatedAt)
	d.DAG = layoutDAG(d.Tasks)
	d.Timeline = makeTimeline(run, p.Now)
	p.Title, p.Data = "Run "+shortID(run.ID), d
	return 0, nil
}

type scheduleRow struct {
	Workflow string
	Info     *batuta.ScheduleInfo
	Zone     string
	Next     []time.Time
	LastTick time.Time
	TickErr  string
	Paused   bool
	Running  bool
}

type schedulesData struct {
	Rows      []scheduleRow
	ClockZone string
}

func (h *handler) schedules(r *http.Request, p *page) (int, error) {
	ctx := r.Context()
	paused, err := h.o.Paused(ctx)
	if err != nil {
		return 0, err
	}
	d := schedulesData{ClockZone: p.Now.Location().String()}
	for _, b := range h.o.Bindings() {
		if b.Schedule == nil {
			continue
		}
		row := scheduleRow{Workflow: b.Workflow, Info: b.Schedule, Paused: slices.Contains(paused, b.Workflow), Running: b.Running}
		row.Zone = b.Schedule.TimeZone
		if row.Zone == "" {
			row.Zone = d.ClockZone + " (the clock's)"
		}
		row.Next = b.Schedule.NextFires(p.Now, 5)
		row.LastTick, err = h.o.Store().LastTick(ctx, b.Schedule.Name)
		if err != nil {
			row.TickErr = err.Error()
		}
		d.Rows = append(d.Rows, row)
	}
	p.Title, p.Data = "Schedules", d
	return 0, nil
}

type triggerRow struct {
	batuta.BindingInfo
	Healthy bool
	Paused  bool
	// Told: the source told its backlog (Backlog); BacklogErr: it could
	// not (an error, or no answer within backlogTimeout).
	Told       bool
	Backlog    batuta.Backlog
	Lag        time.Duration
	BacklogErr string
}

// backlogTimeout bounds how long the triggers page waits for the sources'
// backlogs (asked all at once): a slow broker or database shows as
// unavailable rather than holding up the page.
const backlogTimeout = 750 * time.Millisecond

func (h *handler) triggers(r *http.Request, p *page) (int, error) {
	paused, err := h.o.Paused(r.Context())
	if err != nil {
		return 0, err
	}
	var rows []triggerRow
	bs := h.o.Bindings()
	ctx, cancel := context.WithTimeout(r.Context(), backlogTimeout)
	defer cancel()
	backlogs := batuta.ReadBacklogs(ctx, bs)
	for i, b := range bs {
		row := triggerRow{BindingInfo: b, Healthy: b.Healthy(p.Now), Paused: slices.Contains(paused, b.Workflow)}
		switch rd := backlogs[i]; {
		case rd.Err == nil:
			row.Told, row.Backlog, row.Lag = true, rd.Backlog, rd.Lag(time.Now())
		case !errors.Is(rd.Err, batuta.ErrNoBacklog):
			row.BacklogErr = rd.Err.Error()
		}
		rows = append(rows, row)
	}
	p.Title, p.Data = "Triggers", rows
	return 0, nil
}

// Actions.

func (h *handler) retryRun(r *http.Request) (string, string, error) {
	id := r.PathValue("id")
	target := "runs/" + url.PathEscape(id)
	var opts []batuta.RetryOption
	from := r.PostFormValue("from")
	if from != "" {
		opts = append(opts, batuta.FromTask(from))
	}
	if err := h.o.Retry(r.Context(), id, opts...); err != nil {
		return "", target, err // the core's error names the run and the reason
	}
	if from != "" {
		return "Run " + shortID(id) + " reopened from task " + from + ".", target, nil
	}
	return "Run " + shortID(id) + " reopened: its failed tasks run again.", target, nil
}

func (h *handler) cancelRun(r *http.Request) (string, string, error) {
	id := r.PathValue("id")
	target := "runs/" + url.PathEscape(id)
	if err := h.o.Cancel(r.Context(), id); err != nil {
		return "", target, fmt.Errorf("cancel %s: %w", shortID(id), err)
	}
	return "Run " + shortID(id) + " canceled.", target, nil
}

func (h *handler) bulk(r *http.Request, retry bool) (string, string, error) {
	q := parseRunsQuery(r.PostForm)
	target := q.link("", "")
	f, err := q.filter(h.o.Now())
	if err != nil {
		return "", target, err
	}
	if retry && f.State != batuta.RunFailed && f.State != batuta.RunCanceled {
		return "", target, errors.New("retry all: filter on the failed or canceled state first")
	}
	if !retry && f.State != batuta.RunPending && f.State != batuta.RunRunning {
		return "", target, errors.New("cancel all: filter on the pending or running state first")
	}
	ctx := context.WithoutCancel(r.Context()) // a closed tab does not stop a bulk action half-way
	var res batuta.BulkResult
	verb := "retried"
	if retry {
		res, err = h.o.RetryRuns(ctx, f)
	} else {
		verb = "canceled"
		res, err = h.o.CancelRuns(ctx, f)
	}
	if err != nil {
		return "", target, fmt.Errorf("%s %d of %d runs, then: %w", verb, res.Done, res.Matched, err)
	}
	return fmt.Sprintf("%d of %d matching runs %s (%d skipped: finished meanwhile or not retryable).", res.Done, res.Matched, verb, res.Skipped), target, nil
}

func (h *handler) retryRuns(r *http.Request) (string, string, error)  { return h.bulk(r, true) }
func (h *handler) cancelRuns(r *http.Request) (string, string, error) { return h.bulk(r, false) }

func (h *handler) pauseWorkflow(pause bool) func(r *http.Request) (string, string, error) {
	return func(r *http.Request) (string, string, error) {
		name := r.PathValue("name")
		back := r.PostFormValue("back")
		if back != "schedules" && back != "triggers" {
			back = ""
		}
		if pause {
			if err := h.o.Pause(r.Context(), name); err != nil {
				return "", back, err
			}
			return "Workflow " + name + " paused: no new task starts; runs and cron ticks wait.", back, nil
		}
		if err := h.o.Resume(r.Context(), name); err != nil {
			return "", back, err
		}
		return "Workflow " + name + " resumed.", back, nil
	}
}
