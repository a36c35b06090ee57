package batutapg

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
)

var _ batuta.PeerLister = (*Store)(nil)

// peerPrefix starts the liveness rows of group members ("batuta.peer/
// <group>/<member>"), kept in the instances table next to the claiming
// owners' rows and renewed by the same beat. They hold no task.
const peerPrefix = "batuta.peer/"

// errNoLiveness: LivePeers needs the liveness beat.
var errNoLiveness = errors.New("batutapg: peers need the liveness beat (Config.LivenessInterval > 0)")

// LivePeers implements batuta.PeerLister: member's row is written once and
// renewed every Config.LivenessInterval with the owners' rows; the members
// whose row is younger than Config.LivenessTimeout are alive.
func (s *Store) LivePeers(ctx context.Context, group, member string) ([]string, error) {
	if s.cfg.LivenessInterval <= 0 {
		return nil, errNoLiveness
	}
	if err := checkPeerName(group, member); err != nil {
		return nil, err
	}
	prefix := peerPrefix + group + "/"
	if err := s.registerOwner(ctx, prefix+member); err != nil {
		return nil, err
	}
	var peers []string
	err := s.query(ctx, `SELECT owner FROM `+s.schema+`.instances
WHERE starts_with(owner, $1) AND seen_at > clock_timestamp() - make_interval(secs => $2)
ORDER BY owner`, []any{prefix, s.cfg.LivenessTimeout.Seconds()}, func(rows pgx.Rows) error {
		var o string
		if err := rows.Scan(&o); err != nil {
			return err
		}
		peers = append(peers, strings.TrimPrefix(o, prefix))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("batutapg: live peers of %s: %w", group, err)
	}
	return peers, nil
}

// LeavePeers implements batuta.PeerLister: member's row is no longer
// renewed, and deleted.
func (s *Store) LeavePeers(ctx context.Context, group, member string) error {
	if err := checkPeerName(group, member); err != nil {
		return err
	}
	owner := peerPrefix + group + "/" + member
	s.live.mu.Lock()
	delete(s.live.owners, owner)
	s.live.mu.Unlock()
	err := s.conns.with(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, s.lq.dropOwners, []string{owner})
		return err
	})
	if err != nil {
		return fmt.Errorf("batutapg: leave peers of %s: %w", group, err)
	}
	return nil
}

func checkPeerName(group, member string) error {
	for _, f := range []struct{ what, v string }{{"peer group", group}, {"peer member", member}} {
		ok := f.v != "" && len(f.v) <= 200
		for i := 0; ok && i < len(f.v); i++ {
			ok = f.v[i] > ' ' && f.v[i] < 0x7f && f.v[i] != '/'
		}
		if !ok {
			return fmt.Errorf("batutapg: %w: %s %q: want 1 to 200 printable ASCII characters, no space or '/'", batuta.ErrInvalidConfig, f.what, f.v)
		}
	}
	return nil
}
