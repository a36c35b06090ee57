package batutasqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
)

// A row inserted into a SQLite table starts a run that reads it typed. The
// capture trigger writes the row into the outbox in the inserting
// transaction; the Trigger consumes the outbox and deletes each row once its
// run is accepted (durable store) or finished (this in-memory store).
func ExampleNewTrigger() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "batuta-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", filepath.Join(dir, "app.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL, email TEXT NOT NULL)`); err != nil {
		log.Fatal(err)
	}
	err = batutasqlite.InstallCapture(ctx, db, batutasqlite.Capture{Table: "orders", Ops: []batutasqlite.Op{batutasqlite.OpInsert}})
	if err != nil {
		log.Fatal(err)
	}

	type order struct {
		ID         int64  `json:"id"`
		TotalCents int64  `json:"total_cents"`
		Email      string `json:"email"`
	}
	o, err := batuta.New(batuta.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	seen := make(chan string, 1)
	err = o.Register(&batuta.Workflow{Name: "order-placed", Tasks: []batuta.Task{{
		Name: "confirm",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			c, err := batutasqlite.DecodeChange[order](in.Event())
			if err != nil {
				return nil, err // errors.Is(err, batuta.ErrWrongSource): not a SQLite row change
			}
			ev := in.Event()
			seen <- fmt.Sprintf("%s %s: order %d, %d cents, mail %s", ev.Source, ev.Type, c.New.ID, c.New.TotalCents, c.New.Email)
			return nil, nil
		},
	}}})
	if err != nil {
		log.Fatal(err)
	}
	trig, err := batutasqlite.NewTrigger(batutasqlite.TriggerConfig{DB: db, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	if err := o.Bind("order-placed", trig); err != nil {
		log.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(runCtx) }()
	defer func() { stop(); <-done }()

	if _, err := db.ExecContext(ctx, `INSERT INTO orders (id, total_cents, email) VALUES (7, 1250, 'ada@example.com')`); err != nil {
		log.Fatal(err)
	}
	trig.Wake() // a writer in this process: no need to wait for the next poll
	fmt.Println(<-seen)
	// Output: sqlite/orders orders.insert: order 7, 1250 cents, mail ada@example.com
}
