package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/dashboard"
)

// benchDashboard is a dashboard over an orchestrator (not running) whose
// memory store holds n pending runs of a five-task workflow.
func benchDashboard(b *testing.B, n int) (http.Handler, string) {
	o, err := batuta.New(batuta.Config{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	tasks := []batuta.Task{{Name: "a", Run: noop}, {Name: "b", Deps: []string{"a"}, Run: noop}, {Name: "c", Deps: []string{"a"}, Run: noop},
		{Name: "d", Deps: []string{"b", "c"}, Run: noop}, {Name: "e", Deps: []string{"d"}, Run: noop}}
	if err := o.Register(&batuta.Workflow{Name: "w", Tasks: tasks}); err != nil {
		b.Fatal(err)
	}
	var last string
	for i := range n {
		if last, err = o.Submit(context.Background(), "w", batuta.Event{ID: fmt.Sprint("ev-", i), Time: time.Unix(0, 0)}); err != nil {
			b.Fatal(err)
		}
	}
	h, err := dashboard.New(dashboard.Config{Orchestrator: o, UnsafeAllowUnauthenticated: true, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	return h, last
}

func benchGet(b *testing.B, h http.Handler, path string) {
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusOK {
			b.Fatalf("GET %s: %d", path, rec.Code)
		}
	}
}

// BenchmarkRunPage renders one run's page (graph, timeline, tasks).
func BenchmarkRunPage(b *testing.B) {
	h, id := benchDashboard(b, 1)
	benchGet(b, h, "/runs/"+id)
}

// BenchmarkRunsPage renders a page of 50 runs out of 10,000 (memory store).
func BenchmarkRunsPage(b *testing.B) {
	h, _ := benchDashboard(b, 10000)
	benchGet(b, h, "/runs")
}
