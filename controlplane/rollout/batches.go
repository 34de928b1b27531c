// Package rollout moves a deployment's nodes from one model version to
// another in batches: canary first, then max_parallel at a time, never more
// nodes of one site unavailable at once than the site's budget allows.
//
// It holds the batch planner (Plan, NextBatch), shared by `deploy plan`
// and the controller, and the controller itself: Controller.Step, pure
// and deterministic, which the leader runs on a View of one deployment
// (its records, the nodes that match it, their assignments and instance
// reports, the time) and which returns Decisions, each to be written as
// one Raft command. The controller keeps nothing between steps; every
// batch it starts is recorded in the Rollout, so a new leader continues
// exactly where the old one stopped. Each decision's ApplyTo is the change
// its command makes to the records, and refuses a decision made on a
// record that has moved on (ErrStale), so a batch is never started twice.
// The operator's actions (Pause, Resume, Promote, Rollback) check the
// rollout's state and return the decision to propose.
package rollout

import (
	"cmp"
	"slices"
)

// Target is a node a rollout must move.
type Target struct {
	NodeID string
	Site   string
}

// Strategy is the part of a deployment's rollout strategy that shapes
// batches. Budget is max_unavailable_per_site and must be at least 1.
type Strategy struct {
	Canary        int // nodes; wins over CanaryPercent when both are set
	CanaryPercent int
	MaxParallel   int
	Budget        int
}

// CanaryCount is how many of n nodes the canary takes: a count, or a
// percent rounded up, never more than n.
func (s Strategy) CanaryCount(n int) int {
	c := s.Canary
	if c == 0 && s.CanaryPercent > 0 {
		c = (n*s.CanaryPercent + 99) / 100
	}
	return min(c, n)
}

// NextBatch picks the next batch from remaining: up to limit nodes, at most
// Budget minus unavailable[site] of any one site (a site whose nodes are
// already down or unhealthy gets fewer, or none), taken round-robin across
// sites so that a canary covers as many sites as it can and sites drain
// together. Nodes are taken in node id order within a site, so the same inputs give the same batch on any
// leader. It returns nil when no node can be taken now.
func NextBatch(remaining []Target, limit int, budget int, unavailable map[string]int) []Target {
	if limit <= 0 || budget <= 0 {
		return nil
	}
	bySite := map[string][]Target{}
	for _, t := range remaining {
		bySite[t.Site] = append(bySite[t.Site], t)
	}
	sites := make([]string, 0, len(bySite))
	for s, ts := range bySite {
		sites = append(sites, s)
		slices.SortFunc(ts, func(a, b Target) int { return cmp.Compare(a.NodeID, b.NodeID) })
	}
	slices.Sort(sites)
	room := map[string]int{}
	for _, s := range sites {
		room[s] = max(0, budget-unavailable[s])
	}
	var batch []Target
	for progress := true; progress && len(batch) < limit; {
		progress = false
		// The sites with the most nodes left go first in each round, so
		// that sites drain together and late batches are not cut short
		// by one site's budget.
		slices.SortStableFunc(sites, func(a, b string) int { return cmp.Compare(len(bySite[b]), len(bySite[a])) })
		for _, s := range sites {
			if len(batch) == limit {
				break
			}
			if room[s] == 0 || len(bySite[s]) == 0 {
				continue
			}
			batch = append(batch, bySite[s][0])
			bySite[s] = bySite[s][1:]
			room[s]--
			progress = true
		}
	}
	return batch
}

// Plan lays out every batch a rollout over targets would take when no
// node fails: the canary batches first (canary true), then batches of
// MaxParallel. The controller picks each batch with NextBatch when it
// starts it, against the nodes unavailable at that moment, so a live
// rollout can take smaller batches than its plan.
func Plan(s Strategy, targets []Target) (batches [][]Target, canary int) {
	remaining := slices.Clone(targets)
	take := func(limit int) []Target {
		b := NextBatch(remaining, limit, s.Budget, nil)
		remaining = slices.DeleteFunc(remaining, func(t Target) bool {
			return slices.ContainsFunc(b, func(x Target) bool { return x.NodeID == t.NodeID })
		})
		return b
	}
	for left := s.CanaryCount(len(targets)); left > 0; {
		b := take(left)
		if len(b) == 0 {
			break
		}
		batches = append(batches, b)
		canary++
		left -= len(b)
	}
	for len(remaining) > 0 {
		b := take(max(1, s.MaxParallel))
		if len(b) == 0 {
			break
		}
		batches = append(batches, b)
	}
	return batches, canary
}
