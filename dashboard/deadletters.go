package dashboard

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/batuta-dev/batuta"
)

type boxView struct {
	Index    int
	Name     string
	Workflow string
	Letters  []deadLetterView
	Err      string
	NextLink string
	Cursor   string
}

type deadLetterView struct {
	batuta.DeadLetterItem
	Data preview
}

// boxes returns the boxes the page shows: those of the triggers bound to
// the orchestrator, then Config.DeadLetters.
func (h *handler) boxes() []boxRef {
	var out []boxRef
	for _, b := range h.o.DeadLetterBoxes() {
		out = append(out, boxRef{name: b.DeadLetterSource(), workflow: b.Workflow, box: b.DeadLetterBox})
	}
	for _, b := range h.cfg.DeadLetters {
		out = append(out, boxRef{name: b.DeadLetterSource(), box: b})
	}
	return out
}

type boxRef struct {
	name, workflow string
	box            batuta.DeadLetterBox
}

func (h *handler) deadLetters(r *http.Request, p *page) (int, error) {
	var boxes []boxView
	q := r.URL.Query()
	for i, b := range h.boxes() {
		bv := boxView{Index: i, Name: b.name, Workflow: b.workflow}
		key := fmt.Sprintf("after%d", i)
		bv.Cursor = q.Get(key)
		ls, err := b.box.DeadLetters(r.Context(), batuta.DeadLetterQuery{After: bv.Cursor, Limit: h.cfg.PageSize + 1})
		if err != nil {
			bv.Err = err.Error()
		}
		more := len(ls) > h.cfg.PageSize
		if more {
			ls = ls[:h.cfg.PageSize]
			bv.NextLink = "dead-letters?" + key + "=" + urlQuery(ls[len(ls)-1].ID)
		}
		for _, l := range ls {
			bv.Letters = append(bv.Letters, deadLetterView{DeadLetterItem: l, Data: makePreview(l.Event.Data, min(h.cfg.MaxPreviewBytes, 4<<10))})
		}
		boxes = append(boxes, bv)
	}
	p.Title, p.Data = "Dead letters", boxes
	return 0, nil
}

func (h *handler) deadLetterAction(redrive bool) func(r *http.Request) (string, string, error) {
	return func(r *http.Request) (string, string, error) {
		const target = "dead-letters"
		boxes := h.boxes()
		i, err := strconv.Atoi(r.PostFormValue("box"))
		if err != nil || i < 0 || i >= len(boxes) || boxes[i].name != r.PostFormValue("source") {
			return "", target, errors.New("unknown dead-letter box (the bindings changed?): reload the page")
		}
		box, name := boxes[i].box, boxes[i].name
		ids := r.PostForm["id"]
		if len(ids) == 0 {
			return "", target, errors.New("select at least one letter")
		}
		ctx := context.WithoutCancel(r.Context())
		if redrive {
			n, err := box.Redrive(ctx, ids...)
			if err != nil {
				return "", target, fmt.Errorf("%s: redrove %d of %d letters, then: %w", name, n, len(ids), err)
			}
			return fmt.Sprintf("%s: %d of %d letters redriven (the others were already gone).", name, n, len(ids)), target, nil
		}
		n, err := box.Delete(ctx, ids...)
		if err != nil {
			return "", target, fmt.Errorf("%s: deleted %d of %d letters, then: %w", name, n, len(ids), err)
		}
		return fmt.Sprintf("%s: %d of %d letters deleted.", name, n, len(ids)), target, nil
	}
}

func urlQuery(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }
