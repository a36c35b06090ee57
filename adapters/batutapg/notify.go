package batutapg

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Work notifications.
//
// Whenever a committed statement made work ready (runs created, dependents
// made ready, tasks released or rescued), the Store signals its own
// WorkAvailable at once and asks its notifier goroutine to send pg_notify
// on the channel "<schema>_work", the payload naming the sending Store (its
// own listener skips those; an empty payload, as CompleteInTx and earlier
// versions send, wakes every listener). The notifier sends
// from its own short transaction, after the work committed, and coalesces
// requests that arrive while a send is in flight: NOTIFY inside the writing
// transaction would take PostgreSQL's global notify lock through that
// transaction's commit, serialising every writer's WAL flush. (Transactional
// completion, CompleteInTx, is the exception: its work exists only once the
// caller commits, so it notifies inside the caller's transaction.)
//
// Every Store LISTENs on the channel on a dedicated connection and turns
// each notification into a WorkAvailable signal. The table stays the truth:
// a notification lost (a crash between commit and send, the listener
// reconnecting) only costs latency; the listener signals after every
// (re)connect so idle workers re-scan, and orchestrators poll anyway.
//
// Run completions.
//
// The end of a run (its last task completed, or the run canceled) is
// published the same way on the channel "<schema>_done", the payload being
// the run IDs, comma-separated (at most donePerNotify per notification):
// the notifier sends them together with the work notification, in one
// round trip per burst; CompleteInTx sends them in the caller's
// transaction. The listener wakes the Wait calls watching those runs (see
// WatchRun). Runs failed by a rescue (a task out of rescues) or by a
// timeout are not published: their waiters see them by polling.

// donePerNotify bounds the run IDs in one notification: 36 bytes and a
// comma each, well under PostgreSQL's 8000-byte payload limit.
const donePerNotify = 200

// workAppeared tells local workers at once and other processes through the
// notifier.
func (s *Store) workAppeared() {
	s.signal()
	s.workPending.Store(true)
	s.pokeNotifier()
}

// runsFinished wakes the local watchers of the runs at once and tells other
// processes through the notifier.
func (s *Store) runsFinished(ids []string) {
	if len(ids) == 0 {
		return
	}
	s.watch.Finished(ids...)
	s.doneMu.Lock()
	s.donePending = append(s.donePending, ids...)
	s.doneMu.Unlock()
	s.pokeNotifier()
}

func (s *Store) pokeNotifier() {
	select {
	case s.notifyReq <- struct{}{}:
	default:
	}
}

// donePayloads splits run IDs into notification payloads.
func donePayloads(ids []string) []string {
	var out []string
	for len(ids) > 0 {
		n := min(len(ids), donePerNotify)
		out = append(out, strings.Join(ids[:n], ","))
		ids = ids[n:]
	}
	return out
}

// notifier sends the notifications of each burst of workAppeared and
// runsFinished calls in one round trip, until ctx ends.
func (s *Store) notifier(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.notifyReq:
		}
		work := s.workPending.Swap(false)
		s.doneMu.Lock()
		done := s.donePending
		s.donePending = nil
		s.doneMu.Unlock()
		b := &pgx.Batch{}
		if work {
			b.Queue(s.q.notify, s.channel, s.self)
		}
		for _, p := range donePayloads(done) {
			b.Queue(s.q.notify, s.doneChannel, p)
		}
		if b.Len() == 0 {
			continue
		}
		err := s.conns.with(ctx, func(c *pgx.Conn) error {
			return c.SendBatch(ctx, b).Close()
		})
		if err != nil && ctx.Err() == nil {
			// Other instances will find the work, and the runs' ends, by
			// polling.
			s.log.Debug("batutapg: sending notifications failed", "schema", s.cfg.Schema, "error", err)
		}
	}
}

