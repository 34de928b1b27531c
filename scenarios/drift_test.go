package scenarios

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/controlplane/alert"
	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// digitsRow is one image of the digits data set: 64 pixel counts and the
// digit.
type digitsRow struct {
	pixels []float64
	digit  int
}

func readDigits(t *testing.T) []digitsRow {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "digits.csv.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(zr).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	rows := make([]digitsRow, 0, len(recs))
	for _, rec := range recs {
		r := digitsRow{pixels: make([]float64, 64)}
		for i := range 64 {
			if r.pixels[i], err = strconv.ParseFloat(rec[i], 64); err != nil {
				t.Fatal(err)
			}
		}
		if r.digit, err = strconv.Atoi(rec[64]); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}
	return rows
}

// referenceCSV writes rows as a reference data set, named as the agent
// names what it observes of the sample model's input.
func referenceCSV(t *testing.T, rows []digitsRow) string {
	t.Helper()
	var b strings.Builder
	for i := range 64 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "input[%d]", i)
	}
	b.WriteByte('\n')
	for _, r := range rows {
		for i, p := range r.pixels {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.FormatFloat(p, 'g', -1, 64))
		}
		b.WriteByte('\n')
	}
	p := filepath.Join(t.TempDir(), "reference.csv")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDriftOnOneSite serves the sample digit classifier in two sites. One
