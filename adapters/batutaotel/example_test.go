package batutaotel_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaotel"
)

func ExampleNew() {
	// In a program these are the SDK providers with real exporters (or
	// leave the Config empty to use the globals).
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	defer func() { _ = mp.Shutdown(context.Background()) }()

	h, err := batutaotel.New(batutaotel.Config{TracerProvider: tp, MeterProvider: mp})
	if err != nil {
		panic(err)
	}
	o, _ := batuta.New(batuta.Config{Logger: slog.New(slog.DiscardHandler), Hooks: []batuta.Hooks{h}})
	_ = o.Register(&batuta.Workflow{Name: "greet", Tasks: []batuta.Task{
		{Name: "hello", Run: func(ctx context.Context, _ *batuta.Input) (any, error) {
			// Spans started from ctx nest under the attempt span.
			_, span := tp.Tracer("app").Start(ctx, "compose greeting")
			defer span.End()
			return "hello", nil
		}},
	}})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	id, _ := o.Submit(ctx, "greet", batuta.Event{})
	_, _ = o.Wait(ctx, id)
	stop()
	<-done // the workers, and so the hooks, are done

	var lines []string
	for _, s := range spans.GetSpans() {
		lines = append(lines, "span "+s.Name)
	}
	var rm metricdata.ResourceMetrics
	_ = reader.Collect(context.Background(), &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			lines = append(lines, fmt.Sprintf("metric %s %d", m.Name, d.DataPoints[0].Value))
		case metricdata.Histogram[float64]:
			lines = append(lines, fmt.Sprintf("metric %s count=%d", m.Name, d.DataPoints[0].Count))
		}
	}
	slices.Sort(lines) // spans and instruments come in no fixed order
	for _, l := range lines {
		fmt.Println(l)
	}
	// Output:
	// metric batuta.attempt.duration count=1
	// metric batuta.attempts 1
	// metric batuta.runs.finished 1
	// metric batuta.runs.started 1
	// span batuta.attempt greet/hello
	// span batuta.run.finished greet
	// span batuta.run.started greet
	// span compose greeting
}
