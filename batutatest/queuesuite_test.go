package batutatest_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// brokenQueue wraps the in-memory queue with one deliberate contract
// violation, to show that the suite catches it.
type brokenQueue struct {
	*batuta.MemoryQueue
	kind string
}

func (b *brokenQueue) Receive(ctx context.Context, max int) ([]batuta.Delivery, error) {
	if b.kind == "over-max" {
		max++
	}
	ds, err := b.MemoryQueue.Receive(ctx, max)
	for i := range ds {
		switch b.kind {
		case "attempt-stuck":
			ds[i].Attempt = 1
		case "truncate-body":
			if len(ds[i].Body) > 1000 {
				ds[i].Body = ds[i].Body[:1000]
			}
		}
	}
	return ds, err
}

func (b *brokenQueue) Ack(ctx context.Context, d batuta.Delivery) error {
	if b.kind == "ack-noop" {
		return nil
	}
	return b.MemoryQueue.Ack(ctx, d)
}

// Close never wakes a pending Receive.
func (b *brokenQueue) Close() error {
	if b.kind == "close-no-wake" {
		return nil
	}
	return b.MemoryQueue.Close()
}

// TestBrokenQueueHelper is not a test by itself: TestQueueSuiteCatchesBrokenQueues
// runs it in a child process with BATUTATEST_BROKEN_QUEUE set, and expects
// it to fail.
func TestBrokenQueueHelper(t *testing.T) {
	kind := os.Getenv("BATUTATEST_BROKEN_QUEUE")
	if kind == "" {
		return // only meaningful in the child process
	}
	batutatest.TestQueue(t, batutatest.QueueSuiteConfig{
		New: func(t *testing.T, opts batutatest.QueueOptions) batutatest.QueueFixture {
			q, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{VisibilityTimeout: opts.VisibilityTimeout})
			if err != nil {
				t.Fatal(err)
			}
			return batutatest.QueueFixture{Open: func(t *testing.T) batuta.Queue {
				return &brokenQueue{MemoryQueue: q.Connect(), kind: kind}
			}}
		},
		Timeout: 2 * time.Second,
	})
}

func TestQueueSuiteCatchesBrokenQueues(t *testing.T) {
	t.Parallel()
	tests := []struct{ kind, subtest string }{
		{"attempt-stuck", "AttemptCountsDeliveries"},
		{"ack-noop", "AckRemoves"},
		{"over-max", "ReceiveMax"},
		{"close-no-wake", "CloseDuringReceive"},
		{"truncate-body", "LargeBody"},
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.kind, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, exe, "-test.run=^TestBrokenQueueHelper$/^"+tc.subtest+"$", "-test.count=1")
			cmd.Env = append(os.Environ(), "BATUTATEST_BROKEN_QUEUE="+tc.kind)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed a queue with %s:\n%s", tc.kind, out)
			}
			if want := "--- FAIL: TestBrokenQueueHelper/" + tc.subtest; !strings.Contains(string(out), want) {
				t.Fatalf("want %q in the output:\n%s", want, out)
			}
		})
	}
}
