package batutasqlite

import (
	"context"
	"fmt"
)

// maxGroup bounds how many writes share one transaction.
const maxGroup = 128

// A writeReq is one write waiting for its transaction.
type writeReq struct {
	fn   func(ctx context.Context) error
	done chan error // buffered 1; receives fn's outcome once committed
}

// write runs fn in a write transaction (BEGIN IMMEDIATE on the write
// connection) and returns once it is committed, or fn's error, in which
// case nothing fn wrote is kept.
//
// Writes are group-committed: while one transaction runs, the writes that
// arrive queue up, and the next caller to get the write connection (the
// leader) runs up to maxGroup of them in one transaction, each inside its own
// SAVEPOINT, so a failing fn rolls back only its own statements. One commit
// (one fsync with synchronous=FULL) then serves many writers. Writes run in
// arrival order, each seeing the ones before, as if run one by one.
//
// ctx bounds the wait in the queue. Once a leader took the write, it runs to
// the end with a context that is never canceled (its statements are short),
// so a canceled ctx never leaves a half-known commit; the wait for the lock
// held by other processes is bounded by Config.BusyTimeout.
func (s *Store) write(ctx context.Context, fn func(ctx context.Context) error) error {
	err := s.write1(ctx, fn)
	if s.wake.Load() && s.wake.CompareAndSwap(true, false) {
		s.signalWork()
	}
	return err
}

func (s *Store) write1(ctx context.Context, fn func(ctx context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("batutasqlite: %w", err)
	}
	req := &writeReq{fn: fn, done: make(chan error, 1)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errClosed
	}
	s.queue = append(s.queue, req)
	s.mu.Unlock()
	for {
		select {
		case err := <-req.done:
			return err
		case s.wsem <- struct{}{}:
			s.lead()
			<-s.wsem
			select {
			case err := <-req.done:
				return err
			default: // more than maxGroup writes were ahead of ours
			}
		case <-ctx.Done():
			if s.dequeue(req) {
				return fmt.Errorf("batutasqlite: %w", ctx.Err())
			}
			return <-req.done // a leader has it: it finishes soon
		}
	}
}

// dequeue removes req from the queue and reports whether it was there.
func (s *Store) dequeue(req *writeReq) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.queue {
		if r == req {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			return true
		}
	}
	return false
}

// lead runs the oldest queued writes in one transaction. The caller holds
// wsem.
func (s *Store) lead() {
	s.mu.Lock()
	n := min(len(s.queue), maxGroup)
	group := make([]*writeReq, n)
	copy(group, s.queue)
	rest := copy(s.queue, s.queue[n:])
	clear(s.queue[rest:])
	s.queue = s.queue[:rest]
	s.mu.Unlock()
	if n == 0 {
		return
	}
	errs := s.runGroup(group)
	for i, r := range group {
		r.done <- errs[i]
	}
}

// runGroup runs the writes of group in one transaction and returns each
// one's outcome.
func (s *Store) runGroup(group []*writeReq) []error {
	ctx := context.Background()
	errs := make([]error, len(group))
	fail := func(err error) []error {
		rollback(s.wconn)
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	if _, err := s.st.begin.ExecContext(ctx); err != nil {
		return fail(s.wrapErr("begin", err))
	}
	single := len(group) == 1
	ok := 0
	for i, r := range group {
		if !single {
			if _, err := s.st.savepoint.ExecContext(ctx); err != nil {
				return fail(s.wrapErr("savepoint", err))
			}
		}
		if err := runWrite(ctx, r.fn); err != nil {
			errs[i] = err
			if single {
				return fail(err)
			}
			if _, err := s.st.rollbackTo.ExecContext(ctx); err != nil {
				return fail(s.wrapErr("rollback to savepoint", err))
			}
		} else {
			ok++
		}
		if !single {
			if _, err := s.st.release.ExecContext(ctx); err != nil {
				return fail(s.wrapErr("release savepoint", err))
			}
		}
	}
	if ok == 0 {
		rollback(s.wconn)
		return errs
	}
	if _, err := s.st.commit.ExecContext(ctx); err != nil {
		return fail(s.wrapErr("commit", err))
	}
	return errs
}

// runWrite calls fn, turning a panic into an error so that one broken write
// cannot strand the others of its group.
func runWrite(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("batutasqlite: panic in a store write: %v", p)
		}
	}()
	return fn(ctx)
}
