package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
)

// storeCalls is a batuta.StoreHooks that keeps the duration of every
// claim and complete call of the executor (-storecalls), to tell where a
// step boundary's time goes.
type storeCalls struct {
	mu    sync.Mutex
	calls map[batuta.StoreOp][]time.Duration
	items map[batuta.StoreOp]int
}

func (s *storeCalls) RunStarted(context.Context, batuta.RunInfo)  {}
func (s *storeCalls) RunFinished(context.Context, batuta.RunInfo) {}
func (s *storeCalls) AttemptStarted(ctx context.Context, _ batuta.AttemptInfo) context.Context {
	return ctx
}
func (s *storeCalls) AttemptFinished(context.Context, batuta.AttemptInfo) {}
func (s *storeCalls) Rescued(int, int)                                    {}

func (s *storeCalls) StoreCall(op batuta.StoreOp, took time.Duration, n int, _ error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.calls == nil {
		s.calls, s.items = map[batuta.StoreOp][]time.Duration{}, map[batuta.StoreOp]int{}
	}
	s.calls[op] = append(s.calls[op], took)
	s.items[op] += n
}

func (s *storeCalls) print() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, op := range []batuta.StoreOp{batuta.StoreOpClaim, batuta.StoreOpComplete} {
		d := slices.Clone(s.calls[op])
		if len(d) == 0 {
			continue
		}
		slices.Sort(d)
		q := func(p float64) float64 { return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000 }
		fmt.Printf("         store %-8s %6d calls, %6d items, p50 %7.3f p99 %7.3f ms\n", op, len(d), s.items[op], q(0.5), q(0.99))
	}
}
