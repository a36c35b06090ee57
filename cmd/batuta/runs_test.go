package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// tableRows splits a table's output into rows of fields (split on runs of
// two or more spaces, the tabwriter padding), header first.
func tableRows(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		var fields []string
		for _, f := range strings.Split(line, "  ") {
			if f = strings.TrimSpace(f); f != "" {
				fields = append(fields, f)
			}
		}
		rows = append(rows, fields)
	}
	return rows
}

func TestRunsListTableAndJSON(t *testing.T) {
	stores(t, func(t *testing.T, f *fixture) {
		// Every run, newest first, as a table.
		r := cli(t, nil, f.with("runs", "list")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		rows := tableRows(r.stdout)
		require.Equal(t, []string{"ID", "WORKFLOW", "STATE", "CREATED", "TOOK", "TASKS", "ERROR"}, rows[0])
		require.Len(t, rows, 7)
		order := []string{"later", "busy", "refused", "dup", "declined", "ok"}
		states := []string{"pending", "running", "failed", "canceled", "failed", "succeeded"}
		tasks := []string{"0/2", "0/2", "2/2", "2/2", "2/2", "2/2"}
		for i, name := range order {
			require.Equal(t, f.ids[name], rows[i+1][0], "row %d", i+1)
			require.Equal(t, states[i], rows[i+1][2], name)
			require.Equal(t, tasks[i], rows[i+1][5], name)
		}
		require.Equal(t, "orders", rows[5][1])
		require.Contains(t, r.stdout, "card declined (stack line 1)", "newlines in errors are flattened in tables")

		// Filtered by workflow and state, as JSON.
		r = cli(t, nil, f.with("runs", "list", "--workflow", "billing", "--state", "failed", "--json")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		var got []map[string]any
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &got))
		require.Len(t, got, 1)
		require.Equal(t, f.ids["refused"], got[0]["id"])
		require.Equal(t, "failed", got[0]["state"])
		require.Equal(t, map[string]any{"order": "refused"}, got[0]["event"].(map[string]any)["data"], "JSON event data inline")
		require.NotContains(t, got[0], "tasks", "listings leave the tasks out")

		// An empty result is an empty array, exit 0.
		r = cli(t, nil, f.with("runs", "list", "--workflow", "nope", "--json")...)
		require.Equal(t, exitOK, r.code)
		require.Equal(t, "[]\n", r.stdout)

		// A full page says how to get the next one.
		r = cli(t, nil, f.with("runs", "list", "--limit", "2")...)
		require.Equal(t, exitOK, r.code)
		require.Len(t, tableRows(r.stdout), 3)
		require.Contains(t, r.stderr, "--after "+f.ids["busy"])
	})
}

func TestRunsListNewFilters(t *testing.T) {
	// RunFilter's new fields (States, ErrorContains, Subject, After): the
	// CLI re-checks every listed run, so even a store that ignores a field
	// never shows (or acts on) a run the filter excludes.
	stores(t, func(t *testing.T, f *fixture) {
		r := cli(t, nil, f.with("runs", "list", "--state", "failed,canceled", "--json")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		var got []idOnly
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &got))
		require.ElementsMatch(t, []string{f.ids["refused"], f.ids["dup"], f.ids["declined"]}, ids(got))

		r = cli(t, nil, f.with("runs", "list", "--error", "CONNECTION refused", "--json")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		got = nil
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &got))
		require.Equal(t, []string{f.ids["refused"]}, ids(got))

		r = cli(t, nil, f.with("runs", "list", "--subject", "customer-ok", "--json")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		got = nil
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &got))
		require.Equal(t, []string{f.ids["ok"]}, ids(got))
	})
}

// idOnly decodes the ID of a run of --json output.
type idOnly struct {
	ID string `json:"id"`
}

func ids(runs []idOnly) []string {
	out := []string{}
	for _, r := range runs {
		out = append(out, r.ID)
	}
	return out
}

