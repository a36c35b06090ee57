// Command lateness measures how late a cron trigger's firings are: for each
// tick of an "@every" schedule bound to a real orchestrator (in-memory store,
// system clock), the time from the tick's nominal time to the start of the
// first task of its run. It prints the distribution in Markdown.
//
//	cd bench && go run ./cron/lateness -ticks 200 -every 50ms
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/batuta-dev/batuta"
)

func main() {
	ticks := flag.Int("ticks", 200, "ticks to measure")
	every := flag.Duration("every", 50*time.Millisecond, "schedule interval (@every)")
	warmup := flag.Int("warmup", 0, "ticks to discard first")
	flag.Parse()
	if err := run(*ticks, *warmup, *every, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(ticks, warmup int, every time.Duration, out io.Writer) error {
	quiet := slog.New(slog.DiscardHandler)
	o, err := batuta.New(batuta.Config{Logger: quiet, NoLogHooks: true})
	if err != nil {
		return err
	}
	total := ticks + warmup
	starts := make(chan time.Duration, total+64)
	err = o.Register(&batuta.Workflow{Name: "tick", Tasks: []batuta.Task{{
		Name: "start",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			late := time.Since(in.Event().Time)
			select {
			case starts <- late:
			default:
			}
			return nil, nil
		},
	}}})
	if err != nil {
		return err
	}
	trig, err := batuta.NewCron(batuta.CronConfig{
		Name:    "lateness",
		Spec:    "@every " + every.String(),
		Overlap: batuta.OverlapPolicy{Action: batuta.OverlapAllow},
		Logger:  quiet,
	})
	if err != nil {
		return err
	}
	if err := o.Bind("tick", trig); err != nil {
		return err
	}
	// The same schedule fired by a second trigger straight into a FireFunc
	// (no orchestrator) measures the trigger's own lateness: timer wake-up.
	fires := make(chan time.Duration, total+64)
	bare, err := batuta.NewCron(batuta.CronConfig{
		Name:    "lateness-bare",
		Spec:    "@every " + every.String(),
		Overlap: batuta.OverlapPolicy{Action: batuta.OverlapAllow},
		Logger:  quiet,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	bareDone := make(chan error, 1)
	go func() {
		bareDone <- bare.Run(ctx, func(_ context.Context, ev batuta.Event) error {
			select {
			case fires <- time.Since(ev.Time):
			default:
			}
			return nil
		})
	}()

	began := time.Now()
	var lat []time.Duration
	timeout := time.After(time.Duration(total)*every + 30*time.Second)
	for len(lat) < total {
		select {
		case d := <-starts:
			lat = append(lat, d)
		case <-timeout:
			cancel()
			<-done
			return fmt.Errorf("only %d of %d ticks started in time", len(lat), total)
		}
	}
	elapsed := time.Since(began)
	cancel()
	if err := <-done; err != nil {
		return err
	}
	<-bareDone
	close(fires)
	var fired []time.Duration
	for d := range fires {
		fired = append(fired, d)
	}
	fired = fired[min(warmup, len(fired)):min(total, len(fired))]

	fmt.Fprintf(out, "cron lateness over %d ticks of @every %s (%d discarded as warm-up), %s wall time\n\n", len(lat)-warmup, every, warmup, elapsed.Round(time.Millisecond))
	fmt.Fprintf(out, "| measured | ticks | min | p50 | p90 | p99 | max | mean |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n")
	row(out, "tick -> first task start (orchestrator, in-memory store)", lat[warmup:])
	row(out, "tick -> fire called (trigger alone, FireFunc)", fired)
	fmt.Fprintf(out, "\n%s %s/%s, GOMAXPROCS=%d, NumCPU=%d\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.NumCPU())
	return nil
}

func row(out io.Writer, name string, lat []time.Duration) {
	if len(lat) == 0 {
		fmt.Fprintf(out, "| %s | 0 | | | | | | |\n", name)
		return
	}
	lat = slices.Clone(lat)
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	fmt.Fprintf(out, "| %s | %d | %s | %s | %s | %s | %s | %s |\n", name, len(lat), r(lat[0]), r(q(0.50)), r(q(0.90)), r(q(0.99)), r(lat[len(lat)-1]), r(sum/time.Duration(len(lat))))
}

func r(d time.Duration) string { return d.Round(time.Microsecond).String() }
