package dashboard_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/dashboard"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// client is a browser-like client: a cookie jar, basic credentials, and
// redirects not followed (the tests look at them).
type client struct {
	t    *testing.T
	base string // the dashboard's root URL, ending in /
	hc   *http.Client
	auth bool
}

func newClient(t *testing.T, srv string) *client {
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	return &client{t: t, base: srv + "/ops/", auth: true, hc: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// reply is what do returns of a response (whose body it read and closed).
type reply struct {
	StatusCode int
	Header     http.Header
}

func (c *client) do(method, path string, form url.Values, hdr map[string]string) (*reply, string) {
	c.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, c.base+path, body)
	require.NoError(c.t, err)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if c.auth {
		req.Header.Set("Authorization", basicHeader())
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return &reply{StatusCode: resp.StatusCode, Header: resp.Header}, string(b)
}

func (c *client) get(path string) string {
	c.t.Helper()
	resp, body := c.do(http.MethodGet, path, nil, nil)
	require.Equal(c.t, http.StatusOK, resp.StatusCode, "GET %s: %s", path, body)
	return body
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRe.FindStringSubmatch(page)
	require.NotNil(t, m, "no CSRF token in the page")
	return m[1]
}

func TestNewRequiresAuthorize(t *testing.T) {
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	_, err = dashboard.New(dashboard.Config{Orchestrator: o})
	require.ErrorIs(t, err, batuta.ErrInvalidConfig)
	assert.Contains(t, err.Error(), "Authorize")
	_, err = dashboard.New(dashboard.Config{Orchestrator: o, Authorize: dashboard.BasicAuth("a", "b"), UnsafeAllowUnauthenticated: true})
	require.ErrorIs(t, err, batuta.ErrInvalidConfig)
	_, err = dashboard.New(dashboard.Config{Authorize: dashboard.BasicAuth("a", "b")})
	require.ErrorIs(t, err, batuta.ErrInvalidConfig)
	_, err = dashboard.New(dashboard.Config{Orchestrator: o, Authorize: dashboard.BasicAuth("a", "b"), CSRFKey: []byte("short")})
	require.ErrorIs(t, err, batuta.ErrInvalidConfig)
	_, err = dashboard.New(dashboard.Config{Orchestrator: o, UnsafeAllowUnauthenticated: true, Logger: quiet})
	require.NoError(t, err)
}

func TestAuthorizeGuardsEveryRoute(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, dashboard.Config{Orchestrator: f.o})
	c := newClient(t, srv.URL)
	c.auth = false
	for _, p := range []string{"", "runs", "runs/" + f.runs["failed"], "schedules", "triggers", "dead-letters", "static/style.css", "events?path=runs", "nope"} {
		resp, body := c.do(http.MethodGet, p, nil, nil)
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "GET %s", p)
		assert.Contains(t, resp.Header.Get("WWW-Authenticate"), "Basic")
		assert.NotContains(t, body, "checkout", "GET %s leaks a workflow name", p)
	}
	resp, _ := c.do(http.MethodPost, "runs/"+f.runs["failed"]+"/retry", url.Values{}, nil)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	c.auth = true
	c.do(http.MethodGet, "", nil, map[string]string{"Authorization": "Basic " + "b3BzOndyb25n"}) // ops:wrong
	resp, _ = c.do(http.MethodGet, "", nil, map[string]string{"Authorization": "Basic b3BzOndyb25n"})
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "wrong password")
	assert.Contains(t, c.get(""), "checkout")

	// An *HTTPError chooses the status.
	srv2 := serve(t, dashboard.Config{Orchestrator: f.o, Authorize: func(*http.Request) error {
		return &batuta.HTTPError{Status: http.StatusForbidden, Message: "not on the ops team"}
	}})
	resp, body := newClient(t, srv2.URL).do(http.MethodGet, "", nil, nil)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Contains(t, body, "not on the ops team")
}