func TestRunsShow(t *testing.T) {
	stores(t, func(t *testing.T, f *fixture) {
		r := cli(t, nil, f.with("runs", "show", f.ids["declined"])...)
		require.Equal(t, exitOK, r.code, r.stderr)
		require.Contains(t, r.stdout, "Run:      "+f.ids["declined"])
		require.Contains(t, r.stdout, "Workflow: orders")
		require.Contains(t, r.stdout, "State:    failed")
		require.Contains(t, r.stdout, "Event:    ev-declined  customer-declined")
		rows := tableRows(r.stdout[strings.Index(r.stdout, "TASK"):])
		require.Equal(t, []string{"TASK", "STATE", "ATTEMPTS", "TOOK", "DEPS", "NOTE"}, rows[0])
		require.Equal(t, []string{"charge", "failed", "1"}, rows[1][:3])
		require.Equal(t, []string{"ship", "upstream_failed", "0", "-", "charge", "charge failed"}, rows[2])
		// The failed task's attempts, its error in full (lines kept).
		require.Contains(t, r.stdout, "charge: attempts\n  #1  ")
		require.Contains(t, r.stdout, "      card declined\n      (stack line 1)\n")

		r = cli(t, nil, f.with("runs", "show", f.ids["ok"], "--data")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		require.Contains(t, r.stdout, "Event data:\n  {\n    \"order\": \"ok\"\n  }")
		require.Contains(t, r.stdout, "Output of charge:\n  \"done\"")

		r = cli(t, nil, f.with("runs", "show", f.ids["busy"], "--json")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		var shown struct {
			State batuta.RunState  `json:"state"`
			Tasks []batuta.TaskRun `json:"tasks"`
		}
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &shown))
		require.Equal(t, batuta.RunRunning, shown.State)
		require.Len(t, shown.Tasks, 2)
		require.Equal(t, batuta.TaskRunning, shown.Tasks[0].State)

		r = cli(t, nil, f.with("runs", "show", "01900000-0000-7000-8000-000000000000")...)
		require.Equal(t, exitNotFound, r.code)
		require.Contains(t, r.stderr, "run not found")
	})
}

func TestRunsCancel(t *testing.T) {
	stores(t, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		// One by ID, with a reason.
		r := cli(t, nil, f.with("runs", "cancel", f.ids["later"], "--reason", "test says so")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		require.Contains(t, r.stdout, "canceled 1 of 1 run(s)")
		run, err := f.store.GetRun(ctx, f.ids["later"])
		require.NoError(t, err)
		require.Equal(t, batuta.RunCanceled, run.State)
		require.Contains(t, run.Error, "test says so")

		// A finished run is skipped, not an error.
		r = cli(t, nil, f.with("runs", "cancel", f.ids["ok"], "--json")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		var sum actionSummary
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &sum))
		require.Equal(t, actionSummary{Action: "cancel", Matched: 1, Skipped: 1,
			Runs: []actionResult{{ID: f.ids["ok"], Status: "skipped", Error: "already finished"}}}, sum)

		// Bulk, dry run first: nothing changes.
		r = cli(t, nil, f.with("runs", "cancel", "--workflow", "billing", "--dry-run")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		require.Contains(t, r.stdout, "dry run: 1 run(s) would be canceled")
		require.Contains(t, r.stdout, f.ids["busy"])
		run, err = f.store.GetRun(ctx, f.ids["busy"])
		require.NoError(t, err)
		require.Equal(t, batuta.RunRunning, run.State)

		// Then for real (the running run's claimed task is canceled when
		// its worker reports; the run is marked canceled at once).
		r = cli(t, nil, f.with("runs", "cancel", "--workflow", "billing")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		require.Contains(t, r.stdout, "canceled 1 of 1 run(s)")
		run, err = f.store.GetRun(ctx, f.ids["busy"])
		require.NoError(t, err)
		require.Equal(t, batuta.TaskCanceled, run.Tasks[1].State, "its pending task is canceled at once")
		require.Contains(t, run.Error, "canceled with the batuta CLI")
	})
}

func TestRunsRetry(t *testing.T) {
	stores(t, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		// Bulk: every failed run of orders becomes pending, the failed and
		// upstream_failed tasks reset; billing's failure is left alone.
		r := cli(t, nil, f.with("runs", "retry", "--state", "failed", "--workflow", "orders")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		require.Contains(t, r.stdout, "retried 1 of 1 run(s)")
		run, err := f.store.GetRun(ctx, f.ids["declined"])
		require.NoError(t, err)
		require.Equal(t, batuta.RunPending, run.State)
		require.Equal(t, 1, run.Retries)
		require.Equal(t, batuta.TaskPending, run.Tasks[0].State)
		require.Len(t, run.Tasks[0].Attempts, 1, "the history of attempts is kept")
		run, err = f.store.GetRun(ctx, f.ids["refused"])
		require.NoError(t, err)
		require.Equal(t, batuta.RunFailed, run.State)

		// By ID, with one missing: partial (exit 4), as JSON.
		missing := "01900000-0000-7000-8000-000000000000"
		r = cli(t, nil, f.with("runs", "retry", f.ids["refused"], missing, "--json")...)
		require.Equal(t, exitPartial, r.code, r.stderr)
		var sum actionSummary
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &sum))
		require.Equal(t, 2, sum.Matched)
		require.Equal(t, 1, sum.Done)
		require.Equal(t, 1, sum.Failed)
		require.Equal(t, []string{"charge", "ship"}, sum.Runs[0].Reset)
		require.Equal(t, "not_found", sum.Runs[1].Status)

		// A succeeded run is not retryable (exit 1), unless --from.
		r = cli(t, nil, f.with("runs", "retry", f.ids["ok"])...)
		require.Equal(t, exitError, r.code)
		require.Contains(t, r.stdout, "cannot be retried")
		r = cli(t, nil, f.with("runs", "retry", f.ids["ok"], "--from", "ship")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		require.Contains(t, r.stdout, "reset ship")

		// Only missing runs: not found.
		r = cli(t, nil, f.with("runs", "retry", missing)...)
		require.Equal(t, exitNotFound, r.code)
	})
}

