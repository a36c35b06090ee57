package batutaprom

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/batuta-dev/batuta"
)

// collectBacklogs reports the backlog of the bound triggers whose source
// tells it, asked at once within Config.BacklogTimeout, one series per
// workflow and kind: counts summed, the longest lag. A source that fails
// or does not answer in time leaves its workflow and kind out of this
// scrape (a partial sum would look like a drop) and is counted in
// batuta_trigger_backlog_errors_total.
func (m *Metrics) collectBacklogs(ch chan<- prometheus.Metric, bs []batuta.BindingInfo) {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.BacklogTimeout)
	defer cancel()
	readings := batuta.ReadBacklogs(ctx, bs)
	now := time.Now() // the sources' times are wall-clock times
	type key struct{ workflow, kind string }
	type agg struct {
		failed                bool
		pending, inFlight     int64
		inFlightTold, lagTold bool
		lag                   time.Duration
	}
	var keys []key
	seen := map[key]*agg{}
	for i, b := range bs {
		r := readings[i]
		if errors.Is(r.Err, batuta.ErrNoBacklog) {
			continue
		}
		k := key{b.Workflow, b.Kind}
		a := seen[k]
		if a == nil {
			a = &agg{}
			seen[k] = a
			keys = append(keys, k)
		}
		if r.Err != nil {
			a.failed = true
			m.backlogErrors.WithLabelValues(b.Workflow, b.Kind).Inc()
			m.cfg.Logger.Warn("batutaprom: reading a trigger's backlog failed; left out of this scrape",
				"workflow", b.Workflow, "kind", b.Kind, "error", r.Err)
			continue
		}
		a.pending += r.Pending
		if r.InFlight >= 0 {
			a.inFlightTold = true
			a.inFlight += r.InFlight
		}
		if r.OldestKnown {
			a.lagTold = true
			a.lag = max(a.lag, r.Lag(now))
		}
	}
	for _, k := range keys {
		a := seen[k]
		if a.failed {
			continue
		}
		ch <- prometheus.MustNewConstMetric(m.trigBacklog, prometheus.GaugeValue, float64(a.pending), k.workflow, k.kind, "pending")
		if a.inFlightTold {
			ch <- prometheus.MustNewConstMetric(m.trigBacklog, prometheus.GaugeValue, float64(a.inFlight), k.workflow, k.kind, "in_flight")
		}
		if a.lagTold {
			ch <- prometheus.MustNewConstMetric(m.trigLag, prometheus.GaugeValue, a.lag.Seconds(), k.workflow, k.kind)
		}
	}
}
