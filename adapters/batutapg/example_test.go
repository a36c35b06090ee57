package batutapg_test

import (
	"context"
	"log"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
)

type order struct {
	ID         int64  `json:"id"`
	TotalCents int64  `json:"total_cents"`
	Status     string `json:"status"`
}

// A row inserted into orders starts a run of order-placed, and the runs
// live in PostgreSQL, so any instance on the same database can finish them.
// (Needs a database, so it is compiled, not run.)
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/test")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	store, err := batutapg.New(ctx, pool, batutapg.Config{Schema: "batuta"}) // migrations applied here
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	o, err := batuta.New(batuta.Config{Store: store})
	if err != nil {
		log.Fatal(err)
	}
	err = o.Register(&batuta.Workflow{Name: "order-placed", Tasks: []batuta.Task{{
		Name: "validate",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			c, err := batutapg.DecodeChange[order](in.Event())
			if err != nil {
				return nil, err // errors.Is(err, batuta.ErrWrongSource): not a PostgreSQL row change
			}
			return c.New, nil // the inserted row, typed
		},
	}}})
	if err != nil {
		log.Fatal(err)
	}

	// A trigger on orders writes each inserted row into the outbox in the
	// inserting transaction; the Trigger consumes the outbox.
	err = batutapg.InstallCapture(ctx, pool, batutapg.Capture{Table: "orders", Ops: []batutapg.Op{batutapg.OpInsert}})
	if err != nil {
		log.Fatal(err)
	}
	trig, err := batutapg.NewTrigger(batutapg.TriggerConfig{Pool: pool})
	if err != nil {
		log.Fatal(err)
	}
	if err := o.Bind("order-placed", trig); err != nil {
		log.Fatal(err)
	}
	_ = o.Run(ctx) // until ctx ends
}