func TestActionsRequireCSRFTokenAndSameOrigin(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, dashboard.Config{Orchestrator: f.o})
	c := newClient(t, srv.URL)
	id := f.runs["failed"]
	page := c.get("runs/" + id)
	token := csrfOf(t, page)
	action := "runs/" + id + "/retry"
	assert.Contains(t, page, `action="runs/`+id+`/retry"`)

	f.broken.Store(false)
	for name, tc := range map[string]struct {
		form url.Values
		hdr  map[string]string
	}{
		"no token":     {url.Values{}, nil},
		"wrong token":  {url.Values{"csrf": {token[:len(token)-2] + "xx"}}, nil},
		"cross-site":   {url.Values{"csrf": {token}}, map[string]string{"Sec-Fetch-Site": "cross-site"}},
		"other origin": {url.Values{"csrf": {token}}, map[string]string{"Origin": "https://evil.example"}},
	} {
		resp, body := c.do(http.MethodPost, action, tc.form, tc.hdr)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, name)
		assert.Contains(t, body, "refused", name)
	}
	// Another browser (no cookie) with a stolen token is refused too.
	other := newClient(t, srv.URL)
	resp, _ := other.do(http.MethodPost, action, url.Values{"csrf": {token}}, nil)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, "token without its cookie")
	r, err := f.o.GetRun(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State, "no refused request retried the run")

	resp, _ = c.do(http.MethodPost, action, url.Values{"csrf": {token}}, map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": srv.URL})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "../../runs/"+id, resp.Header.Get("Location"), "back to the run page, relative")
	r = waitState(t, f.o, id, batuta.RunSucceeded)
	assert.Equal(t, 1, r.Retries)
	page = c.get("runs/" + id)
	assert.Contains(t, page, "reopened", "the flash message says what happened")
	assert.NotContains(t, c.get("runs/"+id), "reopened", "a flash shows once")
}

func TestReadOnlyHidesAndRefusesActions(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, dashboard.Config{Orchestrator: f.o, ReadOnly: true})
	c := newClient(t, srv.URL)
	for _, p := range []string{"", "runs?state=failed", "runs/" + f.runs["failed"], "runs/" + f.runs["running"], "schedules", "dead-letters"} {
		page := c.get(p)
		assert.NotContains(t, page, `method="post"`, "GET %s shows an action", p)
		assert.Contains(t, page, "read-only")
	}
	for _, p := range []string{"runs/" + f.runs["failed"] + "/retry", "runs/" + f.runs["running"] + "/cancel", "workflows/checkout/pause", "runs/retry", "dead-letters/redrive"} {
		resp, body := c.do(http.MethodPost, p, url.Values{"state": {"failed"}}, nil)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, p)
		assert.Contains(t, body, "read-only", p)
	}
	r, err := f.o.GetRun(context.Background(), f.runs["running"])
	require.NoError(t, err)
	assert.Equal(t, batuta.RunRunning, r.State)
	paused, err := f.o.Paused(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []string{"held"}, paused)
}

func TestHostileInputIsEscaped(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, dashboard.Config{Orchestrator: f.o})
	c := newClient(t, srv.URL)
	for _, p := range []string{"runs", "runs/" + f.runs["hostile"], "runs?event=" + url.QueryEscape(hostileID), "runs?subject=" + url.QueryEscape(hostileSubject), "runs?error=" + url.QueryEscape("<script>")} {
		page := c.get(p)
		for _, bad := range []string{"<script>alert", "<img src=x", "<b onmouseover", `"><img`} {
			assert.NotContains(t, page, bad, "GET %s", p)
		}
	}
	page := c.get("runs/" + f.runs["hostile"])
	assert.Contains(t, page, "&lt;script&gt;alert(&#34;id&#34;)&lt;/script&gt;", "the event ID is shown, escaped")
	assert.Contains(t, page, "&lt;/pre&gt;&lt;script&gt;alert(2)", "the event data is shown, escaped")
	found := c.get("runs?event=" + url.QueryEscape(hostileID))
	assert.Contains(t, found, f.runs["hostile"], "search by a hostile event ID finds its run")

	// A hostile run ID in the path is reflected escaped in the 404.
	resp, body := c.do(http.MethodGet, "runs/"+url.PathEscape(`<svg onload=alert(1)>`), nil, nil)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.NotContains(t, body, "<svg onload")
	assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "script-src 'self'")
}

var (
	nextRe = regexp.MustCompile(`href="([^"]+)" rel="next"`)
	prevRe = regexp.MustCompile(`href="([^"]+)" rel="prev"`)
	rowRe  = regexp.MustCompile(`<a href="runs/([0-9a-f-]{36})"><code>`)
)

