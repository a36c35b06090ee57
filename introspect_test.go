package batuta_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWorkflowsDescribesTasksAndDeps(t *testing.T) {
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "b-diamond", Timeout: time.Minute, Tasks: []batuta.Task{
		{Name: "a", Run: noop, Retry: batuta.RetryPolicy{MaxAttempts: 3}},
		{Name: "b", Deps: []string{"a"}, Run: noop},
		{Name: "c", Deps: []string{"a"}, Run: noop, When: batuta.OneFailed},
		{Name: "d", Deps: []string{"b", "c"}, Run: noop, Timeout: time.Second},
	}}))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "a-one", Tasks: []batuta.Task{{Name: "only", Run: noop}}}))

	ws := o.Workflows()
	require.Len(t, ws, 2)
	assert.Equal(t, "a-one", ws[0].Name, "sorted by name")
	d := ws[1]
	assert.Equal(t, time.Minute, d.Timeout)
	require.Len(t, d.Tasks, 4)
	assert.Equal(t, batuta.TaskInfo{Name: "a", Join: "all_succeeded", MaxAttempts: 3}, d.Tasks[0])
	assert.Equal(t, []string{"a"}, d.Tasks[1].Deps)
	assert.Equal(t, "one_failed", d.Tasks[2].Join)
	assert.Equal(t, []string{"b", "c"}, d.Tasks[3].Deps)
	assert.Equal(t, time.Second, d.Tasks[3].Timeout)
	assert.Equal(t, 3, d.Tasks[3].MaxAttempts, "no retry policy: the default's budget")

	d.Tasks[3].Deps[0] = "changed"
	again, ok := o.Workflow("b-diamond")
	require.True(t, ok)
	assert.Equal(t, []string{"b", "c"}, again.Tasks[3].Deps, "Workflows returns a copy")
	_, ok = o.Workflow("nope")
	assert.False(t, ok)
}

func TestBindingsReportsSchedulesQueuesAndTriggerHealth(t *testing.T) {
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "t", Run: noop}}}))
	cron, err := batuta.NewCron(batuta.CronConfig{Name: "nightly", Spec: "CRON_TZ=Europe/Paris 30 2 * * *", Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Bind("w", cron))
	q, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	require.NoError(t, err)
	qt, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, Logger: quiet,
		DeadLetter: batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error { return nil })})
	require.NoError(t, err)
	require.NoError(t, o.Bind("w", qt))
	boom := errors.New("source unreachable")
	require.NoError(t, o.Bind("w", batuta.TriggerFunc(func(ctx context.Context, fire batuta.FireFunc) error { return boom })))

	bs := o.Bindings()
	require.Len(t, bs, 3)
	assert.Equal(t, batuta.TriggerKindCron, bs[0].Kind)
	require.NotNil(t, bs[0].Schedule)
	s := bs[0].Schedule
	assert.Equal(t, "nightly", s.Name)
	assert.Equal(t, "CRON_TZ=Europe/Paris 30 2 * * *", s.Spec)
	assert.Equal(t, "Europe/Paris", s.TimeZone)
	assert.Equal(t, "skip", s.Missed)
	paris, err := time.LoadLocation("Europe/Paris")
	require.NoError(t, err)
	// 2026-03-28 is the day before the spring-forward in Paris: 02:30 does
	// not exist on the 29th.
	fires := s.NextFires(time.Date(2026, 3, 27, 12, 0, 0, 0, paris), 3)
	require.Len(t, fires, 3)
	assert.Equal(t, time.Date(2026, 3, 28, 2, 30, 0, 0, paris), fires[0].In(paris))
	assert.Equal(t, 29, fires[1].In(paris).Day(), "the skipped 02:30 still fires that day (at the transition)")
	assert.Equal(t, time.Date(2026, 3, 30, 2, 30, 0, 0, paris), fires[2].In(paris))
	assert.Equal(t, batuta.TriggerKindQueue, bs[1].Kind)
	assert.Equal(t, int64(0), bs[1].Parked)
	assert.Equal(t, "batuta.TriggerFunc", bs[2].Kind)
	assert.Equal(t, int64(-1), bs[2].Parked, "unknown backlog")
	for _, b := range bs {
		assert.False(t, b.Running, "not running before Run")
	}

	start(t, o)
	ctx := waitCtx(t)
	for {
		bs = o.Bindings()
		if bs[2].Restarts > 0 && bs[0].Running && bs[1].Running {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("bindings never reported running triggers and a restart: %+v", bs)
		case <-time.After(5 * time.Millisecond):
		}
	}
	assert.Equal(t, "source unreachable", bs[2].LastError)
	assert.False(t, bs[2].LastErrorAt.IsZero())
	assert.False(t, bs[2].Healthy(o.Now()), "failed within the last minute")
	assert.True(t, bs[0].Healthy(o.Now()))
}
