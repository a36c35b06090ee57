package batuta_test

import (
	"fmt"
	"strings"

	"github.com/batuta-dev/batuta"
)

// Workflows and Bindings describe what an orchestrator runs, for
// dashboards and tools.
func ExampleOrchestrator_Workflows() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "order", Tasks: []batuta.Task{
		{Name: "validate", Run: noop},
		{Name: "charge", Deps: []string{"validate"}, Run: noop},
		{Name: "email", Deps: []string{"charge"}, Run: noop},
	}})
	cron, _ := batuta.NewCron(batuta.CronConfig{Name: "sweep", Spec: "CRON_TZ=UTC 0 3 * * *", Logger: quiet})
	_ = o.Bind("order", cron)

	for _, w := range o.Workflows() {
		for _, t := range w.Tasks {
			fmt.Printf("%s.%s <- [%s]\n", w.Name, t.Name, strings.Join(t.Deps, ", "))
		}
	}
	for _, b := range o.Bindings() {
		fmt.Println(b.Workflow, b.Kind, b.Schedule.Spec, b.Schedule.TimeZone)
	}
	// Output:
	// order.validate <- []
	// order.charge <- [validate]
	// order.email <- [charge]
	// order cron CRON_TZ=UTC 0 3 * * * UTC
}
