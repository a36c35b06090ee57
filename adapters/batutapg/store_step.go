package batutapg

import (
	"context"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// stepable reports whether a completion batch can go through completeStep:
// one success of a task with dependents (tokenDepsBit; its run then has
// other tasks), outside any concurrency group and child run, not a rescue,
// with no wait or signal step.
func (in *compInput) stepable() bool {
	return len(in.tokens) == 1 && in.outcomes[0] == string(batuta.OutcomeSucceeded) &&
		in.tokens[0]&(tokenSoloBit|tokenDepsBit) == tokenDepsBit && !in.leaseBefore[0].Valid && !in.full()
}

// stepCandidate reports whether c, by its outcome and the bits of its
// token, can be recorded by completeStep (see stepable, which also needs
// the store's hints).
func stepCandidate(c *batuta.Completion) bool {
	return c.Outcome == batuta.OutcomeSucceeded && c.ConsumeSignal == 0 &&
		c.Token&(tokenSoloBit|tokenDepsBit|tokenFlowBit|tokenChildBit) == tokenDepsBit
}

// takeStepSlot takes one of the slots for chain steps recorded beside the
// completion combiner, if one is free and no call waits for the
// combiner's next batch: under a load where completions queue up, a step
// joins the batch, whose one transaction records them all for less than a
// transaction each (a 10,000-run diamond drain went 10-20% slower with
// every step on its own).
func (s *Store) takeStepSlot() bool {
	if s.noStep || s.completes.waiting() {
		return false
	}
	select {
	case s.stepSlots <- struct{}{}:
		return true
	default:
		return false
	}
}

// completeStep records the one completion of in (see stepable) and claims
// for fc's one call (Limit 1) with a step statement (see stepStatement):
// the task's success, its dependents counted down and, if one of them
// became ready and no ready task goes ahead of it in claim order, that
// dependent leased to the caller, all in one statement after the run lock.
// That is the boundary of a chain: one statement whose plan is about two
// thirds of the completion and claim statements' together, no scan of the
// ready set beyond its first entry. While ready tasks wait (the last step saw one),
// the full statement, which takes the task ahead instead, serves: the
// lean one leaves that claim to the caller. Otherwise a task with exactly
// one dependent (tokenLinkBit: a chain's link) goes through the link
// statement (see linkStatement), whose plan is about half the lean one's.
//
// ok is false when the statement did not apply (the task's lease was lost,
// or this is a repeated completion; nothing was written) or failed: the
// caller then records the completion the general way, which tells those
// cases apart and retries. A failure that may have committed with its
// reply lost hands the claim's request to lostClaims; the general way then
// finds the completion already recorded and answers as for a repeat.
func (s *Store) completeStep(ctx context.Context, in *compInput, set string, fc *fusedClaim) (res compResult, claims []batuta.Claim, ok bool) {
	p := &fc.ps[0]
	var wfs []string
	if len(p.Workflows) > 0 {
		wfs = p.Workflows
	}
	fc.reset()
	// The full statement while ready tasks wait (a backlog): it takes the
	// one ahead of the dependents, which the lean one leaves to a claim of
	// the caller's own, a second round trip.
	stmt, link := s.q.completeStep, false
	switch {
	case s.stepBacklog.Load() || s.stepFull:
		stmt = s.q.completeStepFull
	case in.tokens[0]&tokenLinkBit != 0 && !s.noLink:
		// One dependent: the link statement, a smaller plan.
		stmt, link = s.q.completeLink, true
	}
	var (
		ready, took            int64
		waited                 bool
		fin                    string
		runID                  pgtype.UUID
		name, workflow         pgtype.Text
		attempt, rescues       pgtype.Int4
		token                  pgtype.Int8
		eventID                pgtype.Text
		event, upstream        []byte
		signal                 []byte
		deadline, waitingSince pgtype.Timestamptz
		rateReserved           pgtype.Bool
		applied                bool
	)
	err := s.sendHotSet(ctx, set, func(b *pgx.Batch) {
		b.Queue(s.q.lockRuns, in.runs)
		b.Queue(stmt, in.runs[0], in.tasks[0], in.tokens[0], in.outputs[0], in.recs[0],
			p.Now, wfs, p.Owner, s.toDB(p.LeaseUntil), fc.pl.reqs[0], in.at[0])
	}, func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			applied = true
			if err := rows.Scan(&ready, &took, &waited, &fin, &runID, &name, &workflow, &attempt, &rescues, &token, &eventID, &event, &deadline,
				&rateReserved, &upstream, &waitingSince, &signal); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	if err != nil {
		if retryable(err) || lockNotAvailable(err) {
			s.log.Debug("batutapg: step completion failed; completing the general way", "schema", s.cfg.Schema, "error", err)
		} else {
			s.lostClaims(fc.pl.reqs)
			s.log.Warn("batutapg: step completion failed; completing the general way", "schema", s.cfg.Schema, "error", err)
		}
		return compResult{}, nil, false
	}
	if !applied {
		return compResult{}, nil, false
	}
	s.steps.Add(1)
	if link {
		s.links.Add(1)
	}
	s.stepBacklog.Store(waited)
	res = compResult{applied: true, newState: string(batuta.OutcomeSucceeded), ready: int(ready), finished: batuta.RunState(fin)}
	// The link statement answers the dependent's columns whether or not
	// it took it.
	if name.Valid && (!link || took > 0) {
		c := batuta.Claim{RunID: formatUUID(runID.Bytes), Task: name.String, Workflow: workflow.String,
			Attempt: int(attempt.Int32) + 1, Rescues: int(rescues.Int32), Token: token.Int64, RateReserved: rateReserved.Bool,
			WaitingSince: waitingSince.Time}
		if deadline.Valid {
			c.RunDeadline = deadline.Time
		}
		var derr error
		if c.Event, derr = decodeEvent(eventID.String, event); derr == nil && len(upstream) > 0 {
			c.Upstream, derr = decodeUpstream(upstream)
		}
		if derr == nil && len(signal) > 0 {
			c.Signal, derr = decodeSignal(signal)
		}
		if derr != nil {
			// Recorded and leased, but unreadable: the lease is handed
			// back as a lost claim's is.
			s.log.Error("batutapg: reading the claim of a step completion failed; releasing it", "schema", s.cfg.Schema,
				"run", c.RunID, "task", c.Task, "error", derr)
			s.lostClaims(fc.pl.reqs)
		} else {
			claims = []batuta.Claim{c}
		}
	}
	if res.finished != "" {
		s.active.add(-1)
		s.runsFinished([]string{formatUUID(in.runs[0])})
	}
	if ready > took {
		// Dependents made ready and not taken (another one, or the task
		// ahead of them in claim order, was): work for anyone.
		s.workAppeared()
	}
	return res, claims, true
}
