package main

import (
	"io"
	"strings"
)

// progress draws a one-line progress bar on a terminal:
//
//	retry  [##########..........]   50/100
//
// It redraws only when the bar or the count's width changes by a cell
// (at most 101 redraws), and draws nothing when off.
type progress struct {
	w     io.Writer
	on    bool
	label string
	total int
	last  int // the last drawn per-mille, -1 before the first draw
	drawn bool
}

const barWidth = 30

func newProgress(w io.Writer, on bool, label string, total int) *progress {
	p := &progress{w: w, on: on && total > 0, label: label, total: total, last: -1}
	p.set(0)
	return p
}

// set draws n of total done.
func (p *progress) set(n int) {
	if !p.on {
		return
	}
	pct := n * 100 / p.total
	if pct == p.last && n != p.total {
		return
	}
	p.last = pct
	fill := n * barWidth / p.total
	printf(p.w, "\r%s  [%s%s]  %d/%d", p.label, strings.Repeat("#", fill), strings.Repeat(".", barWidth-fill), n, p.total)
	p.drawn = true
}

// done ends the bar's line.
func (p *progress) done() {
	if p.drawn {
		printf(p.w, "\n")
		p.drawn = false
	}
}
