package batuta_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

type strictOrder struct {
	ID    int `json:"id"`
	Total int `json:"total"`
}

var strictCases = []struct {
	name, data string
	strictOK   bool // accepted by strict decoding
	lenientOK  bool // accepted by lenient decoding (the default)
}{
	{"exact", `{"id":7,"total":50}`, true, true},
	{"subset", `{"id":7}`, true, true},
	{"whitespace around", " \n{\"id\":7}\n ", true, true},
	{"unknown field", `{"id":7,"foo":"bar"}`, false, true},
	{"only unknown fields", `{"foo":"bar"}`, false, true},
	{"null", `null`, false, true},
	{"null with spaces", ` null `, false, true},
	{"empty", ``, false, true},
	{"blank", `   `, false, false}, // not JSON: refused by both
	{"trailing data", `{"id":7} {"id":8}`, false, false},
}

// decodeRun runs a one-task workflow whose task decodes the event with
// decode, and returns the run and the error the task got.
func decodeRun(t *testing.T, strictWF bool, decode func(*batuta.Input) (strictOrder, error), data string) (*batuta.Run, error) {
	t.Helper()
	var mu sync.Mutex
	var got error
	o := setup(t, batuta.Config{}, &batuta.Workflow{Name: "w", StrictInput: strictWF, Tasks: []batuta.Task{{
		Name:  "a",
		Retry: batuta.RetryPolicy{MaxAttempts: 3, InitialDelay: 1, MaxDelay: 1},
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			v, err := decode(in)
			mu.Lock()
			got = err
			mu.Unlock()
			return v, err
		},
	}}})
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{Data: []byte(data)})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	return r, got
}

func TestStrictDecoding(t *testing.T) {
	t.Parallel()
	modes := []struct {
		name     string
		strictWF bool
		decode   func(*batuta.Input) (strictOrder, error)
		strict   bool
	}{
		{"EventData (lenient default)", false, batuta.EventData[strictOrder], false},
		{"EventData in a StrictInput workflow", true, batuta.EventData[strictOrder], true},
		{"EventDataStrict", false, batuta.EventDataStrict[strictOrder], true},
	}
	for _, m := range modes {
		for _, tc := range strictCases {
			t.Run(m.name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				r, err := decodeRun(t, m.strictWF, m.decode, tc.data)
				if (m.strict && tc.strictOK) || (!m.strict && tc.lenientOK) {
					require.NoError(t, err)
					require.Equal(t, batuta.RunSucceeded, r.State)
					return
				}
				require.ErrorIs(t, err, batuta.ErrInvalidPayload)
				require.True(t, batuta.IsPermanent(err), "retrying a malformed payload cannot help")
				require.Equal(t, batuta.RunFailed, r.State)
				require.Len(t, r.Tasks[0].Attempts, 1, "no retries")
			})
		}
	}
}

// Malformed JSON was retried before: the error is permanent now, and the
// decode error stays reachable with errors.As.
func TestEventDataMalformedIsPermanent(t *testing.T) {
	t.Parallel()
	r, err := decodeRun(t, false, batuta.EventData[strictOrder], `{"id":"seven"}`)
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)
	var te *json.UnmarshalTypeError
	require.ErrorAs(t, err, &te)
	require.Equal(t, "id", te.Field)
	require.Equal(t, batuta.RunFailed, r.State)
	require.Len(t, r.Tasks[0].Attempts, 1)
}

func TestStrictFunction(t *testing.T) {
	t.Parallel()
	o := lambdaOrch(t, batuta.Config{})
	var calls sync.Map
	h := func(name string) func(context.Context, strictOrder) (int, error) {
		return func(_ context.Context, in strictOrder) (int, error) {
			n, _ := calls.LoadOrStore(name, new(int))
			*n.(*int)++
			return in.Total, nil
		}
	}
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "strict", StrictInput: true, Retry: fastRetry}, h("strict")))
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "lenient", Retry: fastRetry}, h("lenient")))
	runOrch(t, o)
	ctx := testCtx(t)
	for _, tc := range strictCases {
		t.Run(tc.name, func(t *testing.T) {
			ev := batuta.Event{ID: "strict-" + tc.name, Data: []byte(tc.data)}
			_, err := batuta.InvokeAs[int](ctx, o, "lenient", ev)
			if tc.lenientOK {
				require.NoError(t, err, "lenient by default")
			} else {
				require.Error(t, err)
			}
			_, err = batuta.InvokeAs[int](ctx, o, "strict", ev)
			if tc.strictOK {
				require.NoError(t, err)
				return
			}
			var fe *batuta.FunctionError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, 1, fe.Attempts, "refused at once, no retries")
			require.Contains(t, fe.Err, batuta.ErrInvalidPayload.Error())
		})
	}
}

func TestHTTPStrictFunction(t *testing.T) {
	t.Parallel()
	f := newHTTPFixture(t, batuta.Config{}, batuta.HTTPConfig{}, true)
	require.NoError(t, batuta.RegisterFunc(f.o, batuta.FunctionConfig{Name: "strict-greet", StrictInput: true},
		func(_ context.Context, in struct {
			Name string `json:"name"`
		}) (string, error) {
			return "hello " + in.Name, nil
		}))
	before := runCount(t, f.o)
	for _, tc := range []struct{ body, want string }{
		{`{"name":"Ada","nmae":"typo"}`, `unknown field`}, //nolint:misspell // the misspelt field is the input under test
		{`null`, `null`},
		{``, `no data`},
	} {
		for _, path := range []string{"/functions/strict-greet", "/functions/strict-greet/async"} {
			res := f.do(t, "POST", path, tc.body)
			require.Equal(t, 400, res.status, "%s %q: %s", path, tc.body, res.raw)
			require.Contains(t, res.body["error"], tc.want)
		}
		// The lenient function of the fixture takes the same bodies.
		res := f.do(t, "POST", "/functions/greet", tc.body)
		require.Equal(t, 200, res.status, res.raw)
	}
	require.Equal(t, before+3, runCount(t, f.o), "no run for a refused request")
	res := f.do(t, "POST", "/functions/strict-greet", `{"name":"Ada"}`)
	require.Equal(t, 200, res.status, res.raw)
}
