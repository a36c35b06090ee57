package batutaprom_test

import (
	"context"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaprom"
)

// BenchmarkAttemptHooks measures what the hooks add to one task attempt:
// AttemptStarted and AttemptFinished (in-flight gauge, outcome counter,
// duration histogram).
func BenchmarkAttemptHooks(b *testing.B) {
	m, err := batutaprom.New(batutaprom.Config{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	start := time.Now()
	a := batuta.AttemptInfo{RunID: "r", Workflow: "orders", Task: "charge", Attempt: 1,
		Outcome: batuta.OutcomeSucceeded, Started: start, Finished: start.Add(3 * time.Millisecond)}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c := m.AttemptStarted(ctx, a)
			m.AttemptFinished(c, a)
		}
	})
}