// site's requests come from a shifted slice of the digits data set (only
// zeros), the other's from the same distribution as the
// reference (the held-out half). The leader's monitor policy flags the
// drifting site within a bounded number of windows and calls the webhook;
// over the whole run the other site raises no alarm.
func TestDriftOnOneSite(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "drover-onnx")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/droverhq/drover/cmd/drover-onnx").CombinedOutput(); err != nil {
		t.Fatalf("build drover-onnx: %v\n%s", err, out)
	}
	c := cluster.Make(t, 1, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(time.Second)
		cfg.MonitorInterval = server.Duration(time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	sites := []string{"berlin", "lyon"}
	fleet := startReady(ctx, t, c, 2, cluster.AgentOptions{
		Prefix: "cam", Site: func(i int) string { return sites[i] },
		Configure: func(cfg *agent.Config) { cfg.ONNXRuntime, cfg.TelemetryWindow = bin, time.Second },
	})

	// Alerts, checked against the cluster's key.
	var mu sync.Mutex
	alerts := map[string][]alert.Event{} // by cohort
	var badAlerts []error
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		err := verifyAlert(ctx, c, r.Header.Get(alert.SignatureHeader), body)
		var ev alert.Event
		if err == nil {
			err = json.Unmarshal(body, &ev)
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			badAlerts = append(badAlerts, err)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		alerts[ev.Cohort] = append(alerts[ev.Cohort], ev)
	}))
	defer hook.Close()

	rows := readDigits(t)
	var reference, heldOut, shifted []digitsRow
	for i, r := range rows {
		switch {
		case i%2 == 0:
			reference = append(reference, r)
		default:
			heldOut = append(heldOut, r)
		}
		if r.digit == 0 {
			shifted = append(shifted, r)
		}
	}
	createModel(t, c.Client(c.Leader(), false), "digits")
	setCLIEnv(t, c)
	addr := c.Nodes()[0].APIAddr()
	sample := filepath.Join("..", "cli", "sample", "hello-classifier")
	if _, errOut, code := drover(ctx, addr, "model", "push", sample, "--model", "digits", "--alias", "prod",
		"--reference", referenceCSV(t, reference)); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, errOut)
	}
	spec := fmt.Sprintf(`name: digits
model: digits@prod
runtime:
  type: onnx
strategy:
  max_parallel: 2
  min_healthy_time: 0s
monitor:
  by: site
  webhook: %s
  drift:
    action: alert
    windows: 3
`, hook.URL)
	if out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", deployFile(t, spec)); code != 0 {
		t.Fatalf("deploy apply: exit %d\n%s%s", code, out, errOut)
	}

	// Each site's agent gets 30 images in every request, 10 requests a
	// second: 300 values per feature per one-second window.
	feed := map[string][]digitsRow{"berlin": shifted, "lyon": heldOut}
	started := time.Now()
	var wg sync.WaitGroup
	feedCtx, stopFeeding := context.WithCancel(ctx)
	defer stopFeeding()
	errs := make(chan error, len(fleet))
	for i, a := range fleet {
		data := feed[sites[i]]
		wg.Go(func() {
			url := fmt.Sprintf("http://%s/v1/deployments/digits/infer", a.Status().ServeAddr)
			for k := 0; feedCtx.Err() == nil; k++ {
				batch := make([][]float64, 30)
				for j := range batch {
					batch[j] = data[(k*30+j)%len(data)].pixels
				}
				body, _ := json.Marshal(map[string]any{"inputs": map[string]any{"input": batch}})
				req, _ := http.NewRequestWithContext(feedCtx, http.MethodPost, url, bytes.NewReader(body))
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				// Before the instance serves, the endpoint answers 503.
				if err != nil && feedCtx.Err() == nil {
					errs <- fmt.Errorf("%s: %w", a.Name, err)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}

	// The drifting site is flagged within a bounded number of windows:
	// three drifted in a row, plus a few for the first windows to arrive.
	const bound = 20 * time.Second
	deadline := time.Now().Add(bound + 30*time.Second) // the rollout's own time besides
	var flagged alert.Event
	for {
		mu.Lock()
		if len(alerts["berlin"]) > 0 {
			flagged = alerts["berlin"][0]
		}
		mu.Unlock()
		if flagged.Deployment != "" {
			break
		}
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("berlin was not flagged within %s of traffic (over the run: %s)", time.Since(started).Round(time.Second), driftSummary(ctx, t, c))
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("berlin flagged %s after traffic began: %s", time.Since(started).Round(time.Second), flagged.Evidence)
	if flagged.Check != "drift" || flagged.Action != "alert" || flagged.Outcome != "alerted" || flagged.By != "site" || flagged.Windows != 3 {
		t.Errorf("berlin's alert: %+v", flagged)
	}

	// A long run for the other site: it must raise no alarm.
	const quiet = 20 * time.Second
	time.Sleep(quiet)
	stopFeeding()
	wg.Wait()
	res, err := c.Client(c.Nodes()[0], false).Drift.GetDrift(ctx, connect.NewRequest(&droverv1.GetDriftRequest{
		Model: "digits", Ref: "prod", GroupBy: "site", Deployment: "digits"}))
	if err != nil {
		t.Fatal(err)
	}
	verdicts := map[string]droverv1.DriftVerdict{}
	for _, co := range res.Msg.GetCohorts() {
		verdicts[co.GetKey()] = co.GetVerdict()
		t.Logf("%s over the run: %v, %d of %d inputs drifted, %d requests", co.GetKey(), co.GetVerdict(), co.GetDrifted(), co.GetEvaluated(), co.GetRequests())
	}
	if verdicts["berlin"] != droverv1.DriftVerdict_DRIFT_VERDICT_DRIFTED || verdicts["lyon"] == droverv1.DriftVerdict_DRIFT_VERDICT_DRIFTED {
		t.Errorf("verdicts over the run: %v", verdicts)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(badAlerts) > 0 {
		t.Errorf("alerts that did not verify: %v", badAlerts)
	}
	// Count false alarms: every alert for lyon is one.
	if n := len(alerts["lyon"]); n != 0 {
		t.Errorf("%d false alarms for lyon over %s: %+v", n, time.Since(started).Round(time.Second), alerts["lyon"])
	}
	if n := len(alerts["berlin"]); n != 1 {
		t.Errorf("%d alerts for berlin, want 1: a streak acts once", n)
	}
}

// driftSummary is each site's verdict over the whole run, in a line.
func driftSummary(ctx context.Context, t *testing.T, c *cluster.Cluster) string {
	res, err := c.Client(c.Nodes()[0], false).Drift.GetDrift(ctx, connect.NewRequest(&droverv1.GetDriftRequest{
		Model: "digits", Ref: "prod", GroupBy: "site", Deployment: "digits"}))
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, co := range res.Msg.GetCohorts() {
		parts = append(parts, fmt.Sprintf("%s %v, %d of %d inputs drifted, %d requests", co.GetKey(), co.GetVerdict(), co.GetDrifted(), co.GetEvaluated(), co.GetRequests()))
	}
	return strings.Join(parts, "; ")
}

// verifyAlert checks an alert's signature with the cluster's keys, as a
// receiver would.
func verifyAlert(ctx context.Context, c *cluster.Cluster, header string, body []byte) error {
	info, err := c.Client(c.Nodes()[0], false).Agent.GetClusterInfo(ctx, connect.NewRequest(&droverv1.GetClusterInfoRequest{}))
	if err != nil {
		return err
	}
	err = fmt.Errorf("no key")
	for _, pub := range info.Msg.GetManifestKeys() {
		if err = alert.Verify(pub, header, body, time.Now(), time.Minute); err == nil {
			return nil
		}
	}
	return err
}
