package main

import (
	"runtime"

	"github.com/batuta-dev/batuta/bench/internal/stats"
)

// The shared summary statistics, under the names this program uses.
var (
	median     = stats.Median
	percentile = stats.Percentile
	msf        = stats.Millis
)

func gomaxprocs() int { return runtime.GOMAXPROCS(0) }
