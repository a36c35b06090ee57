package batuta_test

import (
	"context"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
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

// A schedule bound to a workflow: each tick starts one run, whose event ID
// names the schedule and the tick, so a tick starts one run however many
// instances run the schedule. A fake clock stands in for the wall clock
// (leave CronConfig.Clock unset in a program).
func ExampleNewCron() {
	o, err := batuta.New(batuta.Config{Logger: quiet})
	if err != nil {
		panic(err)
	}
	ticks := make(chan batuta.Event, 1)
	err = o.Register(&batuta.Workflow{Name: "daily-report", Tasks: []batuta.Task{{
		Name: "build",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			ticks <- in.Event()
			return nil, nil
		},
	}}})
	if err != nil {
		panic(err)
	}
	madrid, _ := time.LoadLocation("Europe/Madrid")
	clock := batutatest.NewFakeClock(time.Date(2026, 3, 6, 8, 59, 0, 0, madrid)) // a Friday
	trig, err := batuta.NewCron(batuta.CronConfig{
		Name: "daily-report",
		Spec: "CRON_TZ=Europe/Madrid 0 9 * * MON-FRI",
		// After downtime, run the latest missed report if it is less than
		// 6 hours old.
		Missed: batuta.MissedPolicy{Action: batuta.MissedRunLatest, Window: 6 * time.Hour},
		// Never two reports at once: a tick that comes while the previous
		// report runs waits for it.
		Overlap: batuta.OverlapPolicy{Action: batuta.OverlapBufferOne},
		Clock:   clock,
	})
	if err != nil {
		panic(err)
	}
	if err := o.Bind("daily-report", trig); err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	defer func() { stop(); <-done }()

	for _, d := range []time.Duration{time.Minute, 72 * time.Hour} { // Friday 09:00, then Monday 09:00
		clock.WaitForTimers(1, 10*time.Second)
		clock.Advance(d)
		ev := <-ticks
		fmt.Println(ev.ID, ev.Source, ev.Type, ev.Time.In(madrid).Format("Mon 15:04"))
	}
	// Output:
	// cron/daily-report/2026-03-06T08:00:00Z cron/daily-report batuta.cron.tick Fri 09:00
	// cron/daily-report/2026-03-09T08:00:00Z cron/daily-report batuta.cron.tick Mon 09:00
}
