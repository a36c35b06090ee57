package batutasqlite

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// The waits crash test: a child process (this test binary, running
// TestWaitsCrashChild) drives the store directly and keeps leaving work
// that waits: tasks waiting for a signal with no time limit ("never"), for a
// timer an hour ahead ("timer"), signals buffered for a task not yet at its
// wait ("sig"), and parent tasks waiting for a child run ("child"). It
// appends a line to a log file after each call returned (after its
// commit). The parent kills it with SIGKILL in the middle, reopens the file,
// checks that every reported wait, buffered signal and parent link is there,
// then signals the waiters and drives every run to success: each signal's
// data reaches its task, each parent task wakes when its child finishes.
const (
	waitsCrashDirEnv = "BATUTA_SQLITE_WAITS_CRASH_DIR"
	waitsCrashLines  = 300 // lines logged before the kill
)

func TestWaitsCrash(t *testing.T) {
	if os.Getenv(waitsCrashDirEnv) != "" {
		t.Skip("running as the crash child")
	}
	t.Parallel()
	dir := t.TempDir()
	logPath := runChildUntilKilled(t, "TestWaitsCrashChild", waitsCrashDirEnv, dir, waitsCrashLines)

	type logged struct{ kind, run, arg string }
	var entries []logged
	f, err := os.Open(logPath)
	require.NoError(t, err)
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.Fields(sc.Text())
		if len(parts) != 3 {
			continue // a line cut by the kill
		}
		entries = append(entries, logged{parts[0], parts[1], parts[2]})
	}
	require.NoError(t, sc.Err())
	require.NotEmpty(t, entries)

	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(dir, "store.db"), Config{Logger: quietLogger()})
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()
	checkFlowCounters(t, s.db)
	wantData := map[string]string{} // run -> the signal data its task must end with
	timers := 0
	for _, e := range entries {
		r, err := s.GetRun(ctx, e.run)
		require.NoError(t, err, "run %s reported created is lost", e.run)
		require.False(t, r.Finished(), "run %s", e.run)
		switch e.kind {
		case "never", "timer":
			w := r.Task("w")
			require.Equal(t, batuta.TaskPending, w.State, "run %s", e.run)
			require.False(t, w.WaitingSince.IsZero(), "run %s: the wait is lost", e.run)
			require.Equal(t, e.kind, w.WaitingFor)
			if e.kind == "timer" {
				timers++
				require.True(t, w.NotBefore.Equal(fbase.Add(time.Hour)), "run %s: NotBefore %v", e.run, w.NotBefore)
			} else {
				require.True(t, w.NotBefore.IsZero(), "run %s: NotBefore %v", e.run, w.NotBefore)
			}
		case "sig":
			var data string
			require.NoError(t, s.db.QueryRow(`SELECT data FROM batuta_signals WHERE run_id = ? AND name = 'go'`, e.run).Scan(&data),
				"run %s: the buffered signal is lost", e.run)
			require.JSONEq(t, e.arg, data)
			wantData[e.run] = e.arg
		case "child":
			require.Equal(t, e.arg, r.Task("p").Child)
			require.False(t, r.Task("p").WaitingSince.IsZero(), "run %s: the wait is lost", e.run)
			c, err := s.GetRun(ctx, e.arg)
			require.NoError(t, err)
			require.Equal(t, &batuta.RunLink{RunID: e.run, Task: "p"}, c.Parent)
		}
	}
	if timers > 0 {
		due, err := s.NextDue(ctx, []string{"ww"}, fbase)
		require.NoError(t, err)
		require.True(t, due.Equal(fbase.Add(time.Hour)), "NextDue %v", due)
	}

	// Rescue what the child held, deliver a signal to every task that
	// waits for one with no time limit, then drive everything to the end.
	_, _, err = s.RescueExpired(ctx, fbase.Add(2*time.Minute), 5)
	require.NoError(t, err)
	now := fbase.Add(2 * time.Hour)
	rows, err := s.db.Query(`SELECT run_id FROM batuta_tasks WHERE name = 'w' AND state = 'pending'
    AND waiting_since IS NOT NULL AND due_at = ?`, int64(neverDue))
	require.NoError(t, err)
	neverIDs, err := scanStrings(rows)
	require.NoError(t, err)
	for _, id := range neverIDs {
		res, err := s.SendSignal(ctx, batuta.SignalSend{RunID: id, Name: "go", Data: json.RawMessage(`"late"`), SentAt: now})
		require.NoError(t, err)
		require.True(t, res.Delivered, "run %s", id)
		wantData[id] = `"late"`
	}
	for round := 0; ; round++ {
		require.Less(t, round, 10000, "no end")
		cs := claimAt(t, s, now, 8)
		if len(cs) == 0 {
			break
		}
		for _, c := range cs {
			out, consume := `1`, int64(0)
			if c.Signal != nil {
				out, consume = string(c.Signal.Data.(json.RawMessage)), c.Signal.Seq
			}
			succeed(t, s, c, now, out, consume)
		}
	}
	checkFlowCounters(t, s.db)
	var total, succeeded, signals int
	require.NoError(t, s.db.QueryRow(`SELECT count(*), count(*) FILTER (WHERE state = 'succeeded'), (SELECT count(*) FROM batuta_signals) FROM batuta_runs`).
		Scan(&total, &succeeded, &signals))
	require.Equal(t, total, succeeded, "every run succeeds")
	require.Zero(t, signals, "every buffered signal is consumed")
	for id, data := range wantData {
		r := getRun(t, s, id)
		require.JSONEq(t, data, string(r.Task("w").Output.(json.RawMessage)), "run %s", id)
	}
	t.Logf("killed after %d logged waits (%d runs stored, %d waiting with no limit signalled); all succeeded afterwards",
		len(entries), total, len(neverIDs))
}

