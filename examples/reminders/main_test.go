package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
)

// syncBuffer is an io.Writer the test can read while run writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var (
	reminderRE = regexp.MustCompile(`^reminder order=(\S+) due=(\S+) sent=(\S+)$`)
	doneRE     = regexp.MustCompile(`^(?:shipped|alert) order=(\S+) `)
	createdRE  = regexp.MustCompile(`created orders (\S+)-001 to \S+-(\d+)`)
)

// parseLines parses the reminder lines of out: for each order, the (due,
// sent) pairs printed; and the orders that printed a done line.
func parseLines(t *testing.T, out string) (reminded map[string][][2]time.Time, done map[string]int) {
	t.Helper()
	reminded, done = map[string][][2]time.Time{}, map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		if m := reminderRE.FindStringSubmatch(line); m != nil {
			due, err := time.Parse(time.RFC3339Nano, m[2])
			if err != nil {
				t.Fatalf("line %q: due: %v", line, err)
			}
			sent, err := time.Parse(time.RFC3339Nano, m[3])
			if err != nil {
				t.Fatalf("line %q: sent: %v", line, err)
			}
			reminded[m[1]] = append(reminded[m[1]], [2]time.Time{due, sent})
		} else if m := doneRE.FindStringSubmatch(line); m != nil {
			done[m[1]]++
		} else if line != "" {
			t.Fatalf("unexpected output line %q", line)
		}
	}
	return reminded, done
}

// checkOrders asserts that each of the orders prefix-001..n got exactly
// one reminder, not before its due time, and is done.
func checkOrders(t *testing.T, out, prefix string, n int) {
	t.Helper()
	reminded, done := parseLines(t, out)
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("%s-%03d", prefix, i)
		rs := reminded[id]
		if len(rs) != 1 {
			t.Errorf("order %s: %d reminders, want exactly 1: %v", id, len(rs), rs)
			continue
		}
		if due, sent := rs[0][0], rs[0][1]; sent.Before(due) {
			t.Errorf("order %s: reminder sent %v before its due time %v", id, due.Sub(sent), due)
		}
		if done[id] == 0 {
			t.Errorf("order %s: never done (no shipped or alert line)", id)
		}
	}
	if len(reminded) != n {
		t.Errorf("%d orders reminded, want %d", len(reminded), n)
	}
}

func TestRemindersInMemory(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errOut syncBuffer
	opt, err := parseFlags([]string{"-orders", "12", "-hour", "20ms"}, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	if err := run(ctx, opt, &out, &errOut); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, errOut.String())
	}
	m := createdRE.FindStringSubmatch(errOut.String())
	if m == nil {
		t.Fatalf("no 'created orders' line in stderr:\n%s", errOut.String())
	}
	checkOrders(t, out.String(), m[1], 12)
	_, done := parseLines(t, out.String())
	alerts := strings.Count(out.String(), "alert order=")
	if alerts != 3 || len(done) != 12 {
		t.Errorf("%d alerts (want 3: every fourth order never ships), %d orders done; output:\n%s", alerts, len(done), out.String())
	}
}

func TestFlagsRefuseBadValues(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"-store", "redis"}, {"-orders", "-1"}, {"-hour", "0"}, {"-resume"}, {"-schema", "Bad-Name"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) accepted it", args)
		}
	}
}

// TestKillAndResumeSQLite builds the program, runs it on a SQLite store,
// kills it with SIGKILL once a few reminders went out, and runs it again
// with -resume: every order gets exactly one reminder in all, never before
// its due time, and every order is done.
func TestKillAndResumeSQLite(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the program twice")
	}
	dir := t.TempDir()
	dsn := filepath.Join(dir, "reminders.db")
	skipWithoutSQLiteWaits(t, filepath.Join(dir, "probe.db"))

	bin := filepath.Join(dir, "reminders")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	const n = 16
	args := []string{"-store", "sqlite", "-dsn", dsn, "-hour", "200ms"}

	// First run: killed after the third reminder line.
	first := exec.Command(bin, append(args, "-orders", strconv.Itoa(n))...)
	var errOut1 syncBuffer
	first.Stderr = &errOut1
	stdout, err := first.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	var out1 strings.Builder
	sc := bufio.NewScanner(stdout)
	seen := 0
	for seen < 3 && sc.Scan() {
		out1.WriteString(sc.Text() + "\n")
		if strings.HasPrefix(sc.Text(), "reminder ") {
			seen++
		}
	}
	if err := first.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	for sc.Scan() { // the lines written before the kill
		out1.WriteString(sc.Text() + "\n")
	}
	werr := first.Wait()
	if seen < 3 {
		t.Fatalf("first run ended before 3 reminders (%v); stderr:\n%s", werr, errOut1.String())
	}
	var ee *exec.ExitError
	if !errors.As(werr, &ee) || ee.ExitCode() != -1 {
		t.Fatalf("first run was not killed by a signal: %v", werr)
	}
	m := createdRE.FindStringSubmatch(errOut1.String())
	if m == nil {
		t.Fatalf("no 'created orders' line in stderr:\n%s", errOut1.String())
	}
	reminded, _ := parseLines(t, out1.String())
	if len(reminded) >= n {
		t.Fatalf("all %d orders were reminded before the kill; the test proves nothing", n)
	}

	// Second run: -resume finishes what the store holds.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	second := exec.CommandContext(ctx, bin, append(args, "-resume")...)
	var out2, errOut2 syncBuffer
	second.Stdout, second.Stderr = &out2, &errOut2
	if err := second.Run(); err != nil {
		t.Fatalf("resumed run: %v\nstderr:\n%s", err, errOut2.String())
	}
	t.Logf("before the kill: %d orders reminded; after -resume: the rest", len(reminded))
	checkOrders(t, out1.String()+out2.String(), m[1], n)
}

// skipWithoutSQLiteWaits skips the test when the SQLite store does not
// implement durable waits yet (its SendSignal answers ErrUnsupported).
func skipWithoutSQLiteWaits(t *testing.T, path string) {
	t.Helper()
	st, err := batutasqlite.Open(context.Background(), path, batutasqlite.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = st.SendSignal(context.Background(), batuta.SignalSend{RunID: "probe", Name: "probe", SentAt: time.Now()})
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skip("the SQLite store does not implement durable waits yet (SendSignal: ErrUnsupported)")
	}
	_ = os.Remove(path)
}
