package dashboard

import (
	"slices"
	"time"

	"github.com/batuta-dev/batuta"
)

// The task graph is drawn left to right in layers: a task's layer is the
// length of the longest dependency chain above it, so every edge goes
// rightwards. Within a layer tasks are ordered by the mean row of their
// dependencies (one barycentre pass), then by declaration order, which
// keeps most graphs free of crossings.

const (
	nodeW, nodeH = 200, 54
	gapX, gapY   = 56, 18
	padDAG       = 12
)

type dagNode struct {
	Index       int
	Name, Label string // Label: the name, shortened to fit
	State       batuta.TaskState
	Detail      string // attempts, duration, waiting
	X, Y        int
	TextX       int
	NameY       int
	DetailY     int
	IconX       int
}

type dagEdge struct {
	Path  string
	State batuta.TaskState // the dependency's state
}

type dag struct {
	Width, Height int
	Nodes         []dagNode
	Edges         []dagEdge
}

func layoutDAG(tasks []taskView) dag {
	idx := make(map[string]int, len(tasks))
	for i, t := range tasks {
		idx[t.Name] = i
	}
	depth := make([]int, len(tasks))
	// Tasks are declared after their dependencies (Register checks it),
	// but compute to a fixed point anyway, bounded by the task count.
	for range tasks {
		changed := false
		for i, t := range tasks {
			for _, d := range t.Deps {
				if j, ok := idx[d]; ok && depth[j]+1 > depth[i] && depth[j] < len(tasks) {
					depth[i], changed = depth[j]+1, true
				}
			}
		}
		if !changed {
			break
		}
	}
	layers := [][]int{}
	for i := range tasks {
		for len(layers) <= depth[i] {
			layers = append(layers, nil)
		}
		layers[depth[i]] = append(layers[depth[i]], i)
	}
	row := make([]float64, len(tasks))
	for li, layer := range layers {
		if li > 0 {
			key := map[int]float64{}
			for _, i := range layer {
				sum, n := 0.0, 0
				for _, d := range tasks[i].Deps {
					if j, ok := idx[d]; ok {
						sum += row[j]
						n++
					}
				}
				if n > 0 {
					key[i] = sum / float64(n)
				}
			}
			slices.SortStableFunc(layer, func(a, b int) int {
				switch {
				case key[a] < key[b]:
					return -1
				case key[a] > key[b]:
					return 1
				}
				return a - b
			})
		}
		for r, i := range layer {
			row[i] = float64(r)
		}
	}
	maxRows := 0
	for _, l := range layers {
		maxRows = max(maxRows, len(l))
	}
	g := dag{
		Width:  2*padDAG + len(layers)*nodeW + max(len(layers)-1, 0)*gapX,
		Height: 2*padDAG + maxRows*nodeH + max(maxRows-1, 0)*gapY,
	}
	pos := make([][2]int, len(tasks))
	for li, layer := range layers {
		// Center each layer vertically.
		off := (maxRows - len(layer)) * (nodeH + gapY) / 2
		for r, i := range layer {
			x := padDAG + li*(nodeW+gapX)
			y := padDAG + off + r*(nodeH+gapY)
			pos[i] = [2]int{x, y}
		}
	}
	for i, t := range tasks {
		x, y := pos[i][0], pos[i][1]
		label := t.Name
		if r := []rune(label); len(r) > 22 {
			label = string(r[:21]) + "…"
		}
		g.Nodes = append(g.Nodes, dagNode{Index: t.Index, Name: t.Name, Label: label, State: t.State, Detail: taskDetail(t),
			X: x, Y: y, TextX: x + 30, NameY: y + 22, DetailY: y + 41, IconX: x + 15})
		for _, d := range t.Deps {
			j, ok := idx[d]
			if !ok {
				continue
			}
			x1, y1 := pos[j][0]+nodeW, pos[j][1]+nodeH/2
			x2, y2 := x, y+nodeH/2
			mid := (x1 + x2) / 2
			g.Edges = append(g.Edges, dagEdge{State: tasks[j].State,
				Path: "M" + itoa(x1) + " " + itoa(y1) + " C" + itoa(mid) + " " + itoa(y1) + " " + itoa(mid) + " " + itoa(y2) + " " + itoa(x2-4) + " " + itoa(y2)})
		}
	}
	return g
}

