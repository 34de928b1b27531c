//go:build cgo

package scenarios

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// fakeGPU is one GPU of a machine built from go-nvml's mock.
type fakeGPU struct {
	uuid, name string
	memory     uint64
	// mig lists the MIG instances the GPU is split into; MIG mode is on
	// when there are any.
	mig []fakeGPU
}

// fakeNVML answers the NVML calls the agent's hardware probe makes, for a
// machine with gpus; with none it is a machine without the NVIDIA driver.
func fakeNVML(gpus ...fakeGPU) *mock.Interface {
	if len(gpus) == 0 {
		return &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}
	}
	devs := make([]nvml.Device, len(gpus))
	for i, g := range gpus {
		devs[i] = fakeDevice(g)
	}
	return &mock.Interface{
		InitFunc:                       func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:                   func() nvml.Return { return nvml.SUCCESS },
		SystemGetDriverVersionFunc:     func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) { return 12040, nvml.SUCCESS },
		DeviceGetCountFunc:             func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i >= len(devs) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return devs[i], nvml.SUCCESS
		},
		EventSetCreateFunc: func() (nvml.EventSet, nvml.Return) { return nil, nvml.ERROR_NOT_SUPPORTED },
	}
}

func fakeDevice(g fakeGPU) *mock.Device {
	migs := make([]nvml.Device, len(g.mig))
	for i, m := range g.mig {
		migs[i] = &mock.Device{
			GetUUIDFunc:       func() (string, nvml.Return) { return m.uuid, nvml.SUCCESS },
			GetNameFunc:       func() (string, nvml.Return) { return m.name, nvml.SUCCESS },
			GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) { return nvml.Memory{Total: m.memory}, nvml.SUCCESS },
		}
	}
	mode := nvml.DEVICE_MIG_DISABLE
	if len(migs) > 0 {
		mode = nvml.DEVICE_MIG_ENABLE
	}
	return &mock.Device{
		GetUUIDFunc:    func() (string, nvml.Return) { return g.uuid, nvml.SUCCESS },
		GetNameFunc:    func() (string, nvml.Return) { return g.name, nvml.SUCCESS },
		GetPciInfoFunc: func() (nvml.PciInfo, nvml.Return) { return nvml.PciInfo{}, nvml.SUCCESS },
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			return nvml.Memory{Total: g.memory, Free: g.memory}, nvml.SUCCESS
		},
		GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) { return 8, 6, nvml.SUCCESS },
		GetEnforcedPowerLimitFunc:    func() (uint32, nvml.Return) { return 150000, nvml.SUCCESS },
		GetPowerUsageFunc:            func() (uint32, nvml.Return) { return 20000, nvml.SUCCESS },
		GetTemperatureFunc:           func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 40, nvml.SUCCESS },
		GetUtilizationRatesFunc:      func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.SUCCESS },
		GetTotalEccErrorsFunc: func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) {
			return 0, nvml.ERROR_NOT_SUPPORTED
		},
		// The agent's health monitor samples these too.
		GetClockInfoFunc:                    func(nvml.ClockType) (uint32, nvml.Return) { return 1410, nvml.SUCCESS },
		GetCurrentClocksThrottleReasonsFunc: func() (uint64, nvml.Return) { return 0, nvml.SUCCESS },
		GetMigModeFunc:                      func() (int, int, nvml.Return) { return mode, mode, nvml.SUCCESS },
		GetMaxMigDeviceCountFunc:            func() (int, nvml.Return) { return 7, nvml.SUCCESS },
		GetMigDeviceHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < len(migs) {
				return migs[i], nvml.SUCCESS
			}
			return nil, nvml.ERROR_NOT_FOUND
		},
	}
}

const gib = 1 << 30

// gpuUUID makes a GPU UUID that says which machine and slot it stands for.
func gpuUUID(machine, slot int) string {
	return fmt.Sprintf("GPU-%08d-0000-4000-8000-%012d", machine, slot)
}

