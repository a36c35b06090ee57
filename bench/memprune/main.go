// Command memprune measures what a big Prune of the in-memory store does to
// the runs submitted meanwhile: it fills the store with -finished finished
// runs, then submits -rate runs/s to a running orchestrator (single-task
// runs, executed as they come) while one Prune call deletes the finished
// runs, and prints the Submit latency percentiles during the prune, the
// prune's duration and the longest single Submit.
//
//	cd bench && go run ./memprune -finished 200000 -rate 20000
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/bench/internal/stats"
	"github.com/google/uuid"
)

func main() {
	finished := flag.Int("finished", 200000, "finished runs to prune")
	rate := flag.Int("rate", 20000, "runs submitted per second during the prune")
	batch := flag.Int("batch", 0, "PrunePolicy.BatchSize (0: the default)")
	flag.Parse()
	if err := run(*finished, *rate, *batch); err != nil {
		log.Fatal(err)
	}
}

func run(finished, rate, batch int) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ms := batuta.NewMemoryStore(batuta.MemoryStoreConfig{KeepFinished: -1})
	if err := fill(ctx, ms, finished); err != nil {
		return err
	}
	o, err := batuta.New(batuta.Config{Store: ms, Logger: slog.New(slog.DiscardHandler), NoLogHooks: true, MaxInFlightRuns: -1, Retention: -1})
	if err != nil {
		return err
	}
	if err := o.Register(&batuta.Workflow{Name: "wf", Tasks: []batuta.Task{{Name: "t", Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil }}}}); err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = o.Run(runCtx) }()
	defer func() { stop(); <-done }()

	// Submitters: 4 goroutines, each paced to rate/4 per second.
	const subs = 4
	var (
		mu     sync.Mutex
		calls  []call
		pruned = make(chan struct{})
		wg     sync.WaitGroup
	)
	for g := 0; g < subs; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			every := time.Second * subs / time.Duration(rate)
			next := time.Now()
			var local []call
			for {
				select {
				case <-pruned:
					mu.Lock()
					calls = append(calls, local...)
					mu.Unlock()
					return
				default:
				}
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				next = next.Add(every)
				t0 := time.Now()
				if _, err := o.Submit(ctx, "wf", batuta.Event{}); err != nil {
					log.Printf("submit: %v", err)
					continue
				}
				local = append(local, call{t0, time.Now()})
			}
		}()
	}
	time.Sleep(time.Second) // steady state first
	start := time.Now()
	n, err := ms.Prune(ctx, batuta.PrunePolicy{Before: start, BatchSize: batch})
	took := time.Since(start)
	close(pruned)
	wg.Wait()
	if err != nil {
		return err
	}
	// The submits that overlapped the prune.
	var lats []time.Duration
	for _, c := range calls {
		if c.end.After(start) && c.start.Before(start.Add(took)) {
			lats = append(lats, c.end.Sub(c.start))
		}
	}
	fmt.Printf("pruned %d finished runs in %s (BatchSize %d) while submitting %d runs/s\n", n, took.Round(time.Millisecond), batch, rate)
	fmt.Printf("submits during the prune: %d, latency p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms\n", len(lats),
		stats.Millis(stats.Percentile(lats, 50)), stats.Millis(stats.Percentile(lats, 99)),
		stats.Millis(stats.Percentile(lats, 99.9)), stats.Millis(stats.Percentile(lats, 100)))
	return nil
}

// call is one Submit: when it started and returned.
type call struct{ start, end time.Time }

// fill creates n single-task runs and finishes them through the Store API.
func fill(ctx context.Context, s batuta.Store, n int) error {
	now := time.Now().Add(-time.Minute)
	for i := 0; i < n; i++ {
		_, _, err := s.CreateRun(ctx, batuta.NewRun{ID: uuid.NewString(), Workflow: "wf",
			Event: batuta.Event{ID: fmt.Sprintf("old-%d", i), Time: now}, Tasks: []batuta.TaskSpec{{Name: "t"}}, CreatedAt: now})
		if err != nil {
			return err
		}
	}
	for {
		cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "fill", Workflows: []string{"wf"}, Limit: 1000, Now: time.Now(), LeaseUntil: time.Now().Add(time.Minute)})
		if err != nil {
			return err
		}
		if len(cs) == 0 {
			return nil
		}
		comps := make([]batuta.Completion, len(cs))
		for i, c := range cs {
			comps[i] = batuta.Completion{ClaimRef: c.Ref(), Attempt: c.Attempt, Outcome: batuta.OutcomeSucceeded, StartedAt: now, FinishedAt: now}
		}
		if _, err := s.CompleteTasks(ctx, comps); err != nil {
			return err
		}
	}
}
