package batutapg

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// Work notifications.
//
// Whenever a committed statement made work ready (runs created, dependents
// made ready, tasks released or rescued), the Store signals its own
// WorkAvailable at once and asks its notifier goroutine to send pg_notify
// on the channel "<schema>_work" with an empty payload. The notifier sends
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

// workAppeared tells local workers at once and other processes through the
// notifier.
func (s *Store) workAppeared() {
	s.signal()
	select {
	case s.notifyReq <- struct{}{}:
	default:
	}
}

// notifier sends one pg_notify per burst of workAppeared calls until ctx
// ends.
func (s *Store) notifier(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.notifyReq:
		}
		err := s.conns.with(ctx, func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, s.q.notify, s.channel, "")
			return err
		})
		if err != nil && ctx.Err() == nil {
			// Other instances will find the work by polling.
			s.log.Debug("batutapg: sending a work notification failed", "schema", s.cfg.Schema, "error", err)
		}
	}
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
	if _, err := conn.Exec(ctx, "LISTEN "+quoteIdent(s.channel)); err != nil {
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
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		s.signal()
	}
}

// selfCheck sends a probe through the pool and waits for it on conn.
func (s *Store) selfCheck(ctx context.Context, conn *pgx.Conn) error {
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	probe := "probe:" + hex.EncodeToString(nonce[:])
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
		if n != nil && n.Payload == probe {
			return nil
		}
		s.signal() // someone else's work notification
	}
}
