package dashboard

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/batuta-dev/batuta"
)

// preview is a payload shown in a page: pretty-printed JSON, text, or a
// hex dump of binary data, cut at Config.MaxPreviewBytes.
type preview struct {
	Text    string
	Kind    string // "json", "text", "binary", "empty"
	Size    int    // the whole payload's size in bytes, as shown
	Omitted int    // bytes cut
}

func makePreview(v any, limit int) preview {
	var raw []byte
	switch x := v.(type) {
	case nil:
		return preview{Kind: "empty"}
	case json.RawMessage:
		raw = x
	case []byte:
		raw = x
	case string:
		if json.Valid([]byte(x)) && strings.ContainsAny(x[:min(len(x), 1)], "{[") {
			raw = []byte(x)
		} else {
			return cut(preview{Kind: "text", Text: x}, limit)
		}
	default:
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return cut(preview{Kind: "text", Text: fmt.Sprintf("%+v", v)}, limit)
		}
		return cut(preview{Kind: "json", Text: string(b)}, limit)
	}
	if len(raw) == 0 {
		return preview{Kind: "empty"}
	}
	if json.Valid(raw) {
		var buf bytes.Buffer
		if len(raw) <= 4*limit && json.Indent(&buf, raw, "", "  ") == nil {
			return cut(preview{Kind: "json", Text: buf.String()}, limit)
		}
		return cut(preview{Kind: "json", Text: string(raw)}, limit)
	}
	if utf8.Valid(raw) {
		return cut(preview{Kind: "text", Text: string(raw)}, limit)
	}
	n := min(len(raw), max(limit/4, 16))
	p := preview{Kind: "binary", Text: hex.Dump(raw[:n]), Size: len(raw), Omitted: len(raw) - n}
	return p
}

func cut(p preview, limit int) preview {
	p.Size = len(p.Text)
	if len(p.Text) > limit {
		i := limit
		for i > 0 && !utf8.RuneStart(p.Text[i]) {
			i--
		}
		p.Omitted = len(p.Text) - i
		p.Text = p.Text[:i]
	}
	return p
}

func itoa(i int) string { return strconv.Itoa(i) }

func shortID(id string) string {
	if len(id) > 13 {
		return id[:8] + "…" + id[len(id)-4:]
	}
	return id
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// fmtDuration rounds d for people: 850ms, 12.3s, 4m05s, 2h10m, 3d4h.
func fmtDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Millisecond:
		return strconv.FormatInt(d.Microseconds(), 10) + "µs"
	case d < 10*time.Millisecond:
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + "ms"
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < time.Minute:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < time.Hour && d%time.Minute == 0:
		return strconv.Itoa(int(d.Minutes())) + "m"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func fmtTimeIn(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.Format("2006-01-02 15:04:05 MST")
}

var funcs = template.FuncMap{
	"dur":       fmtDuration,
	"time":      fmtTime,
	"timeIn":    fmtTimeIn,
	"iso":       func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) },
	"short":     shortID,
	"firstLine": firstLine,
	"path":      url.PathEscape,
	"query":     url.QueryEscape,
	"rate":      func(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) },
	"perMin": func(f float64) string {
		if f >= 10 {
			return strconv.FormatFloat(math.Round(f), 'f', 0, 64)
		}
		return strconv.FormatFloat(f, 'f', 2, 64)
	},
	"pct": func(f float64) string {
		if f < 0 {
			return "—"
		}
		if f == 100 || f == 0 {
			return strconv.FormatFloat(f, 'f', 0, 64) + "%"
		}
		return strconv.FormatFloat(f, 'f', 1, 64) + "%"
	},
	"rateClass": func(f float64) string {
		switch {
		case f < 0:
			return "muted"
		case f >= 99:
			return "good"
		case f >= 90:
			return "warn"
		}
		return "bad"
	},
	"stateLabel": func(s any) string { return strings.ReplaceAll(fmt.Sprint(s), "_", " ") },
	"stateIcon": func(s any) string {
		switch fmt.Sprint(s) {
		case "succeeded":
			return "✓"
		case "failed", "timed_out":
			return "✕"
		case "running":
			return "▶"
		case "pending":
			return "○"
		case "canceled":
			return "⊘"
		case "skipped":
			return "↷"
		case "upstream_failed":
			return "⤓"
		case "wait":
			return "‖"
		}
		return "•"
	},
	"finished": func(s batuta.RunState) bool { return s.Finished() },
	"kb": func(n int) string {
		if n < 1024 {
			return strconv.Itoa(n) + " B"
		}
		return strconv.FormatFloat(float64(n)/1024, 'f', 1, 64) + " KiB"
	},
	"add":      func(a, b int) int { return a + b },
	"list":     func(s ...string) []string { return s },
	"nonzero":  func(t time.Time) bool { return !t.IsZero() },
	"sinceDur": func(now, t time.Time) string { return fmtDuration(now.Sub(t)) },
}

// The templates: layout.html holds the frame and shared partials; each page
// file defines "main".
func (h *handler) parseTemplates() error {
	h.pages = map[string]*template.Template{}
	base, err := template.New("").Funcs(funcs).ParseFS(uiFS, "ui/layout.html")
	if err != nil {
		return fmt.Errorf("dashboard: templates: %w", err)
	}
	for _, name := range []string{"overview", "runs", "run", "schedules", "triggers", "deadletters", "error"} {
		t, err := base.Clone()
		if err == nil {
			t, err = t.ParseFS(uiFS, "ui/"+name+".html")
		}
		if err != nil {
			return fmt.Errorf("dashboard: template %s: %w", name, err)
		}
		h.pages[name] = t
	}
	return nil
}
