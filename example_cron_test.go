package batuta_test

import (
	"context"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
)

func ExampleParseSchedule() {
	// 02:30 every day in Madrid. On 29 March 2026 the clocks jump from
	// 02:00 to 03:00, so that day's 02:30 fires once, right after the gap
	// (cronie's rule), 1800 s into the gap: at the jump plus 1801 ns.
	s, err := batuta.ParseSchedule("CRON_TZ=Europe/Madrid 30 2 * * *")
	if err != nil {
		panic(err)
	}
	t := time.Date(2026, 3, 28, 12, 0, 0, 0, time.UTC)
	for range 3 {
		t = s.Next(t)
		fmt.Println(t.Format(time.RFC3339Nano))
	}

	_, err = batuta.ParseSchedule("61 * * * *")
	fmt.Println(err)
	// Output:
	// 2026-03-29T03:00:00.000001801+02:00
	// 2026-03-30T02:30:00+02:00
	// 2026-03-31T02:30:00+02:00
	// batuta: invalid schedule "61 * * * *": minute "61": 61 is out of range 0-59
}

func ExampleNewCron() {
	o, err := batuta.New(batuta.Config{})
	if err != nil {
		panic(err)
	}
	err = o.Register(&batuta.Workflow{Name: "daily-report", Tasks: []batuta.Task{{
		Name: "build",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			fmt.Println("report for tick", in.Event().Time)
			return nil, nil
		},
	}}})
	if err != nil {
		panic(err)
	}
	trig, err := batuta.NewCron(batuta.CronConfig{
		Name: "daily-report",
		Spec: "CRON_TZ=Europe/Madrid 0 9 * * MON-FRI",
		// After downtime, run the latest missed report if it is less than
		// 6 hours old.
		Missed: batuta.MissedPolicy{Action: batuta.MissedRunLatest, Window: 6 * time.Hour},
		// Never two reports at once: a tick that comes while the previous
		// report runs waits for it.
		Overlap: batuta.OverlapPolicy{Action: batuta.OverlapBufferOne},
		Jitter:  30 * time.Second,
	})
	if err != nil {
		panic(err)
	}
	if err := o.Bind("daily-report", trig); err != nil {
		panic(err)
	}
	// o.Run(ctx) starts the trigger with the orchestrator.
}
