package dashboard_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/dashboard"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// chromiumPath finds a Chromium or Chrome; it skips the test when there is
// none, unless BATUTA_REQUIRE_SERVICES=1 (.ci/run installs Debian's
// chromium).
func chromiumPath(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("BATUTA_REQUIRE_SERVICES") == "1" {
		t.Fatal("no chromium on PATH (apt-get install chromium) and BATUTA_REQUIRE_SERVICES=1")
	}
	t.Skip("no chromium on PATH: apt-get install chromium to run the browser tests")
	return ""
}

// screenshotDir is where the browser test writes its screenshots:
// $BATUTA_SCREENSHOTS, else testdata/screenshots (gitignored).
func screenshotDir(t *testing.T) string {
	dir := os.Getenv("BATUTA_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join("testdata", "screenshots")
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	abs, err := filepath.Abs(dir)
	require.NoError(t, err)
	return abs
}

// browserProblems collects what the page reports as wrong: console
// errors, uncaught exceptions, failed loads and CSP violations.
type browserProblems struct {
	mu   sync.Mutex
	list []string
}

func (b *browserProblems) add(s string) {
	b.mu.Lock()
	b.list = append(b.list, s)
	b.mu.Unlock()
}

func (b *browserProblems) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.list
	b.list = nil
	return out
}