func taskDetail(t taskView) string {
	s := string(t.State)
	if t.State == batuta.TaskUpstreamFailed {
		s = "upstream failed"
	}
	if t.State == batuta.TaskPending && !t.WaitingSince.IsZero() {
		s = "waiting"
	}
	if n := len(t.Attempts); n > 0 {
		s += " · " + itoa(n) + " att."
	}
	if d := t.Duration(); d > 0 {
		s += " · " + fmtDuration(d)
	}
	return s
}

// timeline is the attempts drawn on one time axis from the run's creation.
type timeline struct {
	Width, Height int
	Rows          []timelineRow
	Ticks         []timelineTick
	Span          time.Duration
	Empty         bool
}

type timelineRow struct {
	Task          string
	Number        int
	Outcome       batuta.Outcome
	Error         string
	Start, End    time.Time
	X, Y, W       int
	LabelY, TextX int
	Waiting       bool // a wait, not an attempt
}

type timelineTick struct {
	X      int
	Label  string
	Anchor string // text-anchor of the label
}

const (
	tlLabelW = 180
	tlW      = 760
	tlRowH   = 22
	tlTop    = 26
)

func makeTimeline(run *batuta.Run, now time.Time) timeline {
	var rows []timelineRow
	for _, t := range run.Tasks {
		for _, a := range t.Attempts {
			rows = append(rows, timelineRow{Task: t.Name, Number: a.Number, Outcome: a.Outcome, Error: firstLine(a.Error), Start: a.StartedAt, End: a.FinishedAt})
		}
		if !t.WaitingSince.IsZero() {
			end := now
			if t.State.Finished() && len(t.Attempts) > 0 {
				end = t.Attempts[len(t.Attempts)-1].FinishedAt
			}
			if t.State.Finished() && end.Before(t.WaitingSince) {
				end = t.WaitingSince
			}
			rows = append(rows, timelineRow{Task: t.Name, Outcome: "wait", Error: t.WaitingFor, Start: t.WaitingSince, End: end, Waiting: true})
		}
	}
	tl := timeline{Width: tlLabelW + tlW + 16}
	if len(rows) == 0 {
		tl.Empty = true
		return tl
	}
	slices.SortStableFunc(rows, func(a, b timelineRow) int { return a.Start.Compare(b.Start) })
	start := run.CreatedAt
	end := run.FinishedAt
	if end.IsZero() {
		end = now
	}
	for _, r := range rows {
		if r.End.After(end) {
			end = r.End
		}
		if r.Start.Before(start) {
			start = r.Start
		}
	}
	span := end.Sub(start)
	if span <= 0 {
		span = time.Millisecond
	}
	tl.Span = span
	scale := func(t time.Time) int { return tlLabelW + int(float64(tlW)*float64(t.Sub(start))/float64(span)) }
	for i := range rows {
		r := &rows[i]
		r.X = scale(r.Start)
		r.W = max(scale(r.End)-r.X, 3)
		r.Y = tlTop + i*tlRowH
		r.LabelY = r.Y + 14
		r.TextX = tlLabelW - 8
	}
	for i := 0; i <= 4; i++ {
		anchor := "middle"
		if i == 4 {
			anchor = "end"
		}
		tl.Ticks = append(tl.Ticks, timelineTick{X: tlLabelW + tlW*i/4, Label: "+" + fmtDuration(span*time.Duration(i)/4), Anchor: anchor})
	}
	tl.Rows = rows
	tl.Height = tlTop + len(rows)*tlRowH + 8
	return tl
}
