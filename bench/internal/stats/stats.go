// Package stats holds the summary statistics the bench programs print:
// medians of per-round results and latency percentiles.
package stats

import (
	"slices"
	"sort"
	"time"
)

// Median returns the median of xs (0 for none). xs is not modified.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Percentile returns the p-th percentile (0..100) of ds, nearest rank (0
// for none). ds is not modified.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	k := int(p/100*float64(len(s))+0.5) - 1
	k = max(0, min(k, len(s)-1))
	return s[k]
}

// Millis returns d in (fractional) milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
