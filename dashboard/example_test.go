package dashboard_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/dashboard"
)

// Mount the dashboard under /ops/ of an application's server, behind
// basic auth.
func ExampleNew() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "checkout", Tasks: []batuta.Task{{Name: "charge", Run: noop}}})

	h, err := dashboard.New(dashboard.Config{Orchestrator: o, Authorize: dashboard.BasicAuth("ops", "s3cret")})
	if err != nil {
		fmt.Println(err)
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/ops/", http.StripPrefix("/ops", h))

	for _, auth := range []bool{false, true} {
		req := httptest.NewRequest(http.MethodGet, "/ops/", nil)
		if auth {
			req.SetBasicAuth("ops", "s3cret")
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		fmt.Println(rec.Code, rec.Header().Get("WWW-Authenticate"))
	}
	// Output:
	// 401 Basic realm="batuta", charset="UTF-8"
	// 200
}
