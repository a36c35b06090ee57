package batuta_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// finishHook signals run completion without snapshotting the run, so the
// benchmarks measure the executor, not the inspection API.
type finishHook struct {
	batuta.NopHooks
	mu   sync.Mutex
	done map[string]chan struct{}
}

func (h *finishHook) ch(id string) chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.done[id]
	if c == nil {
		c = make(chan struct{})
		h.done[id] = c
	}
	return c
}

func (h *finishHook) RunFinished(_ context.Context, r batuta.RunInfo) { close(h.ch(r.RunID)) }

func benchOrchestrator(b *testing.B, wf *batuta.Workflow) (*batuta.Orchestrator, *finishHook) {
	h := &finishHook{done: map[string]chan struct{}{}}
	o, err := batuta.New(batuta.Config{
		Logger: slog.New(slog.DiscardHandler), NoLogHooks: true, Hooks: []batuta.Hooks{h},
		Workers: runtime.GOMAXPROCS(0), MaxInFlightRuns: -1,
		Store: batuta.NewMemoryStore(batuta.MemoryStoreConfig{KeepFinished: 1}), // retained 10k-task runs would dominate GC
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := o.Register(wf); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = o.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	return o, h
}

// runShape submits one run per iteration and waits for it, reporting
// ns/task and allocs/task like ../shared/bench/dagfloor.
func runShape(b *testing.B, wf *batuta.Workflow) {
	o, h := benchOrchestrator(b, wf)
	ctx := context.Background()
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id, err := o.Submit(ctx, wf.Name, batuta.Event{ID: fmt.Sprint(i)})
		if err != nil {
			b.Fatal(err)
		}
		<-h.ch(id)
	}
	b.StopTimer()
	cpu := cpuTime() - cpu0
	runtime.ReadMemStats(&m1)
	n := float64(b.N) * float64(len(wf.Tasks))
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/task")
	// CPU time of the whole process (every goroutine, GC included) per
	// task: steadier than ns/task on a loaded machine.
	b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/task")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/n, "allocs/task")
	b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/n, "B/task")
}

const shapeN = 10_000

// BenchmarkExecutorChain: a linear chain of 10k no-op tasks.
func BenchmarkExecutorChain(b *testing.B) {
	tasks := make([]batuta.Task, shapeN)
	for i := range tasks {
		tasks[i] = batuta.Task{Name: fmt.Sprintf("t%d", i), Run: noop}
		if i > 0 {
			tasks[i].Deps = []string{tasks[i-1].Name}
		}
	}
	runShape(b, &batuta.Workflow{Name: "chain", Tasks: tasks})
}

// BenchmarkExecutorFanOut: 10k independent no-op tasks.
func BenchmarkExecutorFanOut(b *testing.B) {
	tasks := make([]batuta.Task, shapeN)
	for i := range tasks {
		tasks[i] = batuta.Task{Name: fmt.Sprintf("t%d", i), Run: noop}
	}
	runShape(b, &batuta.Workflow{Name: "fanout", Tasks: tasks})
}

// BenchmarkExecutorLayered: 100 layers x 100 tasks, each depending on 3
// random tasks of the layer before (the dagfloor shape).
func BenchmarkExecutorLayered(b *testing.B) {
	const layers, width, deps = 100, 100, 3
	r := rand.New(rand.NewPCG(1, 2))
	var tasks []batuta.Task
	for l := 0; l < layers; l++ {
		for x := 0; x < width; x++ {
			t := batuta.Task{Name: fmt.Sprintf("l%d-%d", l, x), Run: noop}
			if l > 0 {
				for _, p := range r.Perm(width)[:deps] {
					t.Deps = append(t.Deps, fmt.Sprintf("l%d-%d", l-1, p))
				}
			}
			tasks = append(tasks, t)
		}
	}
	runShape(b, &batuta.Workflow{Name: "layered", Tasks: tasks})
}

// BenchmarkDiamondRuns: whole runs per second of a 5-task diamond of no-op
// tasks (a -> b, c, d -> e) with many runs in flight.
func BenchmarkDiamondRuns(b *testing.B) {
	wf := &batuta.Workflow{Name: "diamond", Tasks: []batuta.Task{
		{Name: "a", Run: noop},
		{Name: "b", Deps: []string{"a"}, Run: noop},
		{Name: "c", Deps: []string{"a"}, Run: noop},
		{Name: "d", Deps: []string{"a"}, Run: noop},
		{Name: "e", Deps: []string{"b", "c", "d"}, Run: noop},
	}}
	o, h := benchOrchestrator(b, wf)
	ctx := context.Background()
	const inflight = 256
	ids := make(chan string, inflight)
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for i := 0; i < b.N; i++ {
			id, err := o.SubmitBlocking(ctx, "diamond", batuta.Event{ID: fmt.Sprint(i)})
			if err != nil {
				panic(err)
			}
			ids <- id
		}
		close(ids)
	}()
	for id := range ids {
		<-h.ch(id)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "runs/s")
}

// cpuTime returns the user+system CPU time the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
