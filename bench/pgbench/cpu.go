package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// cpuMeter measures CPU time spent by this process and by the PostgreSQL
// backends of the given pools (read from /proc, so only when the server
// runs on this machine), which stays meaningful on a busy machine where
// wall-clock rates do not.
type cpuMeter struct {
	pids []int
	self time.Duration
	srv  time.Duration
}

// backendPIDs holds every connection of each pool at once (opening the
// missing ones) and returns their server process IDs.
func backendPIDs(ctx context.Context, pools ...*pgxpool.Pool) []int {
	var pids []int
	for _, p := range pools {
		var held []*pgxpool.Conn
		for i := int32(0); i < p.Config().MaxConns; i++ {
			c, err := p.Acquire(ctx)
			if err != nil {
				break
			}
			held = append(held, c)
			pids = append(pids, int(c.Conn().PgConn().PID()))
		}
		for _, c := range held {
			c.Release()
		}
	}
	return pids
}

func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU(ctx context.Context, pools ...*pgxpool.Pool) *cpuMeter {
	m := &cpuMeter{pids: backendPIDs(ctx, pools...), self: selfCPU()}
	for _, pid := range m.pids {
		m.srv += procCPU(pid)
	}
	return m
}

// stop returns the CPU time used since start: this process, and the
// backends that were idle in the pools at start.
func (m *cpuMeter) stop() (self, server time.Duration) {
	var srv time.Duration
	for _, pid := range m.pids {
		srv += procCPU(pid)
	}
	return selfCPU() - m.self, srv - m.srv
}
