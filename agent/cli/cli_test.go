package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/agent/agenttest"
	"github.com/droverhq/drover/hwprobe"
	"github.com/droverhq/drover/internal/buildinfo"
	"github.com/droverhq/drover/internal/protoout"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// runCLI runs the command line with env as the whole environment.
func runCLI(t *testing.T, ctx context.Context, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	lookup := func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}
	code = run(ctx, args, &out, &errOut, lookup)
	return code, out.String(), errOut.String()
}

// probe -o json speaks the API's JSON, as drover -o json does: the
// NodeInventory message in protojson, lowerCamelCase names.
func TestProbeJSON(t *testing.T) {
	code, out, errOut := runCLI(t, context.Background(), nil, "probe", "-o", "json", "--data-dir", t.TempDir())
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var inv droverv1.NodeInventory
	if err := protojson.Unmarshal([]byte(out), &inv); err != nil {
		t.Fatalf("probe -o json is not a NodeInventory in protojson: %v\n%s", err, out)
	}
	if inv.GetHost().GetArch() == "" || inv.GetHost().GetHostname() == "" {
		t.Errorf("no host section in %s", out)
	}
	if len(inv.GetDisks()) != 1 {
		t.Errorf("disks %v, want the data directory's", inv.GetDisks())
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw["gpuProbe"]; !ok {
		t.Errorf("no lowerCamelCase gpuProbe in %s", out)
	}
	if strings.Contains(out, `_bytes"`) {
		t.Errorf("snake_case field names in %s", out)
	}
}

// The JSON of a known inventory names its fields as the API does.
func TestInventoryJSON(t *testing.T) {
	var b bytes.Buffer
	inv := &hwprobe.Inventory{
		Host:   hwprobe.Host{Hostname: "dgx-01", Arch: "amd64"},
		Memory: hwprobe.Memory{TotalBytes: 2 << 40},
		GPUs:   []hwprobe.GPU{{Index: 0, UUID: "GPU-a", Name: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 << 30, ComputeCapability: "9.0"}},
	}
	if err := protoout.WriteJSON(&b, agent.InventoryProto(inv)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"memoryTotalBytes": "85899345920"`, `"computeCapability": "9.0"`, `"totalBytes": "2199023255552"`, `"hostname": "dgx-01"`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("inventory JSON lacks %s:\n%s", want, b.String())
		}
	}
}

func TestProbeTable(t *testing.T) {
	code, out, errOut := runCLI(t, context.Background(), nil, "probe", "--data-dir", t.TempDir())
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, row := range []string{"Host ", "CPU ", "Memory ", "Disk ", "Limits ", "Board ", "GPUs "} {
		if !strings.Contains(out, "\n"+row) && !strings.HasPrefix(out, row) {
			t.Errorf("no %q row in\n%s", row, out)
		}
	}
}

func TestInventoryTable(t *testing.T) {
	inv := &hwprobe.Inventory{
		Host:      hwprobe.Host{Hostname: "dgx-01", OS: "Ubuntu 22.04.4 LTS", Kernel: "5.15.0", Arch: "amd64"},
		CPU:       hwprobe.CPU{Model: "Intel Xeon Platinum 8480+", Sockets: 2, Cores: 112, Threads: 224, MHz: 3800},
		Memory:    hwprobe.Memory{TotalBytes: 2 << 40, AvailableBytes: 1 << 40},
		Disks:     []hwprobe.Disk{{Path: "/var/lib/drover-agent", MountPoint: "/", FSType: "xfs", TotalBytes: 4 << 40, FreeBytes: 3 << 40}},
		Container: hwprobe.ContainerLimits{CgroupVersion: 2, CgroupPath: "/kubepods.slice/pod1", CPUQuota: 8, MemoryMaxBytes: 64 << 30},
		GPUProbe:  hwprobe.GPUProbe{Available: true, DriverVersion: "550.54.15", CUDADriverVersion: "12.4"},
		GPUs: []hwprobe.GPU{
			{Index: 0, UUID: "GPU-a", Name: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 << 30, ComputeCapability: "9.0", MIG: &hwprobe.MIGMode{Current: true, Pending: true}},
			{Index: 1, UUID: "GPU-b", Name: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 << 30, ComputeCapability: "9.0", MIG: &hwprobe.MIGMode{Current: false, Pending: true}},
			{Index: 0, UUID: "MIG-c", Name: "NVIDIA H100 80GB HBM3 MIG 3g.40gb", MemoryTotalBytes: 40 << 30, ParentUUID: "GPU-a"},
		},
		Warnings: []hwprobe.Warning{{Probe: "gpu", Message: "GPU 2: skipped"}},
	}
	var b bytes.Buffer
	if err := printInventory(&b, inv); err != nil {
		t.Fatal(err)
	}
	// Compare with runs of spaces collapsed: the column widths are the
	// tabwriter's business.
	out := strings.Join(strings.Fields(strings.ReplaceAll(b.String(), "\n", " | ")), " ")
	for _, want := range []string{
		"dgx-01 · Ubuntu 22.04.4 LTS · kernel 5.15.0 · amd64",
		"2 sockets, 112 cores, 224 threads · 3800 MHz",
		"2.0 TiB (1.0 TiB available)",
		"/var/lib/drover-agent: 3.0 TiB free of 4.0 TiB (xfs on /)",
		"cgroup v2 /kubepods.slice/pod1: 8 CPUs, 64.0 GiB memory",
		"GPUs 2 · NVIDIA driver 550.54.15 · CUDA 12.4",
		"INDEX NAME MEMORY COMPUTE MIG UUID",
		"0 NVIDIA H100 80GB HBM3 80.0 GiB 9.0 on GPU-a",
		"1 NVIDIA H100 80GB HBM3 80.0 GiB 9.0 off (on after reset) GPU-b",
		"instance of GPU-a",
		"gpu: GPU 2: skipped",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}

	b.Reset()
	if err := printInventory(&b, &hwprobe.Inventory{GPUProbe: hwprobe.GPUProbe{Reason: "built without cgo: NVML unavailable"}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "none: built without cgo") {
		t.Errorf("table without GPUs does not say why:\n%s", b.String())
	}
}

func TestHelp(t *testing.T) {
	code, out, _ := runCLI(t, context.Background(), nil, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"DROVER_TOKEN", "drover token create", "--server 10.0.0.5:7400", "drover-agent probe -o json", "identity.json", "SIGTERM",
		"--gossip-addr off", `"" or "off" turns the pool off`, "--gossip-advertise"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	code, out, _ = runCLI(t, context.Background(), nil, "probe", "--help")
	if code != 0 || !strings.Contains(out, "without cgo") || !strings.Contains(out, "--root /host") {
		t.Errorf("probe --help: exit %d\n%s", code, out)
	}
}

// `drover-agent version` and `--version` say which build this is, and
// start no agent.
func TestVersion(t *testing.T) {
	info := buildinfo.Read()
	want := "drover-agent " + info.String() + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, out, errOut := runCLI(t, context.Background(), map[string]string{}, args...)
		if code != exitOK || out != want || errOut != "" {
			t.Errorf("drover-agent %s: exit %d, %q, stderr %q; want %q", strings.Join(args, " "), code, out, errOut, want)
		}
	}
	if !strings.Contains(want, info.GoVersion) || !strings.Contains(want, "commit ") {
		t.Errorf("version line %q lacks the commit or Go version", want)
	}
	if code, _, errOut := runCLI(t, context.Background(), map[string]string{}, "version", "extra"); code != exitUsage {
		t.Errorf("version extra: exit %d, stderr %q", code, errOut)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"prob"}, `did you mean "probe"`},
		{[]string{"--label", "gpu"}, `--label "gpu": want KEY=VALUE`},
		{[]string{"--server", "10.0.0.5"}, `--server "10.0.0.5": want HOST:PORT`},
		{[]string{"--token", "not-a-token", "--server", "a:1"}, "--token (or DROVER_TOKEN)"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--log-format", "xml"}, "--log-format"},
		{[]string{"--name", "Bad Name"}, "--name"},
		{[]string{"--gossip-addr", "gpu-01:7947"}, `--gossip-addr "gpu-01:7947"`},
		{[]string{"--gossip-addr", "off", "--gossip-advertise", "10.0.0.7:7947"}, "--gossip-advertise"},
		{[]string{"--gossip-advertise", "10.0.0.7"}, `--gossip-advertise "10.0.0.7": want IP:PORT`},
		{[]string{"--nope"}, "unknown flag: --nope"},
		{[]string{"probe", "-o", "yaml"}, "-o yaml: want table or json"},
		{[]string{"probe", "extra"}, `unexpected argument "extra"`},
	} {
		code, _, errOut := runCLI(t, context.Background(), map[string]string{}, tt.args...)
		if code != exitUsage || !strings.Contains(errOut, tt.want) || !strings.Contains(errOut, "Usage: ") {
			t.Errorf("%v: exit %d, stderr:\n%s\nwant exit 2 with %q and the usage", tt.args, code, errOut, tt.want)
		}
	}
}

// DROVER_TOKEN is also where the drover CLI keeps an operator token; the
// agent says so rather than failing to parse it.
func TestOperatorTokenInEnv(t *testing.T) {
	code, _, errOut := runCLI(t, context.Background(), map[string]string{envToken: "5f0c1e9a-operator-token"}, "--data-dir", t.TempDir())
	if code != exitUsage || !strings.Contains(errOut, "DROVER_TOKEN does not hold a join token") || strings.Contains(errOut, "5f0c1e9a") {
		t.Errorf("exit %d, stderr:\n%s", code, errOut)
	}
}

func TestNotEnrolled(t *testing.T) {
	code, _, errOut := runCLI(t, context.Background(), nil, "--data-dir", t.TempDir(), "--name", "n1")
	if code != exitError || !strings.Contains(errOut, "Error: no identity") || !strings.Contains(errOut, "Hint: ") {
		t.Errorf("exit %d, stderr:\n%s\nwant exit 1 with an error and a hint", code, errOut)
	}
}

// The agent takes its token from DROVER_TOKEN, enrolls, heartbeats, and
// exits 0 when its context ends (as on SIGTERM).
func TestRunWithTokenFromEnv(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		code           int
		stdout, stderr string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errOut := runCLI(t, ctx, map[string]string{envToken: c.NewToken()},
			"--server", c.Addrs()[0], "--data-dir", dir, "--name", "edge-7", "--label", "board=orin", "--site", "lab", "--log-level", "debug",
			"--gossip-addr", "127.0.0.1:0")
		done <- result{code, out, errOut}
	}()
	c.WaitForCalls(agenttest.Heartbeat, 1)
	cancel()
	r := <-done
	if r.code != 0 {
		t.Fatalf("exit %d after cancel, stderr:\n%s", r.code, r.stderr)
	}
	enroll := c.Nodes()
	if len(enroll) != 1 || enroll[0].Name != "edge-7" || enroll[0].Labels["board"] != "orin" || enroll[0].Site != "lab" {
		t.Errorf("enrolled %+v", enroll)
	}
	if _, err := os.Stat(filepath.Join(dir, agent.IdentityFile)); err != nil {
		t.Error(err)
	}
	if !strings.Contains(r.stderr, "drover-agent stopped") {
		t.Errorf("no clean stop in the log:\n%s", r.stderr)
	}
	// It had a pool, told the control plane where, and left it on the way out.
	if enroll[0].GossipAddr == "" || !strings.HasPrefix(enroll[0].GossipAddr, "127.0.0.1:") {
		t.Errorf("registered gossip address %q, want one on 127.0.0.1", enroll[0].GossipAddr)
	}
	if !strings.Contains(r.stderr, "site gossip pool stopped") {
		t.Errorf("the site gossip pool did not stop:\n%s", r.stderr)
	}

	// "off" turns the pool off: the node registers no gossip address.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() {
		code, out, errOut := runCLI(t, ctx, nil, "--data-dir", dir, "--gossip-addr", "off")
		done <- result{code, out, errOut}
	}()
	c.WaitForCalls(agenttest.Register, 2)
	cancel()
	if r := <-done; r.code != 0 || !strings.Contains(r.stderr, "site gossip pool off") {
		t.Fatalf("exit %d with --gossip-addr off, stderr:\n%s", r.code, r.stderr)
	}
	if n := c.Nodes(); n[0].GossipAddr != "" {
		t.Errorf("with --gossip-addr off the node registered gossip address %q", n[0].GossipAddr)
	}
}
