package batutaredis

import (
	"context"
	"fmt"
	"regexp"

	"github.com/batuta-dev/batuta"
)

var _ batuta.BrowsableQueue = (*Queue)(nil)

// entryIDPattern is a full stream entry ID (milliseconds-sequence).
var entryIDPattern = regexp.MustCompile(`^[0-9]{1,20}-[0-9]{1,20}$`)

func checkKeys(keys []string) error {
	for _, k := range keys {
		if !entryIDPattern.MatchString(k) {
			return fmt.Errorf("%w: %q is not a Redis stream entry ID (like 1700000000000-0)", batuta.ErrBadDeadLetterID, k)
		}
	}
	return nil
}

// Browse lists up to limit entries of the stream after the entry ID after
// ("": from the start), oldest first (XRANGE), as messages keyed by their
// entry ID, whether delivered or not. Messages waiting in the delayed set
// after a Nack with a delay are not listed until they are due. It makes
// batutaredis a batuta.BrowsableQueue, so a queue trigger whose dead
// letters go to a DeadLetterQueue over a batutaredis Queue has a
// batuta.DeadLetterBox.
func (q *Queue) Browse(ctx context.Context, after string, limit int) ([]batuta.QueuedMessage, error) {
	start := "-"
	if after != "" {
		if err := checkKeys([]string{after}); err != nil {
			return nil, err
		}
		start = "(" + after
	}
	xs, err := q.rdb.XRangeN(ctx, q.cfg.Stream, start, "+", int64(max(limit, 1))).Result()
	if err != nil {
		return nil, fmt.Errorf("batutaredis: browse %q: %w", q.cfg.Stream, q.wrapErr(err))
	}
	out := make([]batuta.QueuedMessage, len(xs))
	for i, x := range xs {
		msg, _ := decodeEntry(x.ID, x.Values)
		out[i] = batuta.QueuedMessage{Key: x.ID, Message: msg}
	}
	return out, nil
}

// Lookup returns the entries with these IDs still in the stream.
func (q *Queue) Lookup(ctx context.Context, keys ...string) ([]batuta.QueuedMessage, error) {
	if err := checkKeys(keys); err != nil {
		return nil, err
	}
	var out []batuta.QueuedMessage
	for _, k := range keys {
		xs, err := q.rdb.XRangeN(ctx, q.cfg.Stream, k, k, 1).Result()
		if err != nil {
			return nil, fmt.Errorf("batutaredis: lookup %q in %q: %w", k, q.cfg.Stream, q.wrapErr(err))
		}
		for _, x := range xs {
			msg, _ := decodeEntry(x.ID, x.Values)
			out = append(out, batuta.QueuedMessage{Key: x.ID, Message: msg})
		}
	}
	return out, nil
}

// Remove deletes the entries with these IDs from the stream (XDEL) and
// returns how many were there. An entry a consumer holds stays in its
// group's pending list as a deleted entry: its settlement fails, and a
// take-over skips it.
func (q *Queue) Remove(ctx context.Context, keys ...string) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	if err := checkKeys(keys); err != nil {
		return 0, err
	}
	n, err := q.rdb.XDel(ctx, q.cfg.Stream, keys...).Result()
	if err != nil {
		return 0, fmt.Errorf("batutaredis: remove from %q: %w", q.cfg.Stream, q.wrapErr(err))
	}
	return int(n), nil
}
