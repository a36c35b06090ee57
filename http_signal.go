package batuta

import (
	"encoding/json"
	"errors"
	"net/http"
)

// The signal routes of NewHTTPHandler:
//
//	POST /runs/{id}/signals/{name}            signal one run (Orchestrator.Signal)
//	POST /workflows/{name}/signals/{signal}   signal the unfinished runs of a workflow
//	                                          whose event Subject is the subject query
//	                                          parameter or the Ce-Subject header
//	                                          (Orchestrator.SignalWhere)
//
// The body is the signal's data (JSON, may be empty: null).

// httpSignalAnswer is the 202 answer of POST /runs/{id}/signals/{name}.
type httpSignalAnswer struct {
	RunID  string `json:"run_id"`
	Signal string `json:"signal"`
	// Delivered: a waiting task completed with the signal; otherwise it is
	// kept for the task that will wait for it.
	Delivered bool   `json:"delivered"`
	Task      string `json:"task,omitempty"`
}

// httpSignalWhereAnswer is the 202 answer of POST
// /workflows/{name}/signals/{signal}.
type httpSignalWhereAnswer struct {
	Workflow string `json:"workflow"`
	Subject  string `json:"subject"`
	Signal   string `json:"signal"`
	Runs     int    `json:"runs"`
}

// signalBody reads the request body as a signal's data: nil if empty,
// else the JSON as a json.RawMessage. It writes the error response itself
// (400, 413) and reports false on failure.
func (h *httpHandler) signalBody(w http.ResponseWriter, r *http.Request) (any, Event, bool) {
	ev, ok := h.event(w, r)
	if !ok {
		return nil, ev, false
	}
	if len(ev.Data) == 0 {
		return nil, ev, true
	}
	return json.RawMessage(ev.Data), ev, true
}

func (h *httpHandler) signalRun(w http.ResponseWriter, r *http.Request) {
	id, name := r.PathValue("id"), r.PathValue("name")
	data, _, ok := h.signalBody(w, r)
	if !ok {
		return
	}
	res, err := h.o.signal(r.Context(), id, name, data)
	if err != nil {
		h.signalError(w, r, err, "no run "+quote(id))
		return
	}
	w.Header().Set(HeaderRunID, id)
	h.json(w, http.StatusAccepted, httpSignalAnswer{RunID: id, Signal: name, Delivered: res.Delivered, Task: res.Task})
}

func (h *httpHandler) signalWhere(w http.ResponseWriter, r *http.Request) {
	wf, name := r.PathValue("name"), r.PathValue("signal")
	if _, err := h.o.workflow(wf); err != nil {
		h.error(w, r, http.StatusNotFound, "no workflow named "+quote(wf), nil)
		return
	}
	data, ev, ok := h.signalBody(w, r)
	if !ok {
		return
	}
	subject := r.URL.Query().Get("subject")
	if subject == "" {
		subject = ev.Subject
	}
	if subject == "" {
		h.error(w, r, http.StatusBadRequest, "no subject: pass the business key the runs' events carry, as ?subject= or the "+HeaderCESubject+" header", nil)
		return
	}
	n, err := h.o.SignalWhere(r.Context(), wf, subject, name, data)
	if err != nil {
		h.signalError(w, r, err, "unknown workflow")
		return
	}
	h.json(w, http.StatusAccepted, httpSignalWhereAnswer{Workflow: wf, Subject: subject, Signal: name, Runs: n})
}

// signalError maps a Signal or SignalWhere error to its status.
func (h *httpHandler) signalError(w http.ResponseWriter, r *http.Request, err error, notFound string) {
	switch {
	case errors.Is(err, ErrRunNotFound) || errors.Is(err, ErrUnknownWorkflow):
		h.error(w, r, http.StatusNotFound, notFound, nil)
	case errors.Is(err, ErrNoWaiter):
		h.error(w, r, http.StatusConflict, "no task waits for signal "+quote(r.PathValue("name")+r.PathValue("signal"))+
			": the run finished, has no task waiting for that name, or no unfinished run matched", nil)
	case errors.Is(err, ErrSignalBufferFull):
		h.retryAfter(w)
		h.error(w, r, http.StatusTooManyRequests, "the run already holds its maximum of unconsumed signals; retry later", nil)
	case errors.Is(err, ErrPayloadTooLarge):
		h.error(w, r, http.StatusRequestEntityTooLarge, err.Error(), nil)
	case errors.Is(err, ErrInvalidPayload):
		h.error(w, r, http.StatusBadRequest, err.Error(), nil)
	case r.Context().Err() != nil:
		// The client left.
	default:
		h.cfg.Logger.ErrorContext(r.Context(), "batuta: http: signal failed", "path", clip(r.URL.Path), "error", err)
		h.error(w, r, http.StatusInternalServerError, "could not send the signal", nil)
	}
}
