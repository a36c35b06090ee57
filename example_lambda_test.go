package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
)

// A function is a one-task workflow: register a handler, run the
// orchestrator, invoke it and get its output back.
func ExampleRegisterFunc() {
	o, _ := batuta.New(batuta.Config{Logger: lambdaQuiet})
	type Resize struct {
		Key   string `json:"key"`
		Width int    `json:"width"`
	}
	err := batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "resize-image", Concurrency: 4, Timeout: 10 * time.Second},
		func(ctx context.Context, r Resize) (string, error) {
			return fmt.Sprintf("thumbs/%s@%dpx", r.Key, min(r.Width, 128)), nil
		})
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	defer func() { stop(); <-done }()

	thumb, err := batuta.InvokeAs[string](ctx, o, "resize-image", Resize{Key: "cat.jpg", Width: 4000})
	fmt.Println(thumb, err)
	// Output: thumbs/cat.jpg@128px <nil>
}

// After the last attempt fails, the event and its error go to the
// function's dead-letter destination; the caller gets the error too.
func ExampleFunctionConfig_deadLetter() {
	o, _ := batuta.New(batuta.Config{Logger: lambdaQuiet})
	dead := make(chan batuta.DeadLetter, 1)
	err := batuta.RegisterFunc(o, batuta.FunctionConfig{
		Name:  "charge-card",
		Retry: batuta.RetryPolicy{MaxAttempts: 3, InitialDelay: time.Millisecond},
		DeadLetter: batuta.DeadLetterFunc(func(_ context.Context, dl batuta.DeadLetter) error {
			dead <- dl
			return nil
		}),
	}, func(ctx context.Context, amount int) (string, error) {
		return "", errors.New("card declined")
	})
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	defer func() { stop(); <-done }()

	_, err = o.Invoke(ctx, "charge-card", batuta.Event{ID: "payment-1", Data: []byte(`4200`)})
	var fe *batuta.FunctionError
	fmt.Println(errors.As(err, &fe), fe.State, fe.Attempts, fe.Err)
	dl := <-dead
	fmt.Println(dl.Event.ID, string(dl.Event.Data), dl.Reason, dl.Attempts, dl.Error)
	// Output:
	// true failed 3 card declined
	// payment-1 4200 failed 3 card declined
}

// The HTTP front door: POST /functions/{name} invokes a function like a
// function URL; the handler never runs without an authorisation func.
func ExampleNewHTTPHandler() {
	o, _ := batuta.New(batuta.Config{Logger: lambdaQuiet})
	_ = batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "greet"},
		func(ctx context.Context, in struct{ Name string }) (map[string]string, error) {
			return map[string]string{"greeting": "hello " + in.Name}, nil
		})
	h, err := batuta.NewHTTPHandler(batuta.HTTPConfig{
		Orchestrator: o,
		Authorize: func(r *http.Request) error {
			if r.Header.Get("Authorization") != "Bearer t0ken" {
				return errors.New("unauthorized")
			}
			return nil
		},
	})
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	defer func() { stop(); <-done }()
	srv := httptest.NewServer(http.StripPrefix("/api", h))
	defer srv.Close()

	for _, auth := range []string{"Bearer t0ken", ""} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/functions/greet", strings.NewReader(`{"name":"ana"}`))
		req.Header.Set("Authorization", auth)
		resp, err := srv.Client().Do(req)
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, strings.TrimSpace(string(body)))
	}
	// Output:
	// 200 {"greeting":"hello ana"}
	// 401 {"error":"unauthorized"}
}