func TestRunsPaginateByKeyset(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var want []string
	for i := range 7 {
		id, err := f.o.Submit(ctx, "held", batuta.Event{ID: "page-" + string(rune('a'+i))})
		require.NoError(t, err)
		want = append([]string{id}, want...) // newest first
	}
	srv := serve(t, dashboard.Config{Orchestrator: f.o, PageSize: 3})
	c := newClient(t, srv.URL)
	ids := func(page string) []string {
		var out []string
		for _, m := range rowRe.FindAllStringSubmatch(page, -1) {
			out = append(out, m[1])
		}
		return out
	}
	link := func(re *regexp.Regexp, page string) string {
		m := re.FindStringSubmatch(page)
		if m == nil {
			return ""
		}
		return strings.ReplaceAll(m[1], "&amp;", "&")
	}
	p1 := c.get("runs?workflow=held")
	assert.Equal(t, want[:3], ids(p1))
	assert.Empty(t, link(prevRe, p1), "the first page has no newer page")
	next := link(nextRe, p1)
	require.Contains(t, next, "after="+want[2])
	require.Contains(t, next, "workflow=held", "the filter is kept")
	p2 := c.get(next)
	assert.Equal(t, want[3:6], ids(p2))
	p3 := c.get(link(nextRe, p2))
	assert.Equal(t, want[6:7], ids(p3)[:1])
	assert.Len(t, ids(p3), 2, "the seventh, and the paused fixture run submitted before")
	assert.Empty(t, link(nextRe, p3), "the last page has no older page")
	back := c.get(link(prevRe, p3))
	assert.Equal(t, ids(p2), ids(back), "newer from page 3 is page 2")
	assert.NotContains(t, p2, "offset")

	resp, body := c.do(http.MethodGet, "runs?state=bogus", nil, nil)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Contains(t, body, "unknown state")
}

func TestMountedUnderAnyPrefix(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, dashboard.Config{Orchestrator: f.o})
	c := newClient(t, srv.URL)
	c.base = srv.URL + "/"
	h, err := dashboard.New(dashboard.Config{Orchestrator: f.o, Authorize: dashboard.BasicAuth(user, password), Logger: quiet})
	require.NoError(t, err)
	bare := httptest.NewServer(http.StripPrefix("/ops", h)) // mounted without the trailing slash
	defer bare.Close()
	c.base = bare.URL + "/"
	resp, _ := c.do(http.MethodGet, "ops?x=1", nil, nil)
	assert.Equal(t, http.StatusMovedPermanently, resp.StatusCode)
	assert.Equal(t, "./ops/", resp.Header.Get("Location"))
	c.base = srv.URL + "/ops/"
	page := c.get("runs/" + f.runs["failed"])
	assert.Contains(t, page, `<base href="../">`)
	assert.Contains(t, page, `href="static/style.css"`)
	assert.NotContains(t, page, `href="/`, "no absolute link")
	assert.NotContains(t, page, `action="/`, "no absolute action")
	css := c.get("static/style.css")
	assert.Contains(t, css, ":focus-visible")
}

func TestEventStreamSendsChangedPages(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, dashboard.Config{Orchestrator: f.o, RefreshInterval: 20 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := f.runs["running"]
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/ops/events?path="+url.QueryEscape("runs/"+id), nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", basicHeader())
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	events := readEvents(resp.Body)
	first := <-events
	assert.Contains(t, first, `badge s-running`, "the run page as it is now")
	close(f.release)
	for ev := range events {
		if strings.Contains(ev, "<h1><code class=\"id\">"+id+"</code> <span class=\"badge s-succeeded\"") {
			return // the run finished: the stream sent the page again
		}
	}
	t.Fatal("the stream ended without sending the finished run")
}

// readEvents returns the data of each "main" event of an SSE stream.
func readEvents(r io.Reader) <-chan string {
	ch := make(chan string)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<22)
		var data []string
		name := ""
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if name == "main" {
					ch <- strings.Join(data, "\n")
				}
				data, name = nil, ""
			case strings.HasPrefix(line, "event: "):
				name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				data = append(data, line[len("data: "):])
			}
		}
	}()
	return ch
}

