package server_test

import (
	"crypto/rand"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/internal/pki"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

// encodedWindow is node's one-minute window ending at end with reqs
// requests, one of them failed.
func encodedWindow(t *testing.T, node string, end time.Time, reqs int) []byte {
	t.Helper()
	p := sketch.NewProfile(nil)
	for i := range reqs {
		p.Requests++
		if err := p.Latency.Add(0.01 * float64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	p.AddError("timeout")
	w := &sketch.Window{NodeID: node, Deployment: "det", Model: "defect", Version: "v1", Start: end.Add(-time.Minute), End: end, Profile: p}
	b, err := w.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// enrolledAgent enrolls a node in site berlin through n and returns it with
// a TelemetryService client presenting its certificate to addr.
func enrolledAgent(t *testing.T, c *cluster.Cluster, n *cluster.Node) *fakeAgent {
	t.Helper()
	tokens, _ := operator(t, c, n)
	tok, _ := createToken(t, tokens, &droverv1.CreateTokenRequest{MaxUses: 1, Site: "berlin", Labels: map[string]string{"zone": "b1"}})
	a := newFakeAgent(t, c.CA.Pool())
	a.mustEnrollRegister(t, n.APIAddr(), tok, "edge-1")
	return a
}

func (a *fakeAgent) telemetry(t *testing.T, addr string) droverv1connect.TelemetryServiceClient {
	t.Helper()
	return droverv1connect.NewTelemetryServiceClient(a.httpClient(t, nil), "https://"+addr)
}

func fleetQuery(t *testing.T, c *cluster.Cluster, n *cluster.Node, q *droverv1.QueryTelemetryRequest) (*droverv1.QueryTelemetryResponse, error) {
	t.Helper()
	res, err := clientsWith(t, c, n, c.Token(), false).Telemetry.Query(testCtx(t, 20*time.Second), connect.NewRequest(q))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// Every window a server acknowledged is still counted, exactly once, by a
// query on the survivors after that server dies: it was copied to one peer
// before the acknowledgement.
func TestTelemetrySurvivesReceivingServer(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	recv := c.Nodes()[1]
	a := enrolledAgent(t, c, recv)
	// The receiver copies to a peer only once gossip shows it one.
	eventually(t, 20*time.Second, "every server answers a query on the receiver", func() error {
		r, err := fleetQuery(t, c, recv, &droverv1.QueryTelemetryRequest{})
		if err != nil {
			return err
		}
		if len(r.Answered) != 3 {
			return fmt.Errorf("answered by %v", r.Answered)
		}
		return nil
	})

	now := time.Now()
	const batches, perBatch, reqs = 4, 5, 3
	ship := a.telemetry(t, recv.APIAddr())
	for b := range batches {
		var ws [][]byte
		for i := range perBatch {
			ws = append(ws, encodedWindow(t, a.node.GetId(), now.Add(-time.Duration(b*perBatch+i+1)*time.Minute), reqs))
		}
		res, err := ship.ShipTelemetry(testCtx(t, 20*time.Second), connect.NewRequest(&droverv1.ShipTelemetryRequest{Windows: ws}))
		if err != nil {
			t.Fatalf("ship batch %d: %v", b, err)
		}
		if res.Msg.Stored != perBatch || len(res.Msg.Refused) != 0 {
			t.Fatalf("ship batch %d: %v", b, res.Msg)
		}
	}
	const total = batches * perBatch
	q := &droverv1.QueryTelemetryRequest{Model: "defect", GroupBy: "site", Since: timestamppb.New(now.Add(-2 * time.Hour))}
	check := func(r *droverv1.QueryTelemetryResponse) error {
		if len(r.Groups) != 1 {
			return fmt.Errorf("groups %v, want one", r.Groups)
		}
		g := r.Groups[0]
		if g.Key != "berlin" || g.Windows != total || g.Profile.GetRequests() != total*reqs || g.Nodes != 1 {
			return fmt.Errorf("group %s: %d windows, %d requests, %d nodes; want berlin, %d, %d, 1", g.Key, g.Windows, g.Profile.GetRequests(), g.Nodes, total, total*reqs)
		}
		var errs uint64
		for _, e := range g.Profile.GetErrors() {
			errs += e.Count
		}
		if errs != total {
			return fmt.Errorf("errors %d, want %d", errs, total)
		}
		return nil
	}
	for _, n := range c.Nodes() {
		r, err := fleetQuery(t, c, n, q)
		if err != nil {
			t.Fatalf("query on %s: %v", n.Name, err)
		}
		if err := check(r); err != nil {
			t.Fatalf("query on %s before the kill: %v", n.Name, err)
		}
	}

	c.Kill(recv)
	for _, n := range c.Nodes() {
		if n == recv {
			continue
		}
		r, err := fleetQuery(t, c, n, q)
		if err != nil {
			t.Fatalf("query on %s after the kill: %v", n.Name, err)
		}
		if err := check(r); err != nil {
			t.Fatalf("query on %s after the kill (answered %v, missing %v): %v", n.Name, r.Answered, r.Missing, err)
		}
		for _, s := range r.Answered {
			if s == recv.Name {
				t.Fatalf("the killed server %s is listed as answering", s)
			}
		}
	}
}

// Each bad window is refused with its reason and not stored; the good one
// beside them is.
func TestShipTelemetryRefusesBadWindows(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	n := c.Nodes()[0]
	a := enrolledAgent(t, c, n)
	id := a.node.GetId()
	now := time.Now()
	huge := make([]byte, 1<<20+1)
	_, _ = rand.Read(huge)
	ws := [][]byte{
		encodedWindow(t, id, now.Add(10*time.Minute), 1),  // future
		encodedWindow(t, id, now.Add(-8*24*time.Hour), 1), // older than retention
		{0x0a, 0xff, 0x01}, // malformed
		encodedWindow(t, "n-someoneelse", now.Add(-time.Minute), 1), // another node
		huge, // oversized
		encodedWindow(t, id, now.Add(-time.Minute), 7), // good
	}
	wantReason := []string{"after the server's clock", "retention", "decode window", "comes from node", "bytes, more than"}
	res, err := a.telemetry(t, n.APIAddr()).ShipTelemetry(testCtx(t, 20*time.Second), connect.NewRequest(&droverv1.ShipTelemetryRequest{Windows: ws}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.Stored != 1 || len(res.Msg.Refused) != len(wantReason) {
		t.Fatalf("stored %d, refused %v; want 1 stored and %d refused", res.Msg.Stored, res.Msg.Refused, len(wantReason))
	}
	for i, r := range res.Msg.Refused {
		if r.Index != uint32(i) || !strings.Contains(r.Reason, wantReason[i]) {
			t.Errorf("refusal %d: index %d reason %q; want index %d and a reason with %q", i, r.Index, r.Reason, i, wantReason[i])
		}
	}
	r, err := fleetQuery(t, c, n, &droverv1.QueryTelemetryRequest{Since: timestamppb.New(now.Add(-30 * 24 * time.Hour)), Until: timestamppb.New(now.Add(time.Hour)), GroupBy: "node"})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Groups) != 1 || r.Groups[0].Key != id || r.Groups[0].Windows != 1 || r.Groups[0].Profile.GetRequests() != 7 {
		t.Fatalf("stored groups %v; want only the good window", r.Groups)
	}
	if st, err := n.Server().TelemetryStats(); err != nil || st.Windows != 1 {
		t.Fatalf("store holds %+v (%v); want one window", st, err)
	}

	// A revoked node's windows are refused before any is read.
	_, nodes := operator(t, c, n)
	if _, err := nodes.RevokeNode(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RevokeNodeRequest{Node: id})); err != nil {
		t.Fatal(err)
	}
	_, err = a.telemetry(t, n.APIAddr()).ShipTelemetry(testCtx(t, 20*time.Second), connect.NewRequest(&droverv1.ShipTelemetryRequest{Windows: ws[5:]}))
	wantErr(t, "ship from a revoked node", err, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED)

	// A certificate the cluster's CA signed for a node it never enrolled,
	// and a caller with no certificate at all, are refused the same way.
	stranger := newFakeAgent(t, c.CA.Pool())
	if stranger.cert, err = c.CA.IssueClientCert("n-neverenrolled", pki.RoleAgent, time.Hour); err != nil {
		t.Fatal(err)
	}
	_, err = stranger.telemetry(t, n.APIAddr()).ShipTelemetry(testCtx(t, 20*time.Second), connect.NewRequest(&droverv1.ShipTelemetryRequest{
		Windows: [][]byte{encodedWindow(t, "n-neverenrolled", now.Add(-time.Minute), 3)},
	}))
	wantErr(t, "ship from an unknown node", err, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID)
	_, err = newFakeAgent(t, c.CA.Pool()).telemetry(t, n.APIAddr()).ShipTelemetry(testCtx(t, 20*time.Second), connect.NewRequest(&droverv1.ShipTelemetryRequest{Windows: ws[5:]}))
	wantErr(t, "ship without a certificate", err, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING)
	if st, err := n.Server().TelemetryStats(); err != nil || st.Windows != 1 {
		t.Fatalf("after the refused callers the store holds %+v (%v); want still the one good window", st, err)
	}
}

// /metrics carries the fleet's aggregates per site and deployment over the
// last whole minute, in an exposition promtool's linter accepts.
func TestFleetMetrics(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	n := c.Nodes()[0]
	a := enrolledAgent(t, c, n)
	// One window ends at the last minute boundary, one at the next, with
	// different request counts: whichever minute the scrape covers, its
	// window says what to expect.
	t0 := time.Now().Truncate(time.Minute)
	reqs := map[int64]uint64{t0.Unix(): 5, t0.Add(time.Minute).Unix(): 9}
	var ws [][]byte
	for end, r := range reqs {
		ws = append(ws, encodedWindow(t, a.node.GetId(), time.Unix(end, 0), int(r)))
	}
	res, err := a.telemetry(t, n.APIAddr()).ShipTelemetry(testCtx(t, 20*time.Second), connect.NewRequest(&droverv1.ShipTelemetryRequest{Windows: ws}))
	if err != nil || res.Msg.Stored != 2 {
		t.Fatalf("ship: %v %v", res, err)
	}
	code, body := httpGet(t, c, n, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("lint /metrics: %v", err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "drover_fleet_") || strings.HasPrefix(p.Metric, "drover_telemetry_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		for _, m := range mfs[name].GetMetric() {
			match := true
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					match = false
				}
			}
			if match {
				if m.GetGauge() != nil {
					return m.GetGauge().GetValue(), true
				}
				return m.GetCounter().GetValue(), true
			}
		}
		return 0, false
	}
	end, ok := value("drover_fleet_window_end_timestamp_seconds", nil)
	want, known := reqs[int64(end)]
	if !ok || !known {
		t.Fatalf("fleet window ends at %v (%v); want one of the shipped windows' ends %v", end, ok, reqs)
	}
	cohort := map[string]string{"site": "berlin", "deployment": "det"}
	if got, _ := value("drover_fleet_requests", cohort); got != float64(want) {
		t.Errorf("drover_fleet_requests = %v, want %d", got, want)
	}
	if got, _ := value("drover_fleet_errors", cohort); got != 1 {
		t.Errorf("drover_fleet_errors = %v, want 1", got)
	}
	// Latencies were 0.01s, 0.02s, … 0.01s×requests; the sketch's
	// quantile q is the value of rank ⌊q×(n-1)⌋, within 1%.
	for _, q := range []struct {
		name string
		q    float64
	}{{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}} {
		got, ok := value("drover_fleet_latency_"+q.name+"_seconds", cohort)
		exact := 0.01 * (math.Floor(q.q*float64(want-1)) + 1)
		if !ok || math.Abs(got-exact) > exact*0.02 {
			t.Errorf("%s latency = %v (%v), want about %v", q.name, got, ok, exact)
		}
	}
	if got, _ := value("drover_telemetry_windows_total", map[string]string{"outcome": "stored"}); got != 2 {
		t.Errorf("stored windows = %v, want 2", got)
	}
	if got, _ := value("drover_telemetry_store_bytes", nil); got <= 0 {
		t.Errorf("store bytes = %v, want more than 0", got)
	}
}

// A server whose peers are alive in gossip but unreachable acknowledges
// nothing: the agent keeps its windows rather than trust one disk with
// them. Once the peers are back the same windows are stored.
func TestShipTelemetryUnavailableWithoutCopy(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	recv := c.Nodes()[0]
	a := enrolledAgent(t, c, recv)
	ws := [][]byte{encodedWindow(t, a.node.GetId(), time.Now().Add(-time.Minute), 3)}
	var others []string
	for _, n := range c.Nodes()[1:] {
		others = append(others, n.Name)
	}
	// The partition cuts the servers' API and Raft connections; gossip
	// still shows the peers alive.
	c.Partition([]string{recv.Name}, others)
	_, err := a.telemetry(t, recv.APIAddr()).ShipTelemetry(testCtx(t, 60*time.Second), connect.NewRequest(&droverv1.ShipTelemetryRequest{Windows: ws}))
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "no other server took a copy") {
		t.Fatalf("ship with unreachable peers: %v; want Unavailable", err)
	}
	if st, err := recv.Server().TelemetryStats(); err != nil || st.Windows != 0 {
		t.Fatalf("receiver stored %+v (%v) of a batch it did not acknowledge", st, err)
	}
	c.Heal()
	eventually(t, 30*time.Second, "the same windows are stored once the peers are back", func() error {
		res, err := a.telemetry(t, recv.APIAddr()).ShipTelemetry(testCtx(t, 20*time.Second), connect.NewRequest(&droverv1.ShipTelemetryRequest{Windows: ws}))
		if err != nil {
			return err
		}
		if res.Msg.Stored != 1 {
			return fmt.Errorf("answer %v", res.Msg)
		}
		return nil
	})
	held := 0
	for _, n := range c.Nodes() {
		st, err := n.Server().TelemetryStats()
		if err != nil {
			t.Fatal(err)
		}
		held += int(st.Windows)
	}
	if held != 2 {
		t.Fatalf("%d copies of the window across the servers, want 2", held)
	}
}
