package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func TestFirstDeploy(t *testing.T) {
	h := newHarness(t, newFakeGPUs(2))
	if code, _, body := h.infer("digits"); code != http.StatusNotFound || !strings.Contains(body, "digits") {
		t.Fatalf("before any assignment: %d %s, want 404 naming the deployment", code, body)
	}
	a := gpuAsg("digits", 1, 1)
	h.update(a)
	st := h.waitState("digits", 1, stateHealthy)
	h.waitServing("digits", 1)
	if st.GetPreviousVersion() != 0 || !slices.Equal(st.GetGpus(), []string{"GPU-0"}) || st.GetSince() == nil {
		t.Errorf("status %v: want no previous version, GPU-0, a since", st)
	}
	if got := h.gpus.holders(); !slices.Equal(got, []string{"digits@1/r1"}) {
		t.Errorf("GPU holders %v", got)
	}

	// The rest of the path and the query reach the instance under /v1/.
	resp, err := http.Post(h.srv.URL+"/v1/deployments/digits/infer?trace=1", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	var echo struct{ Path, Query string }
	_ = json.NewDecoder(resp.Body).Decode(&echo)
	resp.Body.Close()
	if echo.Path != "/v1/infer" || echo.Query != "trace=1" {
		t.Errorf("instance saw %+v, want /v1/infer?trace=1", echo)
	}

	// The listing.
	resp, err = http.Get(h.srv.URL + "/v1/deployments")
	if err != nil {
		t.Fatal(err)
	}
	var list struct{ Deployments []DeploymentInfo }
	_ = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list.Deployments) != 1 || list.Deployments[0].Serving != 1 || list.Deployments[0].State != "HEALTHY" || list.Deployments[0].Model != "digits" {
		t.Errorf("listing %+v", list)
	}

	// Metrics count the requests by deployment, version and code.
	if n := testutil.ToFloat64(h.r.metrics.requests.WithLabelValues("digits", "1", "200")); n < 2 {
		t.Errorf("requests counted for digits@1: %v", n)
	}
	if n := testutil.ToFloat64(h.r.metrics.requests.WithLabelValues(unknownDeployment, "", "404")); n != 1 {
		t.Errorf("404s counted: %v", n)
	}
	if n, err := testutil.GatherAndCount(h.reg, "drover_agent_inference_request_seconds"); err != nil || n == 0 {
		t.Errorf("latency histogram: %d series, %v", n, err)
	}

	// The state file holds the assignment and its last good version.
	b, err := os.ReadFile(filepath.Join(h.dir, DefaultStateFile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"last_good"`) || !strings.Contains(string(b), `"digits"`) {
		t.Errorf("state file:\n%s", b)
	}
}

func TestUpgradeBesideOldLosesNoRequest(t *testing.T) {
	h := newHarness(t, nil)
	// Slow answers, so that requests are in flight on the old version
	// when it is switched away from.
	h.rt.delay.Store(int64(20 * time.Millisecond))
	h.update(asg("digits", 1))
	h.waitServing("digits", 1)

	// Clients hammer the endpoint across the switch; each must get an
	// answer every time, from version 1 and then version 2, never back.
	var (
		stop     atomic.Bool
		failures atomic.Int64
		total    atomic.Int64
		wg       sync.WaitGroup
		sawNew   [8]atomic.Bool
	)
	client := &http.Client{}
	for i := range sawNew {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last uint64
			for !stop.Load() {
				resp, err := client.Post(h.srv.URL+"/v1/deployments/digits/infer", "application/json", strings.NewReader(`{"x":1}`))
				if err != nil {
					t.Errorf("client %d: %v", i, err)
					failures.Add(1)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				total.Add(1)
				if resp.StatusCode != http.StatusOK {
					t.Errorf("client %d: %d %s", i, resp.StatusCode, b)
					failures.Add(1)
					continue
				}
				var out struct{ Version uint64 }
				_ = json.Unmarshal(b, &out)
				if out.Version < last {
					t.Errorf("client %d: answered by version %d after version %d", i, out.Version, last)
				}
				last = out.Version
				if last == 2 {
					sawNew[i].Store(true)
				}
			}
		}()
	}
	waitFor(t, "requests flowing", func() bool { return total.Load() > 40 })
	// A slow request is in flight on version 1 when the switch comes: it
	// must be answered by version 1, which is stopped only after it.
	slow := make(chan error, 1)
	go func() {
		resp, err := client.Post(h.srv.URL+"/v1/deployments/digits/infer?sleep=400ms", "application/json", strings.NewReader(`{}`))
		if err != nil {
			slow <- err
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var out struct{ Version uint64 }
		_ = json.Unmarshal(b, &out)
		if resp.StatusCode != http.StatusOK || out.Version != 1 {
			slow <- fmt.Errorf("slow request: %d %s", resp.StatusCode, b)
			return
		}
		slow <- nil
	}()
	waitFor(t, "the slow request in flight", func() bool {
		return h.rt.instancesOf(1)[0].slow.Load() > 0
	})
	h.update(asg("digits", 2))
	st := h.waitState("digits", 2, stateHealthy)
	waitFor(t, "every client answered by version 2", func() bool {
		for i := range sawNew {
			if !sawNew[i].Load() {
				return false
			}
		}
		return true
	})
	before := total.Load()
	waitFor(t, "more requests after the switch", func() bool { return total.Load() > before+40 })
	stop.Store(true)
	wg.Wait()
	if err := <-slow; err != nil {
		t.Error(err)
	}
	t.Logf("%d requests, %d failed", total.Load(), failures.Load())
	if failures.Load() != 0 {
		t.Fatalf("%d requests failed across the switch", failures.Load())
	}
	if st.GetPreviousVersion() != 1 {
		t.Errorf("previous version %d, want 1", st.GetPreviousVersion())
	}
	olds := h.rt.instancesOf(1)
	waitFor(t, "version 1 stopped once drained", func() bool { return isDone(olds[0]) })
	if len(olds) != 1 || olds[0].served.Load() == 0 {
		t.Errorf("version 1: %d instances, want one that served and was stopped", len(olds))
	}
	if h.rt.live() != 1 {
		t.Errorf("%d instances live, want 1", h.rt.live())
	}
	if got := h.rt.startedVersions(); !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("starts %v", got)
	}
	// The old version's directory stays for a rollback, which then needs
	// no pull.
	pulls := h.puller.pullCount()
	h.update(asg("digits", 1))
	h.waitState("digits", 1, stateHealthy)
	h.waitServing("digits", 1)
	if h.puller.pullCount() != pulls {
		t.Errorf("the rollback pulled again")
	}
}

func TestUpgradeNeverHealthyKeepsOldServing(t *testing.T) {
	h := newHarness(t, nil)
	h.update(asg("digits", 1))
	h.waitServing("digits", 1)
	h.rt.set(2, neverHealthy)
	h.update(asg("digits", 2))
	h.waitState("digits", 2, stateStarting)
	h.clock.waitTimer(t, testStartTimeout)
	if code, v, _ := h.infer("digits"); code != http.StatusOK || v != 1 {
		t.Errorf("while version 2 starts: %d from version %d, want version 1", code, v)
	}
	h.clock.Advance(testStartTimeout)
	st := h.waitState("digits", 2, stateUnhealthy)
	for _, want := range []string{"not healthy within 10s", "version 1 keeps serving", "next try in 1s"} {
		if !strings.Contains(st.GetReason(), want) {
			t.Errorf("reason %q lacks %q", st.GetReason(), want)
		}
	}
	if st.GetPreviousVersion() != 1 {
		t.Errorf("previous version %d, want 1", st.GetPreviousVersion())
	}
	if code, v, _ := h.infer("digits"); code != http.StatusOK || v != 1 {
		t.Errorf("after version 2 failed: %d from version %d, want version 1", code, v)
	}
	news := h.rt.instancesOf(2)
	waitFor(t, "version 2 stopped", func() bool { return len(news) == 1 && isDone(news[0]) })
	if n := testutil.ToFloat64(h.r.metrics.updates.WithLabelValues("digits", "failed")); n != 1 {
		t.Errorf("failed updates counted: %v", n)
	}

	// Fixed on the next try: it takes over.
	h.rt.set(2, healthy)
	h.clock.waitTimer(t, testRetryMin)
	h.clock.Advance(testRetryMin)
	h.waitState("digits", 2, stateHealthy)
	h.waitServing("digits", 2)
}

func TestStopThenStartRestoresOldWhenNewFails(t *testing.T) {
	gpus := newFakeGPUs(1)
	h := newHarness(t, gpus)
	h.update(gpuAsg("digits", 1, 1))
	h.waitServing("digits", 1)
	h.rt.set(2, neverHealthy)
	h.update(gpuAsg("digits", 2, 1))
	h.waitState("digits", 2, stateStarting)
	h.clock.waitTimer(t, testStartTimeout)

	// The old one made room: requests are told why nothing serves.
	code, _, body := h.infer("digits")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"deployment":"digits"`) ||
		!strings.Contains(body, "switching from version 1 to version 2") {
		t.Errorf("during stop-then-start: %d %s", code, body)
	}
	if got := gpus.holders(); !slices.Equal(got, []string{"digits@2/r2"}) {
		t.Errorf("GPU holders while version 2 starts: %v", got)
	}
	if old := h.rt.instancesOf(1); len(old) != 1 || !isDone(old[0]) {
		t.Errorf("version 1 not stopped before version 2 started")
	}

	h.clock.Advance(testStartTimeout)
	st := h.waitState("digits", 2, stateUnhealthy)
	h.waitServing("digits", 1)
	if !strings.Contains(st.GetReason(), "version 1 keeps serving") || st.GetPreviousVersion() != 1 {
		t.Errorf("status %v", st)
	}
	if got := h.rt.startedVersions(); !slices.Equal(got, []uint64{1, 2, 1}) {
		t.Errorf("starts %v, want 1, 2, then 1 again", got)
	}
	if got := gpus.holders(); !slices.Equal(got, []string{"digits@1/r1"}) {
		t.Errorf("GPU holders after the restore: %v", got)
	}
	if n := testutil.ToFloat64(h.r.metrics.updates.WithLabelValues("digits", "restored")); n != 1 {
		t.Errorf("restores counted: %v", n)
	}
}

func TestStopThenStartSucceeds(t *testing.T) {
	gpus := newFakeGPUs(1)
	h := newHarness(t, gpus)
	h.update(gpuAsg("digits", 1, 1))
	h.waitServing("digits", 1)
	h.update(gpuAsg("digits", 2, 1))
	st := h.waitState("digits", 2, stateHealthy)
	h.waitServing("digits", 2)
	if st.GetPreviousVersion() != 1 || !slices.Equal(st.GetGpus(), []string{"GPU-0"}) {
		t.Errorf("status %v", st)
	}
	if got := gpus.holders(); !slices.Equal(got, []string{"digits@2/r2"}) {
		t.Errorf("GPU holders %v", got)
	}
}

func TestCrashLoopWhileStarting(t *testing.T) {
	h := newHarness(t, nil)
	h.rt.set(1, crashLoop)
	h.update(asg("digits", 1))
	// Given up on at once, without waiting out the start timeout.
	st := h.waitState("digits", 1, stateCrashLoop)
	if !strings.Contains(st.GetReason(), "restarted 3 times") || !strings.Contains(st.GetReason(), "model file unreadable") ||
		!strings.Contains(st.GetReason(), "nothing serves") || st.GetRestarts() != 3 {
		t.Errorf("status %v", st)
	}
	code, _, body := h.infer("digits")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"deployment":"digits"`) || !strings.Contains(body, "restarted 3 times") {
		t.Errorf("nothing serves: %d %s, want 503 naming the deployment and why", code, body)
	}
}

func TestServingInstanceCrashLoops(t *testing.T) {
	h := newHarness(t, nil)
	h.update(asg("digits", 1))
	h.waitServing("digits", 1)
	wait := testRetryMin
	for i := 1; i <= 3; i++ {
		ins := h.rt.instancesOf(1)
		ins[len(ins)-1].die("exited with code 139 (segmentation fault)")
		want := stateFailed
		if i == 3 {
			want = stateCrashLoop
		}
		st := h.waitState("digits", 1, want)
		if !strings.Contains(st.GetReason(), "segmentation fault") {
			t.Errorf("reason %q", st.GetReason())
		}
		var body string
		waitFor(t, "503 after the crash", func() bool {
			var code int
			code, _, body = h.infer("digits")
			return code == http.StatusServiceUnavailable
		})
		if !strings.Contains(body, "version 1 ended") || !strings.Contains(body, "segmentation fault") {
			t.Errorf("after the crash: %s", body)
		}
		// Started again after a backoff that doubles.
		h.clock.waitTimer(t, wait)
		if n := h.rt.startsOf(1); n != i {
			t.Fatalf("%d starts before the backoff ended, want %d", n, i)
		}
		h.clock.Advance(wait)
		h.waitServing("digits", 1)
		wait *= 2
	}
	if st := h.status("digits"); st.GetRestarts() < 3 {
		t.Errorf("restarts %d after three crashes", st.GetRestarts())
	}
}

func TestRemovedDeploymentStops(t *testing.T) {
	gpus := newFakeGPUs(1)
	h := newHarness(t, gpus)
	h.update(gpuAsg("digits", 1, 1), asg("faces", 4))
	h.waitServing("digits", 1)
	h.waitServing("faces", 4)
	h.update(asg("faces", 4))
	ins := h.rt.instancesOf(1)
	waitFor(t, "digits stopped", func() bool { return isDone(ins[0]) })
	waitFor(t, "digits gone from the status", func() bool { return h.status("digits") == nil })
	if code, _, _ := h.infer("digits"); code != http.StatusNotFound {
		t.Errorf("removed deployment: %d, want 404", code)
	}
	if got := gpus.holders(); !slices.Equal(got, []string{"faces@4/r4"}) {
		t.Errorf("GPU holders %v", got)
	}
	if d := h.r.Deployments(); len(d) != 1 || d[0].Deployment != "faces" {
		t.Errorf("listing %+v", d)
	}
	h.waitServing("faces", 4)
	waitFor(t, "digits gone from the state file", func() bool {
		b, err := os.ReadFile(filepath.Join(h.dir, DefaultStateFile))
		return err == nil && !strings.Contains(string(b), "digits")
	})
	if h.seriesOf("faces") == 0 {
		t.Errorf("faces' series went too")
	}
	if n := h.seriesOf("digits"); n != 0 {
		t.Errorf("%d series of digits kept", n)
	}
}

func TestRestartWithoutServerServesLastGood(t *testing.T) {
	h := newHarness(t, nil)
	h.update(asg("digits", 1))
	h.waitServing("digits", 1)
	h.update(asg("digits", 2))
	h.waitState("digits", 2, stateHealthy)
	// Version 3 is assigned but not yet on any server the node reaches.
	h.puller.setMissing(3, true)
	h.update(asg("digits", 3))
	h.waitState("digits", 3, stateFailed)
	h.waitServing("digits", 2)

	// The agent restarts with every server unreachable: no Update comes.
	h.stop()
	if h.rt.live() != 0 {
		t.Fatalf("%d instances outlived Run", h.rt.live())
	}
	h.puller.setOffline(true)
	pulls := h.puller.pullCount()
	h.start()
	h.waitServing("digits", 2)
	st := h.waitState("digits", 3, stateFailed)
	if !strings.Contains(st.GetReason(), "no server reachable") || !strings.Contains(st.GetReason(), "version 2 keeps serving") ||
		st.GetPreviousVersion() != 2 {
		t.Errorf("status %v", st)
	}
	if got := h.puller.pullCount() - pulls; got != 1 {
		t.Errorf("%d pulls after the restart, want 1 (version 3; version 2 is on disk)", got)
	}

	// It keeps serving, retrying with backoff, for as long as it takes.
	for _, wait := range []time.Duration{testRetryMin, 2 * testRetryMin, 4 * testRetryMin, testRetryMax, testRetryMax} {
		pulls = h.puller.pullCount()
		h.clock.waitTimer(t, wait)
		h.clock.Advance(wait)
		waitFor(t, "another try", func() bool { return h.puller.pullCount() > pulls })
		if code, v, _ := h.infer("digits"); code != http.StatusOK || v != 2 {
			t.Fatalf("offline: %d from version %d", code, v)
		}
	}

	// A server is back with version 3.
	h.puller.setOffline(false)
	h.puller.setMissing(3, false)
	h.update(asg("digits", 3))
	h.waitState("digits", 3, stateHealthy)
	h.waitServing("digits", 3)
}

func TestRestartRestoresLastGoodBeforeAssigned(t *testing.T) {
	// Version 2 failed its start; after a restart the node serves version
	// 1 again and then tries version 2, which works now.
	h := newHarness(t, nil)
	h.update(asg("digits", 1))
	h.waitServing("digits", 1)
	h.rt.set(2, startError)
	h.update(asg("digits", 2))
	h.waitState("digits", 2, stateFailed)
	h.stop()
	h.puller.setOffline(true)
	h.rt.set(2, neverHealthy)
	h.start()
	h.waitServing("digits", 1)
	h.waitState("digits", 2, stateStarting)
	if got := h.rt.startedVersions(); !slices.Equal(got[len(got)-2:], []uint64{1, 2}) {
		t.Errorf("starts %v: want the last good version first", got)
	}
}

func TestBackoffBetweenRetries(t *testing.T) {
	h := newHarness(t, nil)
	h.update(asg("digits", 1))
	h.waitServing("digits", 1)
	h.rt.set(2, startError)
	h.update(asg("digits", 2))
	wait := testRetryMin
	for try := 1; try <= 5; try++ {
		st := h.waitState("digits", 2, stateFailed)
		if !strings.Contains(st.GetReason(), "command not found") {
			t.Errorf("reason %q", st.GetReason())
		}
		h.clock.waitTimer(t, wait)
		// No hot loop: nothing more happens until the backoff ends.
		time.Sleep(20 * time.Millisecond)
		if n := h.rt.startsOf(2); n != try {
			t.Fatalf("try %d: %d starts", try, n)
		}
		h.clock.Advance(wait - time.Millisecond)
		time.Sleep(5 * time.Millisecond)
		if n := h.rt.startsOf(2); n != try {
			t.Fatalf("try %d: started again before the backoff ended", try)
		}
		h.clock.Advance(time.Millisecond)
		waitFor(t, "the next try", func() bool { return h.rt.startsOf(2) == try+1 })
		wait = min(2*wait, testRetryMax)
	}
	if code, v, _ := h.infer("digits"); code != http.StatusOK || v != 1 {
		t.Errorf("%d from version %d", code, v)
	}
	// A new assignment is tried at once, whatever the backoff of the
	// last.
	h.rt.set(3, healthy)
	h.update(asg("digits", 3))
	h.waitServing("digits", 3)
}

func TestAssignmentChangeAbandonsAttempt(t *testing.T) {
	h := newHarness(t, nil)
	h.update(asg("digits", 1))
	h.waitServing("digits", 1)
	h.rt.set(2, neverHealthy)
	h.update(asg("digits", 2))
	h.waitState("digits", 2, stateStarting)
	h.update(asg("digits", 3))
	h.waitState("digits", 3, stateHealthy)
	h.waitServing("digits", 3)
	v2 := h.rt.instancesOf(2)
	if len(v2) != 1 || !isDone(v2[0]) {
		t.Errorf("the abandoned version 2 was not stopped")
	}
	waitFor(t, "version 1 stopped", func() bool { return h.rt.live() == 1 })
}

func TestInvalidAssignmentsReported(t *testing.T) {
	h := newHarness(t, nil)
	bad := asg("a/b", 1)
	zero := asg("zero", 0)
	err := h.r.Update([]*droverv1.Assignment{bad, zero, asg("digits", 1), asg("digits", 2)})
	if !errors.Is(err, ErrInvalidAssignment) {
		t.Fatalf("Update: %v", err)
	}
	t.Log(err)
	for _, want := range []string{`"a/b" cannot be a URL path segment`, "zero: version 0", "digits assigned twice"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q", want)
		}
	}
	h.waitServing("digits", 1)
	if st := h.status("zero"); st.GetState() != stateFailed || !strings.Contains(st.GetReason(), "invalid assignment") {
		t.Errorf("status of zero: %v", st)
	}
}

func TestUnknownRuntimeFails(t *testing.T) {
	h := newHarness(t, nil)
	a := asg("digits", 1)
	a.Runtime.Type = "triton"
	h.update(a)
	st := h.waitState("digits", 1, stateFailed)
	if !strings.Contains(st.GetReason(), `runtime "triton" is not available on this node (it has "onnx")`) {
		t.Errorf("reason %q", st.GetReason())
	}
}

func TestStartTimeoutFromAssignment(t *testing.T) {
	h := newHarness(t, nil)
	h.rt.set(1, neverHealthy)
	a := asg("digits", 1)
	a.Runtime.StartTimeout = durationpb(3 * time.Second)
	h.update(a)
	h.clock.waitTimer(t, 3*time.Second)
	code, _, body := h.infer("digits")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "version 1 is starting") {
		t.Errorf("while the first version starts: %d %s", code, body)
	}
	h.clock.Advance(3 * time.Second)
	st := h.waitState("digits", 1, stateUnhealthy)
	if !strings.Contains(st.GetReason(), "not healthy within 3s") {
		t.Errorf("reason %q", st.GetReason())
	}
}

func TestUpstreamDownIsBadGateway(t *testing.T) {
	h := newHarness(t, nil)
	h.update(asg("digits", 1))
	h.waitServing("digits", 1)
	// The process is gone but nothing told the runtime yet.
	h.rt.instancesOf(1)[0].srv.Close()
	code, _, body := h.infer("digits")
	if code != http.StatusBadGateway || !strings.Contains(body, "version 1 did not answer") || !strings.Contains(body, `"deployment":"digits"`) {
		t.Errorf("%d %s", code, body)
	}
	if n := testutil.ToFloat64(h.r.metrics.requests.WithLabelValues("digits", "1", "502")); n != 1 {
		t.Errorf("502s counted: %v", n)
	}
}

// TestVersionHeaderNamesServingVersion checks that every answer an
// instance gives through the endpoint names the version that served it,
// across an upgrade, whatever the instance itself claims; that a 502 names
// the version that did not answer; and that the endpoint's own errors name
// none.
func TestVersionHeaderNamesServingVersion(t *testing.T) {
	h := newHarness(t, nil)
	post := func(query string) *http.Response {
		t.Helper()
		resp, err := http.Post(h.srv.URL+"/v1/deployments/digits/infer"+query, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := post(""); resp.StatusCode != http.StatusNotFound || resp.Header.Get(VersionHeader) != "" {
		t.Errorf("unknown deployment: %d with %s %q, want 404 and no version", resp.StatusCode, VersionHeader, resp.Header.Get(VersionHeader))
	}
	h.update(asg("digits", 1))
	h.waitServing("digits", 1)
	if resp := post(""); resp.StatusCode != http.StatusOK || resp.Header.Get(VersionHeader) != "1" {
		t.Errorf("version 1 serving: %d with %s %q, want 200 and 1", resp.StatusCode, VersionHeader, resp.Header.Get(VersionHeader))
	}
	h.update(asg("digits", 2))
	h.waitState("digits", 2, stateHealthy)
	h.waitServing("digits", 2)
	resp := post("?claim=7")
	if got := resp.Header.Values(VersionHeader); resp.StatusCode != http.StatusOK || !slices.Equal(got, []string{"2"}) {
		t.Errorf("version 2 serving, its instance claiming 7: %d with %s %q, want 200 and only 2", resp.StatusCode, VersionHeader, got)
	}
	h.rt.instancesOf(2)[0].srv.Close()
	if resp := post(""); resp.StatusCode != http.StatusBadGateway || resp.Header.Get(VersionHeader) != "2" {
		t.Errorf("version 2 not answering: %d with %s %q, want 502 and 2", resp.StatusCode, VersionHeader, resp.Header.Get(VersionHeader))
	}
}

func TestCorruptStateRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, DefaultStateFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, dir: dir, clock: newFakeClock(), rt: newFakeRuntime(t, newFakeClock()), puller: newFakePuller(t)}
	_, err := New(h.config())
	if !errors.Is(err, ErrStateCorrupt) || !strings.Contains(err.Error(), "remove the file") {
		t.Fatalf("New: %v", err)
	}
	t.Log(err)
}

func TestConfigValidate(t *testing.T) {
	h := &harness{t: t, dir: t.TempDir(), clock: newFakeClock(), rt: newFakeRuntime(t, newFakeClock()), puller: newFakePuller(t)}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no dir", func(c *Config) { c.Dir = "" }, "set Dir"},
		{"no runtime", func(c *Config) { c.Runtimes = nil }, "set Runtimes"},
		{"no puller", func(c *Config) { c.Puller = nil }, "set Puller"},
		{"retry max below min", func(c *Config) { c.RetryMax = c.RetryMin / 2 }, "below the minimum"},
		{"crash loop 0", func(c *Config) { c.CrashLoopAfter = 0 }, "crash-loop threshold"},
		{"nil runtime", func(c *Config) { c.Runtimes["exec"] = nil }, `runtime "exec"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := h.config()
			tc.edit(&cfg)
			err := cfg.Validate()
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate: %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if err := h.config().Validate(); err != nil {
		t.Errorf("valid config refused: %v", err)
	}
}

func TestRemovedWhileStarting(t *testing.T) {
	gpus := newFakeGPUs(1)
	h := newHarness(t, gpus)
	h.update(gpuAsg("digits", 1, 1))
	h.waitServing("digits", 1)
	h.rt.set(2, neverHealthy)
	h.update(gpuAsg("digits", 2, 1))
	h.waitState("digits", 2, stateStarting)
	h.clock.waitTimer(t, testStartTimeout)
	h.update()
	waitFor(t, "digits gone", func() bool { return h.status("digits") == nil && h.rt.live() == 0 })
	if got := h.rt.startedVersions(); !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("starts %v: the old version must not come back for a removed deployment", got)
	}
	if got := gpus.holders(); len(got) != 0 {
		t.Errorf("GPU holders %v", got)
	}
	if code, _, _ := h.infer("digits"); code != http.StatusNotFound {
		t.Errorf("removed: %d", code)
	}
}