func TestPagesShowEveryState(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, dashboard.Config{Orchestrator: f.o})
	c := newClient(t, srv.URL)
	ov := c.get("")
	for _, s := range []string{"checkout", "report", "slow", "held", "paused", "Latest failures"} {
		assert.Contains(t, ov, s)
	}
	run := c.get("runs/" + f.runs["panicked"])
	assert.Contains(t, run, "report template missing")
	assert.Contains(t, run, "goroutine", "the panic's stack is shown")
	big := c.get("runs/" + f.runs["succeeded"])
	assert.Contains(t, big, "KiB cut", "a large output is capped")
	assert.Less(t, len(big), 200<<10)
	sch := c.get("schedules")
	assert.Contains(t, sch, "CRON_TZ=Europe/Paris 30 2 * * *")
	assert.Equal(t, 5, strings.Count(sch, "CET")+strings.Count(sch, "CEST"), "five next fires in the schedule's zone")
	tr := c.get("triggers")
	assert.Contains(t, tr, "cron")
	assert.Contains(t, tr, "queue")
	assert.Regexp(t, `<span class="num">\d+</span> waiting, <span class="num">\d+</span> in flight`, tr, "the memory queue tells its backlog")
	assert.Contains(t, tr, "not reported by this source", "the cron trigger has none")
	dl := c.get("dead-letters")
	assert.Contains(t, dl, "msg-poison")
	assert.Contains(t, dl, "unparsable order message")
	assert.Contains(t, c.get("runs?state=canceled"), f.runs["canceled"])
	// Not just "503": the panicked run's error holds its stack, whose
	// offsets (+0x503) may contain it.
	assert.Contains(t, c.get("runs?error=503+Service"), f.runs["failed"])
	assert.NotContains(t, c.get("runs?error=503+Service"), f.runs["panicked"])
	assert.Contains(t, c.get("runs?id="+"order-later"), f.runs["pending"], "the jump box finds a run by event ID")
	resp, _ := c.do(http.MethodGet, "runs?id="+f.runs["pending"], nil, nil)
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode, "the jump box goes to a run by ID")
}

