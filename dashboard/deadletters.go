package dashboard

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/batuta-dev/batuta"
)

// A DeadLetterBox is a place dead letters are kept: an outbox's dead
// rows, a queue trigger's dead-letter destination, a workflow's
// DeadLetter handler's store. The dashboard lists its letters, redrives
// them (back to their source, which starts their workflow again) and
// deletes them. Every method must be idempotent: redriving or deleting a
// letter that is already gone is not an error (it is not counted).
//
// This interface is the dashboard's own: the core's dead-letter API was
// not merged when the dashboard was written; an adapter from the core's
// type is a few lines.
type DeadLetterBox interface {
	// Name names the box on the page (e.g. "orders outbox").
	Name() string
	// List returns up to limit letters, oldest first, after the letter
	// whose ID is after ("" for the first page).
	List(ctx context.Context, after string, limit int) ([]DeadLetterEntry, error)
	// Redrive hands the letters back to their source and removes them
	// from the box; it returns how many it redrove.
	Redrive(ctx context.Context, ids []string) (int, error)
	// Delete removes the letters; it returns how many it deleted.
	Delete(ctx context.Context, ids []string) (int, error)
}

// DeadLetterEntry is one letter of a DeadLetterBox.
type DeadLetterEntry struct {
	// ID identifies the letter within its box.
	ID string
	batuta.DeadLetter
}

type boxView struct {
	Index    int
	Name     string
	Letters  []deadLetterView
	Err      string
	NextLink string
	Cursor   string
}

type deadLetterView struct {
	DeadLetterEntry
	Data preview
}

func (h *handler) deadLetters(r *http.Request, p *page) (int, error) {
	var boxes []boxView
	q := r.URL.Query()
	for i, b := range h.cfg.DeadLetters {
		bv := boxView{Index: i, Name: b.Name()}
		key := fmt.Sprintf("after%d", i)
		bv.Cursor = q.Get(key)
		ls, err := b.List(r.Context(), bv.Cursor, h.cfg.PageSize+1)
		if err != nil {
			bv.Err = err.Error()
		}
		more := len(ls) > h.cfg.PageSize
		if more {
			ls = ls[:h.cfg.PageSize]
			bv.NextLink = "dead-letters?" + key + "=" + urlQuery(ls[len(ls)-1].ID)
		}
		for _, l := range ls {
			bv.Letters = append(bv.Letters, deadLetterView{DeadLetterEntry: l, Data: makePreview(l.Event.Data, min(h.cfg.MaxPreviewBytes, 4<<10))})
		}
		boxes = append(boxes, bv)
	}
	p.Title, p.Data = "Dead letters", boxes
	return 0, nil
}

func (h *handler) deadLetterAction(redrive bool) func(r *http.Request) (string, string, error) {
	return func(r *http.Request) (string, string, error) {
		const target = "dead-letters"
		var i int
		if _, err := fmt.Sscan(r.PostFormValue("box"), &i); err != nil || i < 0 || i >= len(h.cfg.DeadLetters) {
			return "", target, errors.New("unknown dead-letter box")
		}
		box := h.cfg.DeadLetters[i]
		ids := r.PostForm["id"]
		if len(ids) == 0 {
			return "", target, errors.New("select at least one letter")
		}
		ctx := context.WithoutCancel(r.Context())
		if redrive {
			n, err := box.Redrive(ctx, ids)
			if err != nil {
				return "", target, fmt.Errorf("%s: redrove %d of %d letters, then: %w", box.Name(), n, len(ids), err)
			}
			return fmt.Sprintf("%s: %d of %d letters redriven (the others were already gone).", box.Name(), n, len(ids)), target, nil
		}
		n, err := box.Delete(ctx, ids)
		if err != nil {
			return "", target, fmt.Errorf("%s: deleted %d of %d letters, then: %w", box.Name(), n, len(ids), err)
		}
		return fmt.Sprintf("%s: %d of %d letters deleted.", box.Name(), n, len(ids)), target, nil
	}
}

func urlQuery(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }
