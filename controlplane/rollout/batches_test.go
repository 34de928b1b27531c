package rollout

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func targets(perSite map[string]int) []Target {
	var ts []Target
	for site, n := range perSite {
		for i := range n {
			ts = append(ts, Target{NodeID: fmt.Sprintf("%s-%02d", site, i), Site: site})
		}
	}
	return ts
}

func TestPlanCanaryThenBatches(t *testing.T) {
	ts := targets(map[string]int{"berlin": 20, "lyon": 20})
	batches, canary := Plan(Strategy{Canary: 2, MaxParallel: 5, Budget: 3}, ts)
	if canary != 1 || len(batches[0]) != 2 {
		t.Fatalf("canary batches %d, first batch %v", canary, batches[0])
	}
	// The canary covers both sites.
	if batches[0][0].Site == batches[0][1].Site {
		t.Errorf("canary on one site: %v", batches[0])
	}
	// 38 nodes left in batches of 5: 8 batches.
	if len(batches) != 9 {
		t.Errorf("%d batches, want 9", len(batches))
	}
}

func TestCanaryPercentRoundsUp(t *testing.T) {
	if c := (Strategy{CanaryPercent: 10}).CanaryCount(41); c != 5 {
		t.Errorf("10%% of 41 = %d, want 5", c)
	}
	if c := (Strategy{Canary: 3, CanaryPercent: 50}).CanaryCount(2); c != 2 {
		t.Errorf("canary 3 of 2 nodes = %d, want 2", c)
	}
}

// Every node lands in exactly one batch and no batch takes more of a site
// than its budget, whatever the fleet and strategy.
func TestPlanInvariants(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		sites := map[string]int{}
		for s := range 1 + r.IntN(4) {
			sites[fmt.Sprintf("s%d", s)] = r.IntN(30)
		}
		st := Strategy{Canary: r.IntN(4), CanaryPercent: r.IntN(30), MaxParallel: r.IntN(12), Budget: 1 + r.IntN(5)}
		ts := targets(sites)
		batches, _ := Plan(st, ts)
		seen := map[string]bool{}
		for _, b := range batches {
			per := map[string]int{}
			for _, n := range b {
				if seen[n.NodeID] {
					t.Fatalf("case %d: %s in two batches", i, n.NodeID)
				}
				seen[n.NodeID] = true
				per[n.Site]++
				if per[n.Site] > st.Budget {
					t.Fatalf("case %d: batch %v takes %d of %s, budget %d", i, b, per[n.Site], n.Site, st.Budget)
				}
			}
		}
		if len(seen) != len(ts) {
			t.Fatalf("case %d: %d of %d nodes planned", i, len(seen), len(ts))
		}
	}
}

func TestNextBatchLeavesRoomForUnavailable(t *testing.T) {
	ts := targets(map[string]int{"berlin": 5, "lyon": 5})
	b := NextBatch(ts, 10, 2, map[string]int{"berlin": 2, "lyon": 1})
	per := map[string]int{}
	for _, n := range b {
		per[n.Site]++
	}
	if per["berlin"] != 0 || per["lyon"] != 1 {
		t.Errorf("batch %v with berlin at its budget", b)
	}
}