// TestRunPageCountsSnoozes: a task that polled by snoozing shows one row
// for its snoozes in a row, with their count.
func TestRunPageCountsSnoozes(t *testing.T) {
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	var calls atomic.Int32
	require.NoError(t, o.Register(&batuta.Workflow{Name: "poll", Tasks: []batuta.Task{{Name: "await",
		Run: func(context.Context, *batuta.Input) (any, error) {
			if calls.Add(1) <= 3 {
				return nil, batuta.Snooze(time.Millisecond)
			}
			return "ready", nil
		}}}}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	id, err := o.Submit(wctx, "poll", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(wctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	srv := serve(t, dashboard.Config{Orchestrator: o})
	page := newClient(t, srv.URL).get("runs/" + id)
	assert.Contains(t, page, "&times;3", "the snoozes' row counts them")
	assert.Equal(t, 2, strings.Count(page, `<tr><td>1</td>`), "one row for the snoozes, one for the success")
}

func TestDeadLettersRedriveAndPause(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, dashboard.Config{Orchestrator: f.o})
	c := newClient(t, srv.URL)
	page := c.get("dead-letters")
	token := csrfOf(t, page)
	m := regexp.MustCompile(`name="id" value="([^"]+)"`).FindStringSubmatch(page)
	require.NotNil(t, m)
	src := regexp.MustCompile(`name="source" value="([^"]+)"`).FindStringSubmatch(page)
	require.NotNil(t, src)
	resp, _ := c.do(http.MethodPost, "dead-letters/delete", url.Values{"csrf": {token}, "box": {"0"}, "source": {src[1]}, "id": {m[1]}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	page = c.get("dead-letters")
	assert.Contains(t, page, "1 of 1 letters deleted")
	assert.NotContains(t, page, "msg-poison")
	resp, _ = c.do(http.MethodPost, "dead-letters/delete", url.Values{"csrf": {token}, "box": {"0"}, "source": {src[1]}, "id": {m[1]}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Contains(t, c.get("dead-letters"), "0 of 1 letters deleted", "idempotent")

	// Redrive: the letter goes back to the source queue, whose trigger
	// rejects it again, so a new letter appears.
	require.NoError(t, f.in.Publish(context.Background(), batuta.Message{ID: "msg-poison-2", Body: []byte("poison")}))
	letterRe := regexp.MustCompile(`name="id" value="([^"]+)"`)
	var id2 string
	require.Eventually(t, func() bool {
		if m := letterRe.FindStringSubmatch(c.get("dead-letters")); m != nil {
			id2 = m[1]
		}
		return id2 != ""
	}, 30*time.Second, 5*time.Millisecond, "the second poison message was never dead-lettered")
	resp, _ = c.do(http.MethodPost, "dead-letters/redrive", url.Values{"csrf": {token}, "box": {"0"}, "source": {src[1]}, "id": {id2}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Contains(t, c.get("dead-letters"), "1 of 1 letters redriven")
	require.Eventually(t, func() bool {
		m := letterRe.FindStringSubmatch(c.get("dead-letters"))
		return m != nil && m[1] != id2 // consumed again from the source, and dead-lettered again
	}, 30*time.Second, 5*time.Millisecond, "the redriven letter never came back from the source")
	resp, _ = c.do(http.MethodPost, "dead-letters/redrive", url.Values{"csrf": {token}, "box": {"7"}, "source": {src[1]}, "id": {id2}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Contains(t, c.get("dead-letters"), "unknown dead-letter box")

	resp, _ = c.do(http.MethodPost, "workflows/held/resume", url.Values{"csrf": {token}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	waitState(t, f.o, f.runs["paused"], batuta.RunSucceeded)
	resp, _ = c.do(http.MethodPost, "workflows/nope/pause", url.Values{"csrf": {token}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Contains(t, c.get(""), "unknown workflow")
	resp, _ = c.do(http.MethodPost, "runs/"+f.runs["running"]+"/cancel", url.Values{"csrf": {token}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	r, err := f.o.Wait(context.Background(), f.runs["running"])
	require.NoError(t, err)
	assert.Equal(t, batuta.RunCanceled, r.State)
	f.broken.Store(false)
	resp, _ = c.do(http.MethodPost, "runs/retry", url.Values{"csrf": {token}, "state": {"failed"}, "workflow": {"checkout"}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Contains(t, c.get("runs"), "2 of 2 matching runs retried")
	waitState(t, f.o, f.runs["failed"], batuta.RunSucceeded)
}

func TestRerunFromTaskAndBadRetry(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, dashboard.Config{Orchestrator: f.o})
	c := newClient(t, srv.URL)
	id := f.runs["succeeded"]
	page := c.get("runs/" + id)
	assert.Contains(t, page, `name="from"`, "a succeeded run offers a re-run from a task")
	assert.NotContains(t, page, `id="retry"`, "but no retry of failed tasks")
	token := csrfOf(t, page)
	resp, _ := c.do(http.MethodPost, "runs/"+id+"/retry", url.Values{"csrf": {token}, "from": {"build"}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	r := waitState(t, f.o, id, batuta.RunSucceeded)
	assert.Equal(t, 1, r.Retries)
	assert.Len(t, r.Task("build").Attempts, 2, "the old attempt is kept, a new one ran")
	assert.Contains(t, c.get("runs/"+id), "reopened from task build")

	// Retrying a running run is refused with the core's reason, shown.
	resp, _ = c.do(http.MethodPost, "runs/"+f.runs["running"]+"/retry", url.Values{"csrf": {token}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	page = c.get("runs/" + f.runs["running"])
	assert.Contains(t, page, "flash-error")
	assert.Contains(t, page, "cannot be retried")
}

// stuckSource is a trigger whose backlog never comes before ctx ends.
type stuckSource struct{ batuta.TriggerFunc }

func (stuckSource) Backlog(ctx context.Context) (batuta.Backlog, error) {
	<-ctx.Done()
	return batuta.Backlog{}, ctx.Err()
}

// TestTriggersPageBacklogTimeout: a source that does not tell its backlog
// in time shows as unavailable; the page does not wait for it longer
// than its bound.
func TestTriggersPageBacklogTimeout(t *testing.T) {
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "wf", Tasks: []batuta.Task{{Name: "t", Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil }}}}))
	require.NoError(t, o.Bind("wf", stuckSource{func(ctx context.Context, _ batuta.FireFunc) error { <-ctx.Done(); return nil }}))
	srv := serve(t, dashboard.Config{Orchestrator: o})
	tr := newClient(t, srv.URL).get("triggers")
	assert.Contains(t, tr, "unavailable")
	assert.Contains(t, tr, "deadline exceeded")
}
