package batuta

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
)

// JoinRow is one row of the join-rule table in docs/workflows.md: the
// outcomes present among a task's dependencies, and what each rule (in
// JoinRule order) decides: "runs", "skipped" or "upstream_failed".
type JoinRow struct {
	Present []TaskState
	Want    [6]string
}

// ParseJoinTable reads the join-rule table from docs/workflows.md (path
// relative to the package directory). It is exported to the external tests.
func ParseJoinTable(path string) ([]JoinRow, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var rows []JoinRow
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "| dependencies finished as |") {
			cols := cells(line)
			want := []string{"dependencies finished as", "`AllSucceeded`", "`AllDone`", "`OneSucceeded`", "`OneFailed`", "`AllFailed`", "`NoneFailed`"}
			if fmt.Sprint(cols) != fmt.Sprint(want) {
				return nil, fmt.Errorf("table header %v, want %v", cols, want)
			}
			in = true
			continue
		}
		if !in || strings.HasPrefix(line, "|---") {
			continue
		}
		if !strings.HasPrefix(line, "|") {
			if len(rows) > 0 {
				break
			}
			continue
		}
		cols := cells(line)
		if len(cols) != 7 {
			return nil, fmt.Errorf("row %q: %d cells", line, len(cols))
		}
		var r JoinRow
		for _, s := range strings.Split(cols[0], " + ") {
			r.Present = append(r.Present, TaskState(strings.TrimSpace(s)))
		}
		for i := range r.Want {
			r.Want[i] = strings.Trim(cols[i+1], "*")
		}
		rows = append(rows, r)
	}
	return rows, sc.Err()
}

func cells(line string) []string {
	parts := strings.Split(strings.Trim(line, "|"), "|")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

var decisionNames = map[joinDecision]string{joinRun: "runs", joinSkip: "skipped", joinUpstreamFailed: "upstream_failed"}

func upstreamOf(states []TaskState, copies int) []UpstreamResult {
	var ups []UpstreamResult
	for c := 0; c < copies; c++ {
		for _, st := range states {
			ups = append(ups, UpstreamResult{Name: fmt.Sprintf("%s-%d", st, c), State: st})
		}
	}
	return ups
}

// TestJoinTableFromDocs checks every cell of the table in docs/workflows.md
// against JoinRule.decide: with one and two dependencies per listed outcome,
// and with canceled in place of failed.
func TestJoinTableFromDocs(t *testing.T) {
	rows, err := ParseJoinTable("docs/workflows.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 15 {
		t.Fatalf("%d rows in the table, want 15 (every non-empty set of the 4 outcomes)", len(rows))
	}
	seen := map[string]bool{}
	for _, row := range rows {
		key := fmt.Sprint(row.Present)
		if seen[key] {
			t.Fatalf("row %s twice", key)
		}
		seen[key] = true
		for _, st := range row.Present {
			if st != TaskSucceeded && st != TaskFailed && st != TaskUpstreamFailed && st != TaskSkipped {
				t.Fatalf("row %s: unknown outcome %q", key, st)
			}
		}
		variants := [][]TaskState{row.Present}
		canceled := make([]TaskState, len(row.Present))
		for i, st := range row.Present {
			canceled[i] = st
			if st == TaskFailed {
				canceled[i] = TaskCanceled
			}
		}
		variants = append(variants, canceled)
		for rule := AllSucceeded; rule <= NoneFailed; rule++ {
			for _, states := range variants {
				for copies := 1; copies <= 2; copies++ {
					d, why := rule.decide(upstreamOf(states, copies))
					if got := decisionNames[d]; got != row.Want[rule] {
						t.Errorf("%s with %v x%d: %s, table says %s", rule, states, copies, got, row.Want[rule])
					}
					if (d == joinRun) != (why == "") {
						t.Errorf("%s with %v: decision %s with reason %q", rule, states, decisionNames[d], why)
					}
					if d == joinUpstreamFailed && !strings.Contains(why, "dependency ") {
						t.Errorf("%s with %v: upstream_failed reason %q names no dependency", rule, states, why)
					}
				}
			}
		}
	}
}

func TestJoinNoDependenciesRuns(t *testing.T) {
	for rule := AllSucceeded; rule <= NoneFailed; rule++ {
		if d, _ := rule.decide(nil); d != joinRun {
			t.Errorf("%s without dependencies: %s", rule, decisionNames[d])
		}
	}
}

// TestJoinEarly: a FireEarly task claimed while some dependencies are
// unfinished runs on the one match that made it ready.
func TestJoinEarly(t *testing.T) {
	cases := []struct {
		rule JoinRule
		ups  []TaskState
		want joinDecision
	}{
		{OneSucceeded, []TaskState{TaskRunning, TaskSucceeded, TaskPending}, joinRun},
		{OneSucceeded, []TaskState{TaskFailed, TaskSucceeded, TaskRunning}, joinRun},
		{OneFailed, []TaskState{TaskRunning, TaskFailed}, joinRun},
		{OneFailed, []TaskState{TaskUpstreamFailed, TaskPending}, joinRun},
		{OneFailed, []TaskState{TaskSucceeded, TaskCanceled, TaskRunning}, joinRun},
	}
	for _, c := range cases {
		if d, _ := c.rule.decide(upstreamOf(c.ups, 1)); d != c.want {
			t.Errorf("%s early with %v: %s, want %s", c.rule, c.ups, decisionNames[d], decisionNames[c.want])
		}
	}
}

func TestFiresOn(t *testing.T) {
	ok := TaskSpec{FireOn: TaskSucceeded}
	bad := TaskSpec{FireOn: TaskFailed}
	none := TaskSpec{}
	for _, st := range []TaskState{TaskSucceeded, TaskFailed, TaskUpstreamFailed, TaskCanceled, TaskSkipped} {
		if got, want := ok.FiresOn(st), st == TaskSucceeded; got != want {
			t.Errorf("FireOn succeeded, dependency %s: %v", st, got)
		}
		if got, want := bad.FiresOn(st), st == TaskFailed || st == TaskUpstreamFailed || st == TaskCanceled; got != want {
			t.Errorf("FireOn failed, dependency %s: %v", st, got)
		}
		if none.FiresOn(st) {
			t.Errorf("no FireOn fires on %s", st)
		}
	}
	if !TaskUpstreamFailed.Finished() || TaskUpstreamFailed.CountsAsFailure() != true || TaskSkipped.CountsAsFailure() {
		t.Error("TaskUpstreamFailed must be terminal and a failure; TaskSkipped not a failure")
	}
}
