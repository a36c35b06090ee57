package batutaotel

import (
	"fmt"
	"math"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/batuta-dev/batuta"
)

// Config configures [New]. The zero value is ready to use: the global
// providers and the default histogram buckets.
type Config struct {
	// TracerProvider creates the tracer for attempt and run spans.
	// Default: otel.GetTracerProvider(), read once by New (so install the
	// global SDK first; the global provider delegates to an SDK installed
	// later, too).
	TracerProvider trace.TracerProvider
	// MeterProvider creates the meter for the counters and the histogram.
	// Default: otel.GetMeterProvider(), read once by New.
	MeterProvider metric.MeterProvider
	// DurationBuckets are the explicit bucket boundaries, in seconds, of
	// batuta.attempt.duration, advised to the SDK (a View may override
	// them). Default (nil): DefaultDurationBuckets; an empty non-nil slice
	// asks for a single bucket (count and sum only). Must be finite,
	// non-negative and strictly increasing.
	DurationBuckets []float64
}

// DefaultDurationBuckets are the default batuta.attempt.duration bucket
// boundaries in seconds: from 5ms, for tasks that are a quick call, to an
// hour, for batch jobs. (The SDK's own default boundaries are meant for
// milliseconds and would put every task longer than 10s in one bucket.)
var DefaultDurationBuckets = []float64{
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
}

// withDefaults fills the unset fields.
func (c Config) withDefaults() Config {
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	if c.DurationBuckets == nil {
		c.DurationBuckets = DefaultDurationBuckets
	}
	return c
}

// validate returns a *batuta.ConfigError naming the first bad field.
func (c Config) validate() error {
	for i, b := range c.DurationBuckets {
		field := fmt.Sprintf("DurationBuckets[%d]", i)
		switch {
		case math.IsNaN(b) || math.IsInf(b, 0):
			return &batuta.ConfigError{Field: field, Reason: "must be finite"}
		case b < 0:
			return &batuta.ConfigError{Field: field, Reason: "must not be negative"}
		case i > 0 && b <= c.DurationBuckets[i-1]:
			return &batuta.ConfigError{Field: field, Reason: "must be greater than the previous boundary"}
		}
	}
	return nil
}
