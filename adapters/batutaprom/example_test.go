package batutaprom_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaprom"
)

// Metrics are the orchestrator's hooks and the /metrics handler; with the
// Store in the Config, a scrape also reports the store's unfinished runs.
func ExampleNew() {
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	m, err := batutaprom.New(batutaprom.Config{Store: store, Logger: quiet})
	if err != nil {
		panic(err)
	}
	o, _ := batuta.New(batuta.Config{Store: store, Hooks: []batuta.Hooks{m}, Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "hello", Tasks: []batuta.Task{
		{Name: "greet", Run: func(context.Context, *batuta.Input) (any, error) { return "hi", nil }},
	}})
	m.Observe(o) // dead letters of o's triggers, if they have a box

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	id, _ := o.Submit(ctx, "hello", batuta.Event{})
	_, _ = o.Wait(ctx, id)
	cancel()
	<-done

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, srv.URL+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		panic(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "batuta_runs_finished_total") || strings.HasPrefix(line, `batuta_workflow_runs{state="pending"`) {
			fmt.Println(line)
		}
	}
	// Output:
	// batuta_runs_finished_total{state="succeeded",workflow="hello"} 1
	// batuta_workflow_runs{state="pending",workflow="hello"} 0
}
