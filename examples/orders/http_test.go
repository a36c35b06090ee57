package main

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestOrdersHTTPNeedsCredentials(t *testing.T) {
	for _, args := range [][]string{
		{"-http", "127.0.0.1:0"},
		{"-http", "127.0.0.1:0", "-http-user", "ops"},
		{"-http", "127.0.0.1:0", "-http-insecure", "-http-user", "ops", "-http-password", "x"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%q) accepted", args)
		}
	}
	opt, err := parseFlags([]string{"-http", "127.0.0.1:0", "-http-insecure"})
	if err != nil || !opt.serve {
		t.Fatalf("-http-insecure: %v, serve %v", err, opt.serve)
	}
	opt, err = parseFlags([]string{"-http", "127.0.0.1:0", "-http-user", "ops", "-http-password", "pw"})
	if err != nil || !opt.serve {
		t.Fatalf("-http with credentials: %v, serve %v", err, opt.serve)
	}
	if opt, err := parseFlags(nil); err != nil || opt.serve || opt.http != "" {
		t.Fatalf("the default run changed: %+v, %v", opt, err)
	}
}

var dashRE = regexp.MustCompile(`dashboard: (http://\S+/) `)

// TestOrdersHTTPServesDashboardAndFrontDoor: -http serves the dashboard at
// / and the front door at /api/, both behind basic auth; the runs failed
// by -payment-outage show in the dashboard.
func TestOrdersHTTPServesDashboardAndFrontDoor(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	opt, err := parseFlags([]string{"-n", "2", "-http", "127.0.0.1:0", "-http-user", "ops", "-http-password", "pw", "-payment-outage", "1h"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, opt, &out) }()
	deadline, stop := context.WithTimeout(ctx, time.Minute)
	defer stop()
	base := ""
	for base == "" || strings.Count(out.String(), " failed in ") < 2 {
		if m := dashRE.FindStringSubmatch(out.String()); m != nil {
			base = m[1]
		}
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v\n%s", err, out.String())
		case <-deadline.Done():
			t.Fatalf("no dashboard address or failed runs:\n%s", out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	get := func(path string, auth bool) (int, string) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if auth {
			req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("ops:pw")))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("", false); code != http.StatusUnauthorized {
		t.Errorf("dashboard without credentials: %d", code)
	}
	if code, _ := get("api/runs/nope", false); code != http.StatusUnauthorized {
		t.Errorf("front door without credentials: %d", code)
	}
	code, body := get("runs?state=failed", true)
	if code != http.StatusOK || strings.Count(body, `class="badge s-failed"`) != 2 {
		t.Errorf("the dashboard's failed runs: %d\n%s", code, body)
	}
	if code, body := get("api/runs/nope", true); code != http.StatusNotFound || !strings.Contains(body, "error") {
		t.Errorf("front door: %d %s", code, body)
	}
	if code, _ := get("metrics", false); code != http.StatusUnauthorized {
		t.Errorf("metrics without credentials: %d", code)
	}
	// The two failed runs are counted by the hooks, by workflow and state.
	if code, body := get("metrics", true); code != http.StatusOK || !strings.Contains(body, `batuta_runs_finished_total{state="failed",workflow="order-placed"} 2`) {
		t.Errorf("metrics: %d\n%s", code, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
}