// TestWaitsCrashChild is TestWaitsCrash's child process; it skips unless
// started by it. It runs until killed.
func TestWaitsCrashChild(t *testing.T) {
	dir := os.Getenv(waitsCrashDirEnv)
	if dir == "" {
		t.Skip("helper process of TestWaitsCrash")
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
	claimOne := func(wf string) batuta.Claim {
		cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "child", Workflows: []string{wf}, Limit: 1, Now: fbase, LeaseUntil: fbase.Add(time.Minute)})
		require.NoError(t, err)
		require.Len(t, cs, 1)
		return cs[0]
	}
	wait := func(c batuta.Claim, retryAt time.Time, waitFor, child string) {
		res, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: c.Ref(), Outcome: batuta.OutcomeWait, Attempt: c.Attempt,
			FinishedAt: fbase, RetryAt: retryAt, WaitFor: waitFor, Child: child}})
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
	}
	for i := 0; ; i++ {
		at := fbase.Add(time.Duration(i) * time.Millisecond)
		switch i % 4 {
		case 0, 1:
			nr := newFlowRun("ww", fmt.Sprint(i), at, []batuta.TaskSpec{{Name: "w", Signal: "go"}})
			_, _, err := s.CreateRun(ctx, nr)
			require.NoError(t, err)
			c := claimOne("ww")
			if i%4 == 0 {
				wait(c, time.Time{}, "never", "")
				logf("never %s -", c.RunID)
			} else {
				wait(c, fbase.Add(time.Hour), "timer", "")
				logf("timer %s -", c.RunID)
			}
		case 2:
			nr := newFlowRun("ws", fmt.Sprint(i), at, []batuta.TaskSpec{{Name: "a"}, {Name: "w", Deps: []int{0}, Signal: "go"}})
			_, _, err := s.CreateRun(ctx, nr)
			require.NoError(t, err)
			data := fmt.Sprintf(`{"i":%d}`, i)
			_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: nr.ID, Name: "go", Data: json.RawMessage(data), SentAt: at})
			require.NoError(t, err)
			logf("sig %s %s", nr.ID, data)
		case 3:
			nr := newFlowRun("wp", fmt.Sprint(i), at, oneTask("p"))
			_, _, err := s.CreateRun(ctx, nr)
			require.NoError(t, err)
			c := claimOne("wp")
			child := newFlowRun("wc", fmt.Sprint(i), at, oneTask("x"))
			child.Parent = &batuta.RunLink{RunID: nr.ID, Task: "p"}
			_, _, err = s.CreateRun(ctx, child)
			require.NoError(t, err)
			wait(c, time.Time{}, "run "+child.ID, child.ID)
			logf("child %s %s", nr.ID, child.ID)
		}
	}
}
