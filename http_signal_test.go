package batuta_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// post sends body to the handler and returns the status and decoded JSON.
func postSignal(t *testing.T, srv *httptest.Server, path, body string, hdr map[string]string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m), "body %q", b)
	return resp.StatusCode, m
}

func TestHTTPSignalRoutes(t *testing.T) {
	t.Parallel()
	o := setup(t, batuta.Config{MaxPayloadBytes: 4096}, shipWorkflow("hship", nil, batuta.SignalWait{Name: "shipped"}))
	h, err := batuta.NewHTTPHandler(batuta.HTTPConfig{Orchestrator: o, Authorize: bearerAuth, MaxBodyBytes: 8192})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	auth := map[string]string{"Authorization": testToken}
	ctx := context.Background()
	id, err := o.Submit(ctx, "hship", batuta.Event{Subject: "o-9"})
	require.NoError(t, err)
	other, err := o.Submit(ctx, "hship", batuta.Event{Subject: "o-10"})
	require.NoError(t, err)
	waitUntilWaiting(t, o, id, "ship", batuta.WaitForSignal("shipped"))
	waitUntilWaiting(t, o, other, "ship", batuta.WaitForSignal("shipped"))

	// GET /runs/{id} shows the wait.
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/runs/"+id, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", testToken)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	var snap struct {
		Tasks []struct {
			Name         string    `json:"name"`
			WaitingFor   string    `json:"waiting_for"`
			WaitingSince time.Time `json:"waiting_since"`
		} `json:"tasks"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&snap))
	require.NoError(t, resp.Body.Close())
	require.Equal(t, "ship", snap.Tasks[1].Name)
	require.Equal(t, "signal shipped", snap.Tasks[1].WaitingFor)
	require.False(t, snap.Tasks[1].WaitingSince.IsZero())

	st, m := postSignal(t, srv, "/runs/"+id+"/signals/shipped", `{"carrier":"ups","track":"9"}`, nil)
	require.Equal(t, http.StatusUnauthorized, st, "same auth as every route: %v", m)
	st, m = postSignal(t, srv, "/runs/nope/signals/shipped", `{}`, auth)
	require.Equal(t, http.StatusNotFound, st, m)
	st, m = postSignal(t, srv, "/runs/"+id+"/signals/arrived", `{}`, auth)
	require.Equal(t, http.StatusConflict, st, m)
	st, m = postSignal(t, srv, "/runs/"+id+"/signals/shipped", `{not json`, auth)
	require.Equal(t, http.StatusBadRequest, st, m)
	st, m = postSignal(t, srv, "/runs/"+id+"/signals/shipped", `"`+strings.Repeat("x", 5000)+`"`, auth)
	require.Equal(t, http.StatusRequestEntityTooLarge, st, "over MaxPayloadBytes: %v", m)
	st, m = postSignal(t, srv, "/runs/"+id+"/signals/shipped", `"`+strings.Repeat("x", 9000)+`"`, auth)
	require.Equal(t, http.StatusRequestEntityTooLarge, st, "over MaxBodyBytes: %v", m)

	st, m = postSignal(t, srv, "/runs/"+id+"/signals/shipped", `{"carrier":"ups","track":"9"}`, auth)
	require.Equal(t, http.StatusAccepted, st, m)
	require.Equal(t, id, m["run_id"])
	require.Equal(t, true, m["delivered"])
	require.Equal(t, "ship", m["task"])
	r, err := o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	out, err := batuta.OutputAs[string](r.Task("notify").Output)
	require.NoError(t, err)
	require.Equal(t, "shipped by ups as 9", out)
	st, m = postSignal(t, srv, "/runs/"+id+"/signals/shipped", `{}`, auth)
	require.Equal(t, http.StatusConflict, st, "the run finished: %v", m)

	// By workflow and subject.
	st, m = postSignal(t, srv, "/workflows/nope/signals/shipped?subject=o-10", `{}`, auth)
	require.Equal(t, http.StatusNotFound, st, m)
	st, m = postSignal(t, srv, "/workflows/hship/signals/shipped", `{}`, auth)
	require.Equal(t, http.StatusBadRequest, st, "no subject: %v", m)
	st, m = postSignal(t, srv, "/workflows/hship/signals/shipped?subject=o-11", `{}`, auth)
	require.Equal(t, http.StatusConflict, st, m)
	st, m = postSignal(t, srv, "/workflows/hship/signals/shipped", `{"carrier":"dhl","track":"10"}`,
		map[string]string{"Authorization": testToken, batuta.HeaderCESubject: "o-10"})
	require.Equal(t, http.StatusAccepted, st, m)
	require.EqualValues(t, 1, m["runs"])
	r, err = o.Wait(waitCtx(t), other)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
}
