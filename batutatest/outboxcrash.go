package batutatest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// OutboxCrash is the crash scenario of an outbox adapter (TestOutboxCrash):
// a consumer process killed in the middle of a batch, after firing rows it
// had not deleted yet; a new consumer redelivers them and a durable store
// deduplicates them by event ID.
type OutboxCrash struct {
	// Fixture is a fresh fixture (nothing installed). Required.
	Fixture OutboxFixture
	// Fire is a durable "store" next to the outbox: it logs every fire
	// and accepts each event ID once. Counts returns the fires logged, the
	// event IDs accepted, and the event IDs fired more than once.
	// Required.
	Fire   func(ctx context.Context, ev batuta.Event) error
	Counts func(ctx context.Context) (fires, accepted, dupes int, err error)
	// Helper returns the command that runs RunCrashHelper on the
	// fixture's outbox in another process (the test binary, with
	// -test.run and the environment set). Required.
	Helper func(t *testing.T) *exec.Cmd
	// Consumer returns a Trigger of the outbox with batch size 50 and the
	// default lease, for the restart. Required.
	Consumer func(t *testing.T) batuta.Trigger
	// Timeout bounds the drain after the restart. Default 60 s.
	Timeout time.Duration
}

// CrashHelperBatch and CrashHelperLease are the consumer settings of the
// helper process.
const (
	CrashHelperBatch = 50
	CrashHelperLease = time.Second
)

// RunCrashHelper is the body of the helper process: it runs trig (batch
// size CrashHelperBatch, lease CrashHelperLease) with fire, and blocks
// forever inside the 120th fire after printing READY, to be killed. It
// returns only if Run does.
func RunCrashHelper(trig batuta.Trigger, fire func(ctx context.Context, ev batuta.Event) error) error {
	n := 0
	return trig.Run(context.Background(), func(ctx context.Context, ev batuta.Event) error {
		if err := fire(ctx, ev); err != nil {
			return err
		}
		if n++; n == 120 {
			fmt.Println("READY")
			select {} // wait to be killed
		}
		return nil
	})
}

// TestOutboxCrash runs the crash scenario: 300 captured rows; the helper consumes them in batches
// of 50 and is killed (SIGKILL) inside its 120th fire, after two batches
// were deleted and the third fired in part. A new consumer takes the rows
// over once the dead one's leases expired: every row is accepted once, and
// the 20 rows fired but not deleted before the kill are fired again.
func TestOutboxCrash(t *testing.T, s OutboxCrash) {
	t.Helper()
	if s.Timeout == 0 {
		s.Timeout = 60 * time.Second
	}
	ctx := context.Background()
	f := s.Fixture
	must(t, f.InstallCapture(ctx), "install capture")
	insertRows(t, f, "crash", 300)

	cmd := s.Helper(t)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	must(t, err, "helper stdout")
	must(t, cmd.Start(), "start the helper")
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "READY\n" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper said %q, %v; want READY", line, err)
	}
	must(t, cmd.Process.Kill(), "kill the helper")
	_ = cmd.Wait()

	fires, _, _, err := s.Counts(ctx)
	must(t, err, "count")
	if fires != 120 {
		t.Fatalf("%d fires before the kill, want 120", fires)
	}
	if n := outboxCount(t, f); n != 200 {
		t.Fatalf("outbox holds %d rows after the kill, want 200: two batches deleted, the third fired in part and never deleted", n)
	}

	trig := s.Consumer(t)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- trig.Run(runCtx, s.Fire) }()
	Eventually(t, s.Timeout, "outbox drained after restart", func() bool { return outboxCount(t, f) == 0 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v, want context.Canceled", err)
	}
	fires, accepted, dupes, err := s.Counts(ctx)
	must(t, err, "count")
	if accepted != 300 || fires != 320 || dupes != 20 {
		t.Errorf("%d accepted, %d fires, %d event IDs fired twice; want every committed row accepted (300), "+
			"and the 20 rows fired but not deleted before the kill fired again (320 fires, 20 twice)", accepted, fires, dupes)
	}
}