func TestRunTwiceRefused(t *testing.T) {
	h := newHarness(t, nil)
	waitFor(t, "Run started", func() bool {
		h.r.mu.Lock()
		defer h.r.mu.Unlock()
		return h.r.started
	})
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // were it accepted, it would return at once
	if err := h.r.Run(ctx); err == nil {
		t.Error("a second Run was accepted")
	}
}

// The deployment keeps its own copy of what serves and of the version
// before, so the store removing them (two newer versions were pulled, and
// failed) neither stops a restart without a server from serving, nor a
// rollback; copies of other versions go.
func TestKeptVersionsOutliveTheStore(t *testing.T) {
	h := newHarness(t, nil)
	h.update(asg("digits", 1))
	h.waitServing("digits", 1)
	h.update(asg("digits", 2))
	h.waitState("digits", 2, stateHealthy)
	h.rt.set(3, startError)
	h.update(asg("digits", 3))
	h.waitState("digits", 3, stateFailed)
	for _, v := range []uint64{1, 2} {
		h.puller.evict(t, "digits", v)
	}
	pinned := func() []string {
		entries, _ := os.ReadDir(filepath.Join(h.dir, "versions", "digits"))
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	if got := pinned(); !slices.Equal(got, []string{"1", "2", "3"}) {
		t.Errorf("copies %v, want 1, 2 (serving and previous) and 3 (being tried)", got)
	}

	h.stop()
	h.puller.setOffline(true)
	h.start()
	h.waitServing("digits", 2)
	for _, s := range h.rt.instancesOf(2) {
		if !strings.HasPrefix(s.spec.Dir, h.dir) {
			t.Errorf("version 2 runs from %s, not the deployment's copy", s.spec.Dir)
		}
	}
	// Rolling back to version 1 needs neither the store nor a server.
	h.update(asg("digits", 1))
	h.waitState("digits", 1, stateHealthy)
	h.waitServing("digits", 1)
	// Copies are pruned once the replaced instance is retired, a moment
	// after the switch.
	waitFor(t, "the copies of versions 1 and 2 alone after the rollback", func() bool { return slices.Equal(pinned(), []string{"1", "2"}) })
	h.update()
	waitFor(t, "the copies removed with the deployment", func() bool { return len(pinned()) == 0 })
}