func TestBulkProgressBar(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	f := &fixture{dsn: "sqlite:" + path, args: []string{"--dsn", "sqlite:" + path}}
	s := openSQLite(t, path)
	f.store = s
	seed(t, f)
	// Three more pending runs to cancel.
	for range 3 {
		createPending(t, s, "batch")
	}
	r := cliTTY(t, true, nil, f.with("runs", "cancel", "--workflow", "batch")...)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stderr, "cancel  ["+strings.Repeat(".", barWidth)+"]  0/3")
	require.Contains(t, r.stderr, "cancel  ["+strings.Repeat("#", barWidth)+"]  3/3\n")
	require.Contains(t, r.stdout, "canceled 3 of 3 run(s)")

	// No bar when stderr is not a terminal, nor with --json.
	for range 2 {
		createPending(t, s, "batch")
	}
	r = cliTTY(t, true, nil, f.with("runs", "cancel", "--workflow", "batch", "--json")...)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Empty(t, r.stderr)
}

func TestExitCodes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "e.db")
	f := &fixture{dsn: "sqlite:" + path, args: []string{"--dsn", "sqlite:" + path}}
	f.store = openSQLite(t, path)
	seed(t, f)
	missing := "01900000-0000-7000-8000-000000000000"
	for _, tc := range []struct {
		name string
		vars map[string]string
		args []string
		code int
		msg  string
	}{
		{"ok", nil, f.with("runs", "list"), exitOK, ""},
		{"dsn from the environment", map[string]string{"BATUTA_DSN": f.dsn}, []string{"runs", "list"}, exitOK, ""},
		{"no command", nil, nil, exitUsage, "a command is needed"},
		{"unknown command", nil, []string{"nope"}, exitUsage, `unknown command "nope"`},
		{"group alone", nil, []string{"runs"}, exitUsage, "needs a subcommand"},
		{"unknown flag", nil, f.with("runs", "list", "--nope"), exitUsage, "unknown flag: --nope"},
		{"bad state", nil, f.with("runs", "list", "--state", "done"), exitUsage, `--state "done"`},
		{"bad limit", nil, f.with("runs", "list", "--limit", "0"), exitUsage, "--limit 0"},
		{"bad since", nil, f.with("runs", "list", "--since", "yesterday"), exitUsage, `--since "yesterday"`},
		{"no dsn", nil, []string{"runs", "list"}, exitUsage, "no store named"},
		{"bad scheme", nil, []string{"runs", "list", "--dsn", "mysql://x"}, exitUsage, `unsupported scheme "mysql"`},
		{"show needs an ID", nil, f.with("runs", "show"), exitUsage, "accepts 1 arg"},
		{"retry needs a target", nil, f.with("runs", "retry"), exitUsage, "name run IDs, or select runs"},
		{"IDs and filters", nil, f.with("runs", "cancel", missing, "--workflow", "x"), exitUsage, "not both"},
		{"not found", nil, f.with("runs", "show", missing), exitNotFound, "run not found"},
		{"all missing", nil, f.with("runs", "cancel", missing), exitNotFound, "run not found"},
		{"partial", nil, f.with("runs", "cancel", f.ids["later"], missing), exitPartial, "1 of 2 run(s) failed"},
		{"missing file", nil, []string{"runs", "list", "--dsn", "sqlite:" + filepath.Join(t.TempDir(), "none.db")}, exitError, "no such file"},
		{"help", nil, []string{"runs", "retry", "--help"}, exitOK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := cli(t, tc.vars, tc.args...)
			require.Equal(t, tc.code, r.code, r.stderr)
			require.Contains(t, r.stderr, tc.msg)
			if tc.code == exitUsage {
				require.Contains(t, r.stderr, "--help' for usage.")
			}
		})
	}
}