// TestPlacementByGPUInventory deploys a model server that needs one GPU
// of at least 4 GiB to agents whose GPUs come from go-nvml's mock: none,
// one of 2 GiB, one of 8 GiB, two of 16 GiB, an A100 split into MIG
// instances, and a 2 GiB beside an 8 GiB. Only the nodes with a big enough
// whole GPU get the deployment, and `drover deploy plan` names every skip
// with the numbers. Each instance's server sees exactly the GPU it was
// allocated in CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES, one of at
// least 4 GiB. A new version then rolls out: the node with two GPUs starts
// it beside the old one on the other GPU, the nodes with one big GPU stop
// the old one first; across the whole run no GPU is held by two live
// servers, as their own start and stop records show.
func TestPlacementByGPUInventory(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	machines := map[string][]fakeGPU{
		"gpu-01": nil, // no NVIDIA driver
		"gpu-02": {{uuid: gpuUUID(2, 0), name: "NVIDIA T400", memory: 2 * gib}},
		"gpu-03": {{uuid: gpuUUID(3, 0), name: "NVIDIA RTX A4000", memory: 8 * gib}},
		"gpu-04": {
			{uuid: gpuUUID(4, 0), name: "NVIDIA RTX A4000", memory: 16 * gib},
			{uuid: gpuUUID(4, 1), name: "NVIDIA RTX A4000", memory: 16 * gib},
		},
		"gpu-05": {{uuid: gpuUUID(5, 0), name: "NVIDIA A100-PCIE-40GB", memory: 40 * gib, mig: []fakeGPU{
			{uuid: "MIG-00000005-0000-4000-8000-000000000001", name: "NVIDIA A100-PCIE-40GB MIG 3g.20gb", memory: 20 * gib},
			{uuid: "MIG-00000005-0000-4000-8000-000000000002", name: "NVIDIA A100-PCIE-40GB MIG 3g.20gb", memory: 20 * gib},
		}}},
		"gpu-06": {
			{uuid: gpuUUID(6, 0), name: "NVIDIA T400", memory: 2 * gib},
			{uuid: gpuUUID(6, 1), name: "NVIDIA RTX A4000", memory: 8 * gib},
		},
	}
	big := map[string]bool{} // whole GPUs of at least 4 GiB, by UUID
	for _, gs := range machines {
		for _, g := range gs {
			if len(g.mig) == 0 && g.memory >= 4*gib {
				big[g.uuid] = true
			}
		}
	}
	fleet := startReady(ctx, t, c, len(machines), cluster.AgentOptions{Prefix: "gpu", Configure: func(cfg *agent.Config) {
		cfg.NVML = fakeNVML(machines[cfg.Name]...)
	}})
	byName := map[string]*cluster.Agent{}
	for _, a := range fleet {
		byName[a.Name] = a
	}

	createModel(t, c.Client(c.Leader(), false), "web")
	setCLIEnv(t, c)
	addr := c.Nodes()[0].APIAddr()
	lives := filepath.Join(t.TempDir(), "lives.jsonl")
	pushFiles(ctx, t, addr, "web", map[string]string{"page.txt": "one"})
	spec := fmt.Sprintf(`name: web
model: web@prod
selector:
  hardware:
    min_gpu_memory: 4GiB
runtime:
  type: exec
  command: [%q]
  env: {%s: "1", %s: %q}
  health_path: /v1/health
  start_timeout: 20s
resources:
  gpus: 1
strategy:
  canary: 1
  max_parallel: 2
  max_unavailable_per_site: 3
  min_healthy_time: 1s
  progress_deadline: 1m
  auto_promote: true
`, os.Args[0], modelServerEnv, modelLogEnv, lives)
	file := deployFile(t, spec)

	// The plan, as the command line prints it: every skip with its numbers.
	out, errOut, code := drover(ctx, addr, "deploy", "plan", "-f", file)
	t.Logf("plan: exit %d\n%s%s", code, out, errOut)
	if code != 0 {
		t.Fatal("plan failed")
	}
	for _, want := range []string{
		"gpu-01 site-a no no GPU (NVML: no NVIDIA driver (NVML init: ERROR_LIBRARY_NOT_FOUND))",
		"gpu-02 site-a no GPU memory 2 GiB < required 4 GiB",
		"gpu-03 site-a yes -",
		"gpu-04 site-a yes -",
		"gpu-05 site-a no no whole GPU: all 1 are in MIG mode; set mig_profile to use their instances",
		"gpu-06 site-a yes -",
		"create; roll out to version 1 on 3 nodes in 2 batches (1 canary batch first); 3 nodes skipped",
	} {
		if !strings.Contains(spaced(out), want) {
			t.Errorf("the plan does not say %q", want)
		}
	}
	// The API says the same, node by node.
	plan, err := c.Client(c.Leader(), false).Deploys.PlanDeployment(ctx, connect.NewRequest(&droverv1.PlanDeploymentRequest{
		Spec: mustParseDeploy(t, ctx, addr, spec),
	}))
	if err != nil {
		t.Fatal(err)
	}
	matching := map[string]bool{"gpu-03": true, "gpu-04": true, "gpu-06": true}
	for _, n := range plan.Msg.GetNodes() {
		if n.GetMatches() != matching[n.GetNodeName()] || n.GetMatches() == (len(n.GetReasons()) > 0) {
			t.Errorf("plan: %s matches %v, reasons %q", n.GetNodeName(), n.GetMatches(), n.GetReasons())
		}
	}

	if out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", file); code != 0 {
		t.Fatalf("deploy apply: exit %d\n%s%s", code, out, errOut)
	}
	var served []*cluster.Agent
	for _, name := range slices.Sorted(maps.Keys(matching)) {
		served = append(served, byName[name])
	}
	waitServing(ctx, t, served, "web", "one")
	waitRollout(ctx, t, c, "web", 1, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED)

	// Only the matching nodes are assigned the deployment, and each
	// instance's server sees the GPU it was given, and only that one.
	checkGPUs := func(version string) map[string]string {
		t.Helper()
		d, err := c.Client(c.Leader(), false).Deploys.GetDeployment(ctx, connect.NewRequest(&droverv1.GetDeploymentRequest{Name: "web"}))
		if err != nil {
			t.Fatal(err)
		}
		assigned := map[string]bool{}
		reported := map[string][]string{}
		for _, n := range d.Msg.GetNodes() {
			assigned[n.GetNodeName()] = true
			reported[n.GetNodeName()] = n.GetStatus().GetGpus()
		}
		if len(assigned) != len(matching) {
			t.Errorf("assigned to %v, want %v", slices.Sorted(maps.Keys(assigned)), slices.Sorted(maps.Keys(matching)))
		}
		got := map[string]string{}
		for _, a := range served {
			var env modelEnv
			body, err := infer(ctx, a, "web", "env")
			if err == nil {
				err = json.Unmarshal([]byte(body), &env)
			}
			if err != nil {
				t.Fatalf("%s: /v1/env: %v", a.Name, err)
			}
			t.Logf("%s serves version %s with CUDA_VISIBLE_DEVICES=%s NVIDIA_VISIBLE_DEVICES=%s (reported %v)", a.Name, env.Version, env.CUDA, env.NVIDIA, reported[a.Name])
			onNode := slices.ContainsFunc(machines[a.Name], func(g fakeGPU) bool { return g.uuid == env.CUDA })
			if env.Version != version || !big[env.CUDA] || !onNode || env.NVIDIA != env.CUDA ||
				!slices.Equal(reported[a.Name], []string{env.CUDA}) {
				t.Errorf("%s: version %s sees CUDA_VISIBLE_DEVICES=%q NVIDIA_VISIBLE_DEVICES=%q, reported GPUs %v; want version %s on one of its GPUs of at least 4 GiB",
					a.Name, env.Version, env.CUDA, env.NVIDIA, reported[a.Name], version)
			}
			got[a.Name] = env.CUDA
		}
		return got
	}
	first := checkGPUs("1")

	// A new version: gpu-04 has a second big GPU and starts it beside the
	// old one; gpu-03 and gpu-06 have one big GPU each and must stop the
	// old instance first.
	pushFiles(ctx, t, addr, "web", map[string]string{"page.txt": "two"})
	waitServing(ctx, t, served, "web", "two")
	waitRollout(ctx, t, c, "web", 2, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	second := checkGPUs("2")
	if first["gpu-04"] == second["gpu-04"] {
		t.Errorf("gpu-04 ran version 2 on %s, the GPU version 1 had: it should have started beside it on its other GPU", second["gpu-04"])
	}
	for _, name := range []string{"gpu-03", "gpu-06"} {
		if first[name] != second[name] {
			t.Errorf("%s moved from GPU %s to %s; it has one GPU of 4 GiB or more", name, first[name], second[name])
		}
	}

	// Across the run, no GPU was ever held by two live servers.
	recs := readLives(t, lives)
	checkNoSharedGPU(t, recs)
	if starts := countEvents(recs, "start"); starts != 2*len(served) {
		t.Errorf("%d servers started, want %d (one per version per node)", starts, 2*len(served))
	}
}

