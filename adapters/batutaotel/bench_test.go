package batutaotel_test

import (
	"context"
	"testing"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaotel"
)

// BenchmarkAttemptNoop measures one attempt's hook calls with the global
// (no-op) providers: the cost an uninstrumented program pays.
func BenchmarkAttemptNoop(b *testing.B) {
	h, err := batutaotel.New(batutaotel.Config{})
	if err != nil {
		b.Fatal(err)
	}
	benchAttempt(b, h)
}

// BenchmarkAttemptSDK measures one attempt's hook calls with the SDK and
// in-memory sinks (reset as they grow).
func BenchmarkAttemptSDK(b *testing.B) {
	tel, h := setup(b)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		a := batuta.AttemptInfo{RunID: "r1", Workflow: "w", Task: "t", Attempt: 1}
		ctx := h.AttemptStarted(context.Background(), a)
		a.Outcome = batuta.OutcomeSucceeded
		h.AttemptFinished(ctx, a)
		if i%4096 == 0 {
			tel.spans.Reset()
		}
	}
}

func benchAttempt(b *testing.B, h *batutaotel.Hooks) {
	b.ReportAllocs()
	for b.Loop() {
		a := batuta.AttemptInfo{RunID: "r1", Workflow: "w", Task: "t", Attempt: 1}
		ctx := h.AttemptStarted(context.Background(), a)
		a.Outcome = batuta.OutcomeSucceeded
		h.AttemptFinished(ctx, a)
	}
}
