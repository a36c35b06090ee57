package main

import (
	"fmt"

	"github.com/batuta-dev/batuta/bench/internal/stats"
)

// The shared summary statistics, under the names this program uses.
var (
	median     = stats.Median
	percentile = stats.Percentile
)

func ms(d float64) string { return fmt.Sprintf("%.2f ms", d) }
