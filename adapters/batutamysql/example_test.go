package batutamysql_test

import (
	"context"
	"database/sql"
	"log"

	_ "github.com/go-sql-driver/mysql"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutamysql"
)

type order struct {
	ID         int64  `json:"id"`
	TotalCents int64  `json:"total_cents"`
	Status     string `json:"status"`
}

// A row inserted into a MySQL or MariaDB table starts a run. The package
// takes a *sql.DB and imports no driver: the program picks one. (Needs a
// database, so it is compiled, not run.)
func Example() {
	ctx := context.Background()
	db, err := sql.Open("mysql", "root@tcp(127.0.0.1:3306)/test?parseTime=true")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	o, err := batuta.New(batuta.Config{}) // or a durable store: batutasqlite, batutapg
	if err != nil {
		log.Fatal(err)
	}
	err = o.Register(&batuta.Workflow{Name: "order-placed", Tasks: []batuta.Task{{
		Name: "validate",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			c, err := batutamysql.DecodeChange[order](in.Event())
			if err != nil {
				return nil, err // errors.Is(err, batuta.ErrWrongSource): not a MySQL row change
			}
			return c.New, nil
		},
	}}})
	if err != nil {
		log.Fatal(err)
	}
	err = batutamysql.InstallCapture(ctx, db, batutamysql.Capture{Table: "orders", Ops: []batutamysql.Op{batutamysql.OpInsert}})
	if err != nil {
		log.Fatal(err)
	}
	trig, err := batutamysql.NewTrigger(batutamysql.TriggerConfig{DB: db})
	if err != nil {
		log.Fatal(err)
	}
	if err := o.Bind("order-placed", trig); err != nil {
		log.Fatal(err)
	}
	_ = o.Run(ctx) // until ctx ends
}
