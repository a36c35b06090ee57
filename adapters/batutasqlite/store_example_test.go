package batutasqlite_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
)

// A durable orchestrator on a SQLite file: runs accepted by Submit survive a
// crash, and a restarted process finishes them.
func ExampleOpen() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "batuta-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	store, err := batutasqlite.Open(ctx, filepath.Join(dir, "batuta.db"), batutasqlite.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	o, err := batuta.New(batuta.Config{Store: store, NoLogHooks: true})
	if err != nil {
		log.Fatal(err)
	}
	err = o.Register(&batuta.Workflow{Name: "greet", Tasks: []batuta.Task{
		{Name: "name", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			return "Ada", nil
		}},
		{Name: "hello", Deps: []string{"name"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			name, err := batuta.Output[string](in, "name")
			return "hello, " + name, err
		}},
	}})
	if err != nil {
		log.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(runCtx) }()

	id, err := o.Submit(ctx, "greet", batuta.Event{ID: "greeting-1"})
	if err != nil {
		log.Fatal(err)
	}
	run, err := o.Wait(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	greeting, _ := batuta.OutputAs[string](run.Task("hello").Output)
	fmt.Println(run.State, greeting)
	stop()
	<-done
	// Output: succeeded hello, Ada
}
