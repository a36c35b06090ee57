package batutapg

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// TestSignalClaimTakesWithoutWaking: a signal whose transaction claims the
// task it made ready wakes nobody (before, every delivery signaled the
// local workers and notified every instance, each then running an empty
// claim); one that claims nothing, or whose task the claim could not take,
// still wakes them.
func TestSignalClaimTakesWithoutWaking(t *testing.T) {
	t.Parallel()
	s := newTestStore(t, storeTestPool(t, 4), Config{DisableListen: true, Logger: quiet()})
	ctx := testCtx(t)
	now := time.Now().Truncate(time.Millisecond)
	tasks := []batuta.TaskSpec{{Name: "w", Signal: "go"}, {Name: "next", Deps: []int{0}}}
	wait := func(ev string) string {
		id, _, err := s.CreateRun(ctx, newRunFor("wf", ev, now, tasks...))
		require.NoError(t, err)
		complete(t, s, waitDone(claimOne(t, s, now), now, time.Time{}, "signal go"))
		return id
	}
	p := &batuta.ClaimParams{Owner: "w", Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute)}

	id := wait("e1")
	drainWork(s.work)
	res, err := s.SendSignal(ctx, batuta.SignalSend{RunID: id, Name: "go", Data: json.RawMessage(`1`), SentAt: now, Claim: p})
	require.NoError(t, err)
	require.True(t, res.Delivered)
	require.Len(t, res.Claims, 1)
	require.Equal(t, "next", res.Claims[0].Task)
	require.False(t, drainWork(s.work), "the claim took the task the signal made ready: nobody to wake")
	require.False(t, s.workPending.Load(), "and no notification for other instances")

	id = wait("e2")
	drainWork(s.work)
	res, err = s.SendSignal(ctx, batuta.SignalSend{RunID: id, Name: "go", SentAt: now})
	require.NoError(t, err)
	require.True(t, res.Delivered)
	require.Empty(t, res.Claims)
	require.True(t, drainWork(s.work), "without a claim, the ready task wakes the workers")
	claimOne(t, s, now)
}

// TestRelaySkipsOwnWorkNotifications: the listener ignores the work
// notifications its own Store sent (it signaled its workers when it asked
// for them), and relays those of other Stores, and empty ones (CompleteInTx,
// older versions).
func TestRelaySkipsOwnWorkNotifications(t *testing.T) {
	s := &Store{work: make(chan struct{}, 1), channel: "x_work", doneChannel: "x_done", self: "w:" + storeToken()}
	other := "w:" + storeToken()
	require.NotEqual(t, s.self, other)
	for _, tc := range []struct {
		payload string
		wake    bool
	}{{s.self, false}, {other, true}, {"", true}} {
		drainWork(s.work)
		s.relay(&pgconn.Notification{Channel: s.channel, Payload: tc.payload})
		require.Equal(t, tc.wake, drainWork(s.work), "payload %q", tc.payload)
	}
}
