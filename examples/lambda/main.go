// Command lambda shows function-style handlers: one handler per event type,
// each a one-task workflow with its own concurrency limit, timeout, retries
// and dead-letter destination. It invokes them directly (Invoke, InvokeAs,
// InvokeAsync) and over HTTP through batuta's HTTP front door, then exits.
//
//	go run ./examples/lambda
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
)

// ImageUploaded is the payload of image.uploaded events.
type ImageUploaded struct {
	Bucket string `json:"bucket"`
	Key    string `json:"key"`
	Width  int    `json:"width"`
}

// Thumbnail is what resize-image returns.
type Thumbnail struct {
	Key   string `json:"key"`
	Width int    `json:"width"`
}

// UserSignedUp is the payload of user.signed_up events.
type UserSignedUp struct {
	Email string `json:"email"`
}

// PaymentRequested is the payload of payment.requested events.
type PaymentRequested struct {
	Order  string `json:"order"`
	Amount int64  `json:"amount"`
}

const token = "Bearer example-token"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "lambda:", err)
		os.Exit(1)
	}
}

func register(o *batuta.Orchestrator, dead batuta.DeadLetterHandler) error {
	// image.uploaded -> resize-image: at most 4 resizes at once.
	if err := batuta.RegisterFunc(o, batuta.FunctionConfig{
		Name: "resize-image", Concurrency: 4, Timeout: 10 * time.Second,
	}, func(ctx context.Context, img ImageUploaded) (Thumbnail, error) {
		if img.Key == "" {
			return Thumbnail{}, batuta.Permanent(errors.New("key is required"))
		}
		w := min(img.Width, 128)
		return Thumbnail{Key: "thumbs/" + img.Key, Width: w}, nil
	}); err != nil {
		return err
	}
	// user.signed_up -> send-welcome: takes the whole event.
	if err := batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "send-welcome"},
		func(ctx context.Context, ev batuta.Event) (string, error) {
			u, err := batuta.DecodeEvent[UserSignedUp](ev)
			if err != nil {
				return "", err
			}
			in, _ := batuta.InputFromContext(ctx)
			// in.IdempotencyKey() is what an email API gets, so a retry sends one email.
			_ = in.IdempotencyKey()
			return "welcome mail queued for " + u.Email, nil
		}); err != nil {
		return err
	}
	// payment.requested -> charge-card: retried, then dead-lettered.
	return batuta.RegisterFunc(o, batuta.FunctionConfig{
		Name:       "charge-card",
		Retry:      batuta.RetryPolicy{MaxAttempts: 3, InitialDelay: 10 * time.Millisecond},
		DeadLetter: dead,
	}, func(ctx context.Context, p PaymentRequested) (string, error) {
		if p.Amount > 10_000 {
			return "", fmt.Errorf("order %s: card declined for %d", p.Order, p.Amount)
		}
		return "charged " + p.Order, nil
	})
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	o, err := batuta.New(batuta.Config{Logger: logger})
	if err != nil {
		return err
	}
	var deadMu sync.Mutex
	var dead []batuta.DeadLetter
	err = register(o, batuta.DeadLetterFunc(func(_ context.Context, dl batuta.DeadLetter) error {
		deadMu.Lock()
		defer deadMu.Unlock()
		dead = append(dead, dl)
		return nil
	}))
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(runCtx) }()
	defer func() { cancel(); <-done }()

	callCtx, cancelCalls := context.WithTimeout(ctx, 30*time.Second)
	defer cancelCalls()

	// 1. Direct, synchronous invocation with typed input and output.
	thumb, err := batuta.InvokeAs[Thumbnail](callCtx, o, "resize-image", ImageUploaded{Bucket: "photos", Key: "cat.jpg", Width: 4000})
	if err != nil {
		return err
	}
	fmt.Printf("direct: resize-image -> %s (%dpx)\n", thumb.Key, thumb.Width)

	// An event with an ID is idempotent: the second call returns the
	// first run's result.
	ev := batuta.Event{ID: "signup-42", Type: "user.signed_up", Data: []byte(`{"email":"ana@example.com"}`)}
	for range 2 {
		msg, err := batuta.InvokeAs[string](callCtx, o, "send-welcome", ev)
		if err != nil {
			return err
		}
		fmt.Printf("direct: send-welcome -> %s\n", msg)
	}

	// A failing invocation: the caller gets the error, and after the last
	// attempt the event is handed to the dead-letter destination.
	_, err = o.Invoke(callCtx, "charge-card", PaymentRequested{Order: "o-7", Amount: 99_999})
	var fe *batuta.FunctionError
	if !errors.As(err, &fe) {
		return fmt.Errorf("charge-card: want a FunctionError, got %w", err)
	}
	fmt.Printf("direct: charge-card failed after %d attempts: %s\n", fe.Attempts, fe.Err)

	// 2. Over HTTP.
	h, err := batuta.NewHTTPHandler(batuta.HTTPConfig{
		Orchestrator: o,
		Logger:       logger,
		Authorize: func(r *http.Request) error {
			if r.Header.Get("Authorization") != token {
				return errors.New("bad token")
			}
			return nil
		},
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/batuta/", http.StripPrefix("/batuta", h))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		shutCtx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = srv.Shutdown(shutCtx)
	}()
	base := "http://" + ln.Addr().String() + "/batuta"

	status, body, _, err := post(callCtx, base+"/functions/resize-image", `{"bucket":"photos","key":"dog.png","width":90}`, nil)
	if err != nil {
		return err
	}
	fmt.Printf("http: POST /functions/resize-image -> %d %s\n", status, body)

	status, _, hdr, err := post(callCtx, base+"/functions/send-welcome/async", `{"email":"bo@example.com"}`,
		map[string]string{batuta.HeaderIdempotencyKey: "signup-43", batuta.HeaderCEType: "user.signed_up"})
	if err != nil {
		return err
	}
	fmt.Printf("http: POST /functions/send-welcome/async -> %d\n", status)
	runID := hdr.Get(batuta.HeaderRunID)
	if _, err := o.Wait(callCtx, runID); err != nil {
		return err
	}
	// Location is the absolute path of the run's status, prefix included.
	status, body, _, err = get(callCtx, "http://"+ln.Addr().String()+hdr.Get("Location"))
	if err != nil {
		return err
	}
	fmt.Printf("http: GET %s -> %d, succeeded: %v\n", strings.Replace(hdr.Get("Location"), runID, "{id}", 1), status, strings.Contains(body, `"state":"succeeded"`))

	for _, c := range []struct{ name, path, body, auth string }{
		{"malformed JSON", "/functions/resize-image", `{"key":`, token},
		{"unknown function", "/functions/nope", `{}`, token},
		{"no token", "/functions/resize-image", `{}`, ""},
		{"failing function", "/functions/charge-card", `{"order":"o-8","amount":50000}`, token},
	} {
		status, body, _, err = post(callCtx, base+c.path, c.body, map[string]string{"Authorization": c.auth})
		if err != nil {
			return err
		}
		fmt.Printf("http: %s -> %d %s\n", c.name, status, strings.TrimSpace(body))
	}

	deadMu.Lock()
	defer deadMu.Unlock()
	for _, d := range dead {
		fmt.Printf("dead letter: %s for %s: %s\n", d.Workflow, string(d.Event.Data), d.Error)
	}
	if len(dead) != 2 {
		return fmt.Errorf("want 2 dead letters, got %d", len(dead))
	}
	return nil
}

func post(ctx context.Context, url, body string, headers map[string]string) (int, string, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, "", nil, err
	}
	req.Header.Set("Authorization", token)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return do(req)
}

func get(ctx context.Context, url string) (int, string, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", nil, err
	}
	req.Header.Set("Authorization", token)
	return do(req)
}

func do(req *http.Request) (int, string, http.Header, error) {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), resp.Header, err
}
