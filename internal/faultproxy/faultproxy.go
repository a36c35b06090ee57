// Package faultproxy is a small TCP proxy for fault-injection tests: it
// forwards every connection it accepts to a target address and can sever all
// live connections at once, as a network fault or a broker restart would.
//
// It is test infrastructure (stdlib only) used by the broker adapters'
// fault tests, e.g.
//
//	p, err := faultproxy.Start("127.0.0.1:6379")
//	...
//	client := redis.NewClient(&redis.Options{Addr: p.Addr()})
//	...
//	p.CutAll() // every client connection is reset; reconnects go through
//	...
//	p.Close()
package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// A Proxy forwards TCP connections from a loopback listener to a target.
// All methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener

	mu      sync.Mutex
	pairs   map[*pair]struct{}
	closed  bool
	refuse  bool
	wg      sync.WaitGroup
	cuts    atomic.Int64
	accepts atomic.Int64
}

// pair is one proxied connection: the accepted client side and the dialled
// target side.
type pair struct {
	client, server net.Conn
	once           sync.Once
}

// sever closes both sides. The client side is reset (SO_LINGER 0) so the
// client sees an abrupt failure rather than an orderly EOF.
func (c *pair) sever() {
	c.once.Do(func() {
		if tc, ok := c.client.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.client.Close()
		if c.server != nil {
			_ = c.server.Close()
		}
	})
}

// Start listens on 127.0.0.1:0 and forwards each accepted connection to
// target (host:port), dialled when the connection is accepted. If the target
// cannot be reached, the accepted connection is closed at once. Stop the
// proxy with Close.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{target: target, ln: ln, pairs: make(map[*pair]struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the proxy's listening address (127.0.0.1:port). Point the
// client under test at it.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address connections are forwarded to.
func (p *Proxy) Target() string { return p.target }

// CutAll severs every live connection (both directions, the client side with
// a TCP reset) and returns how many it cut. The proxy keeps accepting: a
// client that reconnects gets a fresh connection to the target.
func (p *Proxy) CutAll() int {
	p.mu.Lock()
	live := make([]*pair, 0, len(p.pairs))
	for c := range p.pairs {
		live = append(live, c)
		delete(p.pairs, c)
	}
	p.mu.Unlock()
	for _, c := range live {
		c.sever()
	}
	p.cuts.Add(int64(len(live)))
	return len(live)
}

// SetRefuse makes the proxy close new connections as soon as they are
// accepted (refuse=true), as a broker that is down would, until it is
// called again with false. Live connections are not affected; combine with
// CutAll to simulate an outage.
func (p *Proxy) SetRefuse(refuse bool) {
	p.mu.Lock()
	p.refuse = refuse
	p.mu.Unlock()
}

// Live returns the number of connections currently proxied.
func (p *Proxy) Live() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pairs)
}

// Cuts returns the total number of connections severed by CutAll.
func (p *Proxy) Cuts() int64 { return p.cuts.Load() }

// Accepted returns the total number of connections accepted (refused ones
// included).
func (p *Proxy) Accepted() int64 { return p.accepts.Load() }

// Close stops accepting, severs every live connection and waits for the
// proxy's goroutines to finish. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.CutAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	var backoff time.Duration
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary accept failure (e.g. EMFILE): back off briefly.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff < time.Second {
				backoff *= 2
			}
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		p.accepts.Add(1)
		p.wg.Add(1)
		go p.serve(conn)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	p.mu.Lock()
	refuse, closed := p.refuse, p.closed
	p.mu.Unlock()
	if refuse || closed {
		(&pair{client: client}).sever()
		return
	}
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		(&pair{client: client}).sever()
		return
	}
	c := &pair{client: client, server: server}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.sever()
		return
	}
	p.pairs[c] = struct{}{}
	p.mu.Unlock()

	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done // one direction ended: tear down both
	c.sever()
	<-done
	p.mu.Lock()
	delete(p.pairs, c)
	p.mu.Unlock()
}