func TestBrowser(t *testing.T) {
	exe := chromiumPath(t)
	f := newFixture(t)
	srv := serve(t, dashboard.Config{Orchestrator: f.o, RefreshInterval: 100 * time.Millisecond})
	base := srv.URL + "/ops/"
	shots := screenshotDir(t)
	t.Logf("screenshots in %s", shots)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.WindowSize(1440, 1000), chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()

	var problems browserProblems
	require.NoError(t, chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value))
				}
				problems.add("console." + string(ev.Type) + ": " + strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			problems.add("exception: " + ev.ExceptionDetails.Text + " " + describe(ev.ExceptionDetails.Exception))
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError {
				problems.add("log: " + ev.Entry.Text + " " + ev.Entry.URL)
			}
		}
	}))
	_, err := chromedp.Call(ctx, network.Enable, network.EnableParams{})
	require.NoError(t, err)
	_, err = chromedp.Call(ctx, log.Enable, cdp.Empty{})
	require.NoError(t, err)
	_, err = chromedp.Call(ctx, runtime.Enable, cdp.Empty{})
	require.NoError(t, err)
	_, err = chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": basicHeader()}})
	require.NoError(t, err)

	visit := func(name, path string) {
		t.Helper()
		require.NoError(t, chromedp.Do(ctx,
			chromedp.Navigate(base+path),
			chromedp.WaitVisible("main h1"),
			// The live stream connected: the page will follow changes.
			chromedp.WaitVisible(`#live[data-state="live"]`),
		), name)
		buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		require.NoError(t, err, name)
		require.NoError(t, os.WriteFile(filepath.Join(shots, name+".png"), buf, 0o644))
		assert.Empty(t, problems.take(), "page %s (%s)", name, path)
	}
	// The listener sees what goes wrong (or the assertions below prove nothing).
	_, err = chromedp.Run(ctx, chromedp.Evaluate[any](`console.error("probe")`))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		ps := problems.take()
		return len(ps) == 1 && strings.Contains(ps[0], "probe")
	}, 30*time.Second, 10*time.Millisecond, "the console listener missed a console.error")

	visit("overview", "")
	visit("runs", "runs")
	visit("runs-failed", "runs?state=failed")
	visit("run-failed", "runs/"+f.runs["failed"])
	visit("run-panicked", "runs/"+f.runs["panicked"])
	visit("run-succeeded", "runs/"+f.runs["succeeded"])
	visit("run-running", "runs/"+f.runs["running"])
	visit("run-pending", "runs/"+f.runs["pending"])
	visit("run-canceled", "runs/"+f.runs["canceled"])
	visit("run-hostile", "runs/"+f.runs["hostile"])
	visit("schedules", "schedules")
	visit("triggers", "triggers")
	visit("dead-letters", "dead-letters")

	// The hostile page ran no injected script and shows the text.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(base+"runs/"+f.runs["hostile"]),
		chromedp.WaitVisible("main h1"),
	))
	alerts, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelectorAll("main script, main img[src=x], main b[onmouseover]").length > 0`))
	require.NoError(t, err)
	title, err := chromedp.Run(ctx, chromedp.Text(`#ev-h + dl code`))
	require.NoError(t, err)
	assert.False(t, alerts, "injected elements in the DOM")
	assert.Equal(t, hostileID, title)

	// The DAG of the failed run: one node per task, with its state.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(base+"runs/"+f.runs["failed"]),
		chromedp.WaitVisible("svg.dag"),
	))
	nodes, err := chromedp.Run(ctx, chromedp.Evaluate[[]map[string]string](`[...document.querySelectorAll("svg.dag .dag-node")].map(n => ({task: n.dataset.task, state: n.dataset.state}))`))
	require.NoError(t, err)
	require.Len(t, nodes, 5)
	states := map[string]string{}
	for _, n := range nodes {
		states[n["task"]] = n["state"]
	}
	assert.Equal(t, map[string]string{"validate": "succeeded", "charge": "failed", "send-email": "upstream_failed",
		"reserve-stock": "upstream_failed", "complete": "upstream_failed"}, states)

	// Retry from the run page, once the failing dependency is fixed: the
	// page follows the run to success without a reload.
	f.broken.Store(false)
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click("#retry"),
		chromedp.WaitVisible(".flash-ok"),
		chromedp.WaitVisible(`main h1 .badge.s-succeeded`),
	))
	ok, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('svg.dag .dag-node[data-state="succeeded"]').length`))
	require.NoError(t, err)
	assert.Equal(t, 5, ok, "every node of the DAG followed the run to success")
	r, err := f.o.GetRun(ctx, f.runs["failed"])
	require.NoError(t, err)
	assert.Equal(t, batuta.RunSucceeded, r.State)
	assert.Equal(t, 1, r.Retries)
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(shots, "run-retried.png"), buf, 0o644))
	assert.Empty(t, problems.take(), "retry")

	// Keyboard only: from the top of the hostile run's page, Tab reaches
	// the retry button, and Enter retries the run.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(base+"runs/"+f.runs["hostile"]),
		chromedp.WaitVisible("#retry"),
	))
	var focused string
	var visited []string
	for range 40 {
		require.NoError(t, chromedp.Do(ctx, chromedp.KeyEvent(kb.Tab)))
		focused, err = chromedp.Run(ctx, chromedp.Evaluate[string](`(document.activeElement.id || document.activeElement.textContent || "").trim().slice(0, 40)`))
		require.NoError(t, err)
		visited = append(visited, focused)
		if focused == "retry" {
			break
		}
	}
	require.Equal(t, "retry", focused, "Tab never reached the retry button; focus went through %q", visited)
	outline, err := chromedp.Run(ctx, chromedp.Evaluate[string](`getComputedStyle(document.activeElement).outlineStyle`))
	require.NoError(t, err)
	require.NoError(t, chromedp.Do(ctx,
		chromedp.KeyEvent(kb.Enter),
		chromedp.WaitVisible(`main h1 .badge.s-succeeded`),
	))
	assert.NotEqual(t, "none", outline, "the focused button shows a focus ring")
	r, err = f.o.GetRun(ctx, f.runs["hostile"])
	require.NoError(t, err)
	assert.Equal(t, batuta.RunSucceeded, r.State)
	assert.Empty(t, problems.take(), "keyboard")

	// The overview follows a pause without a reload.
	require.NoError(t, f.o.Pause(ctx, "checkout"))
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(base),
		chromedp.WaitVisible(`main h1`),
	))
	require.NoError(t, f.o.Resume(ctx, "checkout"))
	var pausedRows int
	for {
		pausedRows, err = chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("main tbody .badge.s-paused").length`))
		require.NoError(t, err)
		if pausedRows == 1 { // only "held" left
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the overview never showed checkout resumed (%d paused rows)", pausedRows)
		case <-time.After(20 * time.Millisecond):
		}
	}
	assert.Empty(t, problems.take(), "overview live")
	fmt.Fprintln(os.Stderr, "browser test screenshots:", shots)
}

func describe(o *runtime.RemoteObject) string {
	if o == nil {
		return ""
	}
	return o.Description
}
