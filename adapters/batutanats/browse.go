package batutanats

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/batuta-dev/batuta"
	"github.com/nats-io/nats.go/jetstream"
)

var _ batuta.BrowsableQueue = (*Queue)(nil)

// parseSeq parses a key: a stream sequence number in decimal.
func parseSeq(k string) (uint64, error) {
	n, err := strconv.ParseUint(k, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%w: %q is not a JetStream stream sequence (a positive integer)", batuta.ErrBadDeadLetterID, k)
	}
	return n, nil
}

// Browse lists up to limit messages of the queue's subject stored in its
// stream after the sequence after ("": from the start), oldest first,
// whether delivered or not, keyed by their stream sequence (one
// JetStream message get per message). It makes batutanats a
// batuta.BrowsableQueue, so a queue trigger whose dead letters go to a
// DeadLetterQueue over a batutanats Queue has a batuta.DeadLetterBox.
func (q *Queue) Browse(ctx context.Context, after string, limit int) ([]batuta.QueuedMessage, error) {
	var seq uint64
	if after != "" {
		var err error
		if seq, err = parseSeq(after); err != nil {
			return nil, err
		}
	}
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("batutanats: browse %q: %w", q.cfg.Stream, q.wrapErr(err))
	}
	var out []batuta.QueuedMessage
	for len(out) < max(limit, 1) {
		m, err := st.GetMsg(ctx, seq+1, jetstream.WithGetMsgSubject(q.cfg.Subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("batutanats: browse %q: %w", q.cfg.Stream, q.wrapErr(err))
		}
		out = append(out, q.queued(m))
		seq = m.Sequence
	}
	return out, nil
}

func (q *Queue) queued(m *jetstream.RawStreamMsg) batuta.QueuedMessage {
	return batuta.QueuedMessage{
		Key:     strconv.FormatUint(m.Sequence, 10),
		Message: decodeStored(m.Header, m.Data, q.cfg.Stream, m.Sequence, m.Time),
	}
}

// Lookup returns the messages of the queue's subject stored under these
// sequences.
func (q *Queue) Lookup(ctx context.Context, keys ...string) ([]batuta.QueuedMessage, error) {
	seqs, err := parseSeqs(keys)
	if err != nil {
		return nil, err
	}
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("batutanats: lookup in %q: %w", q.cfg.Stream, q.wrapErr(err))
	}
	var out []batuta.QueuedMessage
	for _, seq := range seqs {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("batutanats: lookup %d in %q: %w", seq, q.cfg.Stream, q.wrapErr(err))
		}
		if m.Subject == q.cfg.Subject {
			out = append(out, q.queued(m))
		}
	}
	return out, nil
}

func parseSeqs(keys []string) ([]uint64, error) {
	seqs := make([]uint64, len(keys))
	for i, k := range keys {
		n, err := parseSeq(k)
		if err != nil {
			return nil, err
		}
		seqs[i] = n
	}
	return seqs, nil
}

// Remove deletes the messages stored under these sequences (if they are
// of the queue's subject) and returns how many there were. A consumer
// holding one fails its settlement.
func (q *Queue) Remove(ctx context.Context, keys ...string) (int, error) {
	found, err := q.Lookup(ctx, keys...)
	if err != nil || len(found) == 0 {
		return 0, err
	}
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	if err != nil {
		return 0, fmt.Errorf("batutanats: remove from %q: %w", q.cfg.Stream, q.wrapErr(err))
	}
	n := 0
	for _, m := range found {
		seq, _ := parseSeq(m.Key)
		err := st.DeleteMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) || errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) {
			continue // deleted meanwhile
		}
		if err != nil {
			return n, fmt.Errorf("batutanats: remove %d from %q: %w", seq, q.cfg.Stream, q.wrapErr(err))
		}
		n++
	}
	return n, nil
}