func TestSchemaBehindExitCode(t *testing.T) {
	// A SQLite file with no batuta tables: the commands do not migrate it;
	// they say to, with exit code 5, and migrate up fixes it.
	path := filepath.Join(t.TempDir(), "empty.db")
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	dsn := "sqlite:" + path
	r := cli(t, nil, "runs", "list", "--dsn", dsn)
	require.Equal(t, exitSchema, r.code)
	require.Contains(t, r.stderr, "is at version 0, this batuta needs")
	require.Contains(t, r.stderr, "run 'batuta migrate up'")

	r = cli(t, nil, "migrate", "status", "--dsn", dsn, "--json")
	require.Equal(t, exitSchema, r.code)
	var st struct {
		Current, Needed, Pending int
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st))
	require.Equal(t, 0, st.Current)
	require.Positive(t, st.Needed)
	require.Equal(t, st.Needed, st.Pending)

	r = cli(t, nil, "migrate", "up", "--dsn", dsn)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "applied")
	r = cli(t, nil, "runs", "list", "--dsn", dsn)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Equal(t, "no runs\n", r.stdout)
}

func TestHelpShowsExamples(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"runs", "list", "--help"}, {"runs", "show", "--help"}, {"runs", "retry", "--help"},
		{"runs", "cancel", "--help"}, {"stats", "--help"}, {"dlq", "list", "--help"}, {"dlq", "redrive", "--help"}, {"schedules", "next", "--help"}, {"migrate", "up", "--help"}, {"migrate", "status", "--help"},
	} {
		r := cli(t, nil, args...)
		require.Equal(t, exitOK, r.code, args)
		require.Contains(t, r.stdout, "Examples:\n", args)
		require.Contains(t, r.stdout, "\n  batuta ", args)
	}
	r := cli(t, nil, "--help")
	require.Contains(t, r.stdout, "Exit codes:")
	require.Contains(t, r.stdout, "4  partial success")
}

func TestStats(t *testing.T) {
	stores(t, func(t *testing.T, f *fixture) {
		r := cli(t, nil, f.with("stats")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		rows := tableRows(r.stdout)
		require.Equal(t, []string{"WORKFLOW", "SUCCEEDED", "FAILED", "CANCELED", "P50", "P95", "RUNNING", "PENDING", "WAITING", "OLDEST PENDING"}, rows[0])
		require.Equal(t, []string{"billing", "0", "1", "0"}, rows[1][:4])
		require.Equal(t, []string{"1", "1", "0"}, rows[1][6:9], "busy is running, later is pending")
		require.Equal(t, []string{"orders", "1", "1", "1"}, rows[2][:4])
		require.Equal(t, []string{"0", "0", "0", "-"}, rows[2][6:])
		require.Equal(t, "(finished: the last 1h0m0s)", strings.Join(rows[3], " "))

		r = cli(t, nil, f.with("stats", "--json", "--window", "24h")...)
		require.Equal(t, exitOK, r.code, r.stderr)
		var stats []batuta.WorkflowStats
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &stats))
		require.Len(t, stats, 2)
		require.Equal(t, 1, stats[0].Pending)
		require.False(t, stats[0].OldestPending.IsZero())
	})
}
