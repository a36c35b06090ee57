package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startEcho runs a line echo server on loopback until the test ends.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				_ = c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, line string) {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	_, err := c.Write([]byte(line + "\n"))
	require.NoError(t, err)
	got, err := r.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, line+"\n", got)
}

func TestProxyForwardsAndCuts(t *testing.T) {
	t.Parallel()
	p, err := Start(startEcho(t))
	require.NoError(t, err)
	defer p.Close()

	c1, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c1.Close()
	r1 := bufio.NewReader(c1)
	roundTrip(t, c1, r1, "hello")
	require.Equal(t, 1, p.Live())

	require.Equal(t, 1, p.CutAll())
	require.EqualValues(t, 1, p.Cuts())
	require.NoError(t, c1.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = r1.ReadString('\n')
	require.Error(t, err, "a cut connection must fail on the client side")
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "cut must be seen before the deadline: %v", err)

	// New connections still go through after a cut.
	c2, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c2.Close()
	roundTrip(t, c2, bufio.NewReader(c2), "again")
	require.EqualValues(t, 2, p.Accepted())
}

func TestProxyRefuse(t *testing.T) {
	t.Parallel()
	p, err := Start(startEcho(t))
	require.NoError(t, err)
	defer p.Close()

	p.SetRefuse(true)
	requireRefused(t, p.Addr())

	p.SetRefuse(false)
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()
	roundTrip(t, c, bufio.NewReader(c), "back")
}

func TestProxyUnreachableTarget(t *testing.T) {
	t.Parallel()
	// A listener closed at once leaves a port nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	require.NoError(t, ln.Close())

	p, err := Start(dead)
	require.NoError(t, err)
	defer p.Close()
	requireRefused(t, p.Addr())
}

// requireRefused checks that a connection through addr fails: either the
// dial itself is reset or the first read sees the connection closed.
func requireRefused(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	_, _ = c.Write([]byte("x\n"))
	_, err = bufio.NewReader(c).ReadString('\n')
	require.Error(t, err)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "refusal must be seen before the deadline: %v", err)
}

func TestProxyCloseIsIdempotentAndSevers(t *testing.T) {
	t.Parallel()
	p, err := Start(startEcho(t))
	require.NoError(t, err)
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	roundTrip(t, c, r, "one")

	require.NoError(t, p.Close())
	require.NoError(t, p.Close())
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = r.ReadString('\n')
	require.Error(t, err)
	_, err = net.DialTimeout("tcp", p.Addr(), time.Second)
	require.Error(t, err, "a closed proxy accepts nothing")
}