// WatchRun implements batuta.RunWatcher: the runs finished through this
// Store, and (while the listener is up) those other processes announce,
// close the channel. ok is false while the listener is down or disabled
// (Config.DisableListen): the caller then polls.
func (s *Store) WatchRun(runID string) (<-chan struct{}, func(), bool) {
	if !s.listening.Load() {
		return nil, nil, false
	}
	ch, stop := s.watch.Watch(runID)
	return ch, stop, true
}

// relay turns a notification into a work signal or the end of runs. A
// work notification this Store's notifier sent (its payload is s.self) is
// skipped: workAppeared signaled the local workers when it asked for it,
// and a second wake-up would only cost an empty claim.
func (s *Store) relay(n *pgconn.Notification) {
	if n != nil && n.Channel == s.doneChannel {
		if n.Payload != "" {
			s.watch.Finished(strings.Split(n.Payload, ",")...)
		}
		return
	}
	if n != nil && n.Payload == s.self {
		return
	}
	s.signal()
}

// errNotifyBroken ends the listener: notifications do not round-trip.
var errNotifyBroken = errors.New("batutapg: notifications do not round-trip")

// listenBackoffMin and listenBackoffMax bound the listener's reconnect
// delay.
const (
	listenBackoffMin = 100 * time.Millisecond
	listenBackoffMax = 5 * time.Second
)

// listen runs the listener until ctx ends, reconnecting with backoff. The
// backoff grows while connecting fails and starts over once a connection
// was established and LISTENing: a listener whose working connection is
// cut (a failover, a terminated backend) is back after listenBackoffMin,
// every time.
func (s *Store) listen(ctx context.Context) {
	checked := false
	backoff := listenBackoffMin
	for {
		up := false
		err := s.listenOnce(ctx, &checked, &up)
		s.listening.Store(false)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errNotifyBroken) {
			s.log.Warn("batutapg: LISTEN/NOTIFY does not round-trip (a transaction-pooling PgBouncer in the way?); "+
				"falling back to polling only", "schema", s.cfg.Schema, "channel", s.channel)
			return
		}
		if up {
			backoff = listenBackoffMin
		}
		s.listenDelay.Store(int64(backoff))
		s.log.Warn("batutapg: notification listener lost its connection; reconnecting",
			"schema", s.cfg.Schema, "error", err, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, listenBackoffMax)
	}
}

// listenOnce connects, LISTENs, runs the self-check the first time, and
// relays notifications until the connection fails or ctx ends.
func (s *Store) listenOnce(ctx context.Context, checked, up *bool) error {
	cfg, err := s.conns.config(ctx)
	if err != nil {
		return err
	}
	cfg = cfg.Copy()
	// A configuration taken from a live connection (NewFromDB) carries
	// that connection's notification handler; ours must buffer its own.
	cfg.OnNotification = nil
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+quoteIdent(s.channel)+"; LISTEN "+quoteIdent(s.doneChannel)); err != nil {
		return err
	}
	if !*checked {
		if err := s.selfCheck(ctx, conn); err != nil {
			return err
		}
		*checked = true
	}
	*up = true
	s.listenPID.Store(conn.PgConn().PID())
	s.listening.Store(true)
	s.signal() // notifications sent while nobody listened are lost: re-scan
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		s.relay(n)
	}
}

// selfCheck sends a probe through the pool and waits for it on conn.
func (s *Store) selfCheck(ctx context.Context, conn *pgx.Conn) error {
	probe := "probe:" + storeToken()
	err := s.conns.with(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, s.q.notify, s.channel, probe)
		return err
	})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, s.cfg.ListenCheckTimeout)
	defer cancel()
	for {
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			if ctx.Err() == nil && wctx.Err() != nil {
				return errNotifyBroken
			}
			return err
		}
		if n != nil && n.Channel == s.channel && n.Payload == probe {
			return nil
		}
		s.relay(n) // someone else's notification
	}
}

// storeToken returns 16 random hex digits naming one Store's notifications.
func storeToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
