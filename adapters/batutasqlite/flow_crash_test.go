package batutasqlite

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// The flow crash test: a child process (this test binary, running
// TestFlowCrashChild) drives the store directly and keeps creating runs
// that wait: delayed runs (an hour ahead), runs of a workflow-level group
// (Max 2, two per CreateRuns batch, some claimed and left running), runs
// whose task is in a task-level group (Max 1: one claimed, the others
// parked), runs of a paused workflow, and rate reservations. It appends a line to a log file
// after each call returned, i.e. after its commit. The parent kills it with
// SIGKILL in the middle, reopens the file and checks that everything the
// child reported is there, that the flow counters agree with the rows, and
// that every run then completes, the group never over its Max.
const (
	flowCrashDirEnv = "BATUTA_SQLITE_FLOW_CRASH_DIR"
	flowCrashLines  = 400 // lines logged before the kill
	flowCrashMax    = 2
)

func TestFlowCrash(t *testing.T) {
	if os.Getenv(flowCrashDirEnv) != "" {
		t.Skip("running as the crash child")
	}
	t.Parallel()
	dir := t.TempDir()
	logPath := runChildUntilKilled(t, "TestFlowCrashChild", flowCrashDirEnv, dir, flowCrashLines)

	// What the child reported as committed.
	f, err := os.Open(logPath)
	require.NoError(t, err)
	defer func() { _ = f.Close() }()
	var (
		runs     []string
		lastRate time.Time
		claimed  int
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		kind, arg, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue // a line cut by the kill
		}
		switch kind {
		case "run":
			runs = append(runs, arg)
		case "rate":
			n, err := strconv.ParseInt(arg, 10, 64)
			require.NoError(t, err)
			lastRate = time.Unix(0, n).UTC()
		case "claim":
			claimed++
		}
	}
	require.NoError(t, sc.Err())
	require.NotEmpty(t, runs)
	require.False(t, lastRate.IsZero())

	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(dir, "store.db"), Config{Logger: quietLogger()})
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()
	checkFlowCounters(t, s.db)
	for _, id := range runs {
		r, err := s.GetRun(ctx, id)
		require.NoError(t, err, "run %s reported created is lost", id)
		require.False(t, r.Finished(), "run %s", id)
		if r.Workflow == "fd" {
			require.True(t, r.StartAt.Equal(fbase.Add(time.Hour)), "delayed run %s: StartAt %v", id, r.StartAt)
		}
	}
	ws, err := s.PausedWorkflows(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"fp"}, ws, "the pause is lost")
	slot, err := s.ReserveRate(ctx, batuta.RateSpec{Key: "fr", Limit: 1, Per: time.Second, Burst: 1}, fbase)
	require.NoError(t, err)
	require.False(t, slot.Before(lastRate.Add(time.Second)), "rate slot %v after a reported %v: the TAT went back", slot, lastRate)
	due, err := s.NextDue(ctx, []string{"fd"}, fbase)
	require.NoError(t, err)
	require.True(t, due.Equal(fbase.Add(time.Hour)), "NextDue of the delayed runs %v", due)
	require.Empty(t, claimAt(t, s, fbase, 10, "fd", "fp"), "delayed and paused runs are claimable")

	// Drive everything to the end: rescue what the child held, resume the
	// paused workflow halfway, and count the group's high-water mark.
	n, _, err := s.RescueExpired(ctx, fbase.Add(2*time.Minute), 5)
	require.NoError(t, err)
	now := fbase.Add(2 * time.Hour)
	inflight, high, resumed := map[string]bool{}, 0, false
	for round := 0; ; round++ {
		require.Less(t, round, 10000, "no end")
		cs := claimAt(t, s, now, 5)
		if len(cs) == 0 {
			if resumed {
				break
			}
			_, err := s.SetPaused(ctx, "fp", false)
			require.NoError(t, err)
			resumed = true
			continue
		}
		limited := 0
		for _, c := range cs {
			switch c.Workflow {
			case "fq":
				inflight[c.RunID] = true
			case "ft":
				limited++
			}
		}
		require.LessOrEqual(t, limited, 1, "task-level group over its Max")
		high = max(high, len(inflight))
		require.LessOrEqual(t, len(inflight), flowCrashMax, "group over its Max")
		for i, r := range completeAll(t, s, cs, batuta.OutcomeSucceeded, now) {
			if r.RunFinished != "" {
				delete(inflight, cs[i].RunID)
			}
		}
		if round%20 == 0 {
			checkFlowCounters(t, s.db)
		}
	}
	checkFlowCounters(t, s.db)
	var total, succeeded, groups int
	require.NoError(t, s.db.QueryRow(`SELECT count(*), count(*) FILTER (WHERE state = 'succeeded'), (SELECT count(*) FROM batuta_groups) FROM batuta_runs`).
		Scan(&total, &succeeded, &groups))
	require.Equal(t, total, succeeded, "every run succeeds")
	require.GreaterOrEqual(t, total, len(runs))
	require.Zero(t, groups)
	require.Equal(t, flowCrashMax, high)
	t.Logf("killed after %d logged runs (%d stored), %d claims left running (%d rescued); all succeeded afterwards, group high-water mark %d",
		len(runs), total, claimed, n, high)
}

