package reconcile

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/droverhq/drover/agent/journal"
)

// journaled is the harness's journal, one "event version" (and
// "(previous)" for a switch) per entry, for the deployment and boots.
func (h *harness) journaled(deployment string) []string {
	h.t.Helper()
	es, skipped, err := journal.Read(filepath.Join(h.dir, "journal"))
	if err != nil || skipped != 0 {
		h.t.Fatalf("read the journal: %v, %d lines skipped", err, skipped)
	}
	var out []string
	for _, e := range es {
		switch {
		case e.Event == journal.Boot:
			out = append(out, "boot")
		case e.Deployment != deployment:
		case e.Event == journal.Switched:
			out = append(out, fmt.Sprintf("switched %d (%d)", e.Version, e.Previous))
		case e.Event == journal.Unassigned:
			out = append(out, "unassigned")
		default:
			out = append(out, fmt.Sprintf("%s %d", e.Event, e.Version))
		}
	}
	return out
}

// waitJournal waits until the journal of deployment reads want.
func (h *harness) waitJournal(deployment string, want ...string) {
	h.t.Helper()
	var got []string
	waitFor(h.t, "journal "+strings.Join(want, ", "), func() bool {
		got = h.journaled(deployment)
		return slices.Equal(got, want)
	})
}

// An update beside the old version journals each step in order; the
// switch comes before the old instance stops, and an agent restart shows
// as a boot after which nothing serves until the next switch.
func TestJournalUpdateBesideOld(t *testing.T) {
	h := newHarness(t, nil)
	h.update(asg("digits", 1))
	h.waitServing("digits", 1)
	h.update(asg("digits", 2))
	h.waitServing("digits", 2)
	h.waitJournal("digits",
		"boot", "assigned 1", "started 1", "healthy 1", "switched 1 (0)",
		"assigned 2", "started 2", "healthy 2", "switched 2 (1)", "stopped 1")

	// The same assignment again (a new watch answer) is no transition.
	h.update(asg("digits", 2))
	h.stop()
	h.start()
	h.waitServing("digits", 2)
	h.waitJournal("digits",
		"boot", "assigned 1", "started 1", "healthy 1", "switched 1 (0)",
		"assigned 2", "started 2", "healthy 2", "switched 2 (1)", "stopped 1",
		"not_serving 2", "stopped 2",
		"boot", "assigned 2", "started 2", "healthy 2", "switched 2 (0)")
	es, _, err := journal.Read(filepath.Join(h.dir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Event == journal.NotServing && !strings.Contains(e.Reason, "the agent is stopping") {
			t.Errorf("not serving because %q, want the agent stopping", e.Reason)
		}
	}
	if last := es[len(es)-4]; last.Event != journal.Assigned || last.Reason != "restored from the state file" {
		t.Errorf("assignment after the restart: %+v, want one restored from the state file", last)
	}
}

// When the new version must replace the old one and fails, the journal
// shows the gap in service: the old one stops (not serving), the new one
// starts and fails, and the old one serves again.
func TestJournalStopThenStartFails(t *testing.T) {
	h := newHarness(t, newFakeGPUs(1))
	h.update(gpuAsg("digits", 1, 1))
	h.waitServing("digits", 1)
	h.rt.set(2, neverHealthy)
	h.update(gpuAsg("digits", 2, 1))
	h.waitState("digits", 2, stateStarting)
	h.clock.waitTimer(t, testStartTimeout)
	h.clock.Advance(testStartTimeout)
	h.waitState("digits", 2, stateUnhealthy)
	h.waitServing("digits", 1)
	h.waitJournal("digits",
		"boot", "assigned 1", "started 1", "healthy 1", "switched 1 (0)",
		"assigned 2", "not_serving 1", "stopped 1", "started 2", "stopped 2",
		"started 1", "healthy 1", "switched 1 (0)", "failed 2")
	es, _, err := journal.Read(filepath.Join(h.dir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	last := es[len(es)-1]
	if last.State != "UNHEALTHY" || !strings.Contains(last.Reason, "not healthy within") {
		t.Errorf("failure entry %+v, want UNHEALTHY with the reason", last)
	}
}

// Removing the deployment journals the unassignment, the end of service
// and the stop.
func TestJournalRemoval(t *testing.T) {
	h := newHarness(t, nil)
	h.update(asg("digits", 1))
	h.waitServing("digits", 1)
	h.update()
	h.waitJournal("digits",
		"boot", "assigned 1", "started 1", "healthy 1", "switched 1 (0)",
		"unassigned", "not_serving 1", "stopped 1")
}