// spaced collapses every run of spaces to one, so table rows compare
// whatever the column widths.
func spaced(s string) string {
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == ' ' }), " ")
}

// readLives reads a modelLogEnv file.
func readLives(t *testing.T, path string) []lifeRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []lifeRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r lifeRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v: %s", path, err, sc.Text())
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func countEvents(recs []lifeRecord, event string) int {
	n := 0
	for _, r := range recs {
		if r.Event == event {
			n++
		}
	}
	return n
}

// checkNoSharedGPU replays the servers' start and stop records in time
// order and fails if a GPU is ever handed to a server while another that
// was given it still runs. A server's "stop" is written when it is told
// to stop, before it exits, and its successor's "start" once that one
// runs, so an overlap in the records is an overlap in fact.
func checkNoSharedGPU(t *testing.T, recs []lifeRecord) {
	t.Helper()
	slices.SortStableFunc(recs, func(a, b lifeRecord) int { return a.Time.Compare(b.Time) })
	holder := map[string]int{} // GPU UUID → pid of the live server given it
	for _, r := range recs {
		if r.CUDA == "" || r.CUDA == "-1" {
			continue
		}
		for _, u := range strings.Split(r.CUDA, ",") {
			switch r.Event {
			case "start":
				if pid, ok := holder[u]; ok {
					t.Errorf("GPU %s given to server %d (version %s) at %s while server %d still runs on it",
						u, r.PID, r.Version, r.Time.Format(time.RFC3339Nano), pid)
				}
				holder[u] = r.PID
			case "stop":
				if holder[u] == r.PID {
					delete(holder, u)
				}
			}
		}
	}
}
