package batutapg

import "github.com/batuta-dev/batuta"

var _ batuta.RescueReporter = (*Store)(nil)

// ReportRescues implements batuta.RescueReporter: the liveness loop's
// rescues of the tasks of dead instances (Config.LivenessInterval) are
// reported to report, so batuta.StoreHooks.Rescued (batutaprom's
// batuta_rescues_total) counts them as it counts the executor's
// rescuer's. batuta.New calls it; each orchestrator on the store gets
// every such rescue. The rescues RescueExpired makes are not reported
// here: it returns them to the executor's rescuer, which reports them.
func (s *Store) ReportRescues(report func(rescued, failed int)) {
	s.live.reportMu.Lock()
	defer s.live.reportMu.Unlock()
	s.live.reports = append(s.live.reports, report)
}

// reportRescues hands the liveness loop's rescues to ReportRescues'
// functions; nothing is reported when there were none.
func (s *Store) reportRescues(rescued, failed int) {
	if rescued == 0 && failed == 0 {
		return
	}
	s.live.reportMu.Lock()
	reports := s.live.reports
	s.live.reportMu.Unlock()
	for _, r := range reports {
		r(rescued, failed)
	}
}
