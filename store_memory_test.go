package batuta_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

func TestMemoryStoreConformance(t *testing.T) {
	t.Parallel()
	batutatest.TestStore(t, batutatest.StoreSuite{
		New: func(t *testing.T) batuta.Store { return batuta.NewMemoryStore(batuta.MemoryStoreConfig{}) },
	})
}

// BenchmarkMemoryStore measures the store alone: create a run of one task,
// claim it and complete it, with many runs waiting (no flow control).
func BenchmarkMemoryStore(b *testing.B) {
	ctx := context.Background()
	s := batuta.NewMemoryStore(batuta.MemoryStoreConfig{KeepFinished: 1000})
	spec := []batuta.TaskSpec{{Name: "x"}}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const backlog = 1000
	mk := func(i int) {
		nr := batuta.NewRun{ID: fmt.Sprintf("run-%09d", i), Workflow: "wf", Event: batuta.Event{ID: strconv.Itoa(i)}, Tasks: spec, CreatedAt: now}
		if _, _, err := s.CreateRun(ctx, nr); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < backlog; i++ {
		mk(i)
	}
	buf := make([]batuta.Claim, 0, 8)
	comps := make([]batuta.Completion, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		mk(backlog + i)
		cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Workflows: []string{"wf"}, Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute), Buf: buf})
		if err != nil || len(cs) != 1 {
			b.Fatalf("claim: %v, %d", err, len(cs))
		}
		comps[0] = batuta.Completion{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: 1, StartedAt: now, FinishedAt: now}
		if _, err := s.CompleteTasks(ctx, comps); err != nil {
			b.Fatal(err)
		}
	}
}