// TestFlowCrashChild is TestFlowCrash's child process; it skips unless
// started by it. It runs until killed.
func TestFlowCrashChild(t *testing.T) {
	dir := os.Getenv(flowCrashDirEnv)
	if dir == "" {
		t.Skip("helper process of TestFlowCrash")
	}
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(dir, "store.db"), Config{Synchronous: "NORMAL", Logger: quietLogger()})
	require.NoError(t, err)
	log, err := os.OpenFile(filepath.Join(dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(t, err)
	logf := func(format string, args ...any) {
		_, err := fmt.Fprintf(log, format+"\n", args...) // one write: a line is whole or absent
		require.NoError(t, err)
	}
	_, err = s.SetPaused(ctx, "fp", true)
	require.NoError(t, err)
	group := &batuta.ConcurrencySpec{Key: "fq/k", Max: flowCrashMax}
	limited := []batuta.TaskSpec{{Name: "x", Concurrency: &batuta.ConcurrencySpec{Key: "ft/x", Max: 1}}}
	for i := 0; ; i++ {
		at := fbase.Add(time.Duration(i) * time.Millisecond)
		switch i % 5 {
		case 0:
			nr := newFlowRun("fd", fmt.Sprint(i), at, []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}})
			nr.StartAt = fbase.Add(time.Hour)
			id, _, err := s.CreateRun(ctx, nr)
			require.NoError(t, err)
			logf("run %s", id)
		case 1:
			a, b := newFlowRun("fq", fmt.Sprint(i, "a"), at, oneTask("x")), newFlowRun("fq", fmt.Sprint(i, "b"), at, oneTask("x"))
			a.Concurrency, b.Concurrency = group, group
			res, err := s.CreateRuns(ctx, []batuta.NewRun{a, b})
			require.NoError(t, err)
			logf("run %s", res[0].ID)
			logf("run %s", res[1].ID)
		case 2:
			id, _, err := s.CreateRun(ctx, newFlowRun("fp", fmt.Sprint(i), at, oneTask("x")))
			require.NoError(t, err)
			logf("run %s", id)
		case 3:
			slot, err := s.ReserveRate(ctx, batuta.RateSpec{Key: "fr", Limit: 1, Per: time.Second, Burst: 1}, fbase)
			require.NoError(t, err)
			logf("rate %d", slot.UnixNano())
			cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "child", Workflows: []string{"fq", "ft"}, Limit: 2, Now: fbase, LeaseUntil: fbase.Add(time.Minute)})
			require.NoError(t, err)
			for _, c := range cs {
				logf("claim %s", c.RunID)
			}
		case 4:
			id, _, err := s.CreateRun(ctx, newFlowRun("ft", fmt.Sprint(i), at, limited))
			require.NoError(t, err)
			logf("run %s", id)
		}
	}
}

// runChildUntilKilled runs the test named child in a child process of this
// test binary (with env=dir set, so it knows it is the child), waits until
// it wrote lines lines to dir/log, kills it with SIGKILL (mid-write) and
// returns the log's path.
func runChildUntilKilled(t *testing.T, child, env, dir string, lines int) string {
	t.Helper()
	logPath := filepath.Join(dir, "log")
	cmd := exec.Command(os.Args[0], "-test.run=^"+child+"$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), env+"="+dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		b, _ := os.ReadFile(logPath)
		if bytes.Count(b, []byte("\n")) >= lines {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("child exited before the kill (%v): %s", err, out.String())
		default:
		}
		require.True(t, time.Now().Before(deadline), "child logged too little in 3 minutes")
		time.Sleep(10 * time.Millisecond) // polling pace; the loop waits on the line count
	}
	require.NoError(t, cmd.Process.Kill()) // SIGKILL, mid-write
	<-exited
	return logPath
}
