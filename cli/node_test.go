package cli

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

const (
	ready        = droverv1.NodeStatus_NODE_STATUS_READY
	down         = droverv1.NodeStatus_NODE_STATUS_DOWN
	initializing = droverv1.NodeStatus_NODE_STATUS_INITIALIZING
)

// testNodes is a small fleet: a draining GPU server, a revoked edge board
// that is down, a server with MIG, and a node that has not registered yet.
func testNodes() []*droverv1.Node {
	ago := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(testNow.Add(-d)) }
	var h100s []*droverv1.GPUInfo
	for i := range 8 {
		h100s = append(h100s, &droverv1.GPUInfo{
			Index: uint32(i), Uuid: fmt.Sprintf("GPU-a1b2c3d4-000%d", i), Name: "NVIDIA H100 80GB HBM3",
			MemoryTotalBytes: 81559 << 20, ComputeCapability: "9.0",
		})
	}
	return []*droverv1.Node{
		{
			Id: "3f9a2c7e41d04b8e", Name: "gpu-01", Labels: map[string]string{"pool": "training", "zone": "b"},
			Site: "dc-west", GossipAddr: "10.0.4.11:7947", Status: ready, Draining: true, AgentVersion: "0.4.1", TokenId: "tok1",
			EnrollTime: ago(3 * time.Hour), CreateIndex: 5, ModifyIndex: 9,
			History: []*droverv1.NodeStatusChange{
				{Status: initializing, Time: ago(3 * time.Hour), Reason: `enrolled with join token "tok1"`, Index: 5},
				{Status: ready, Time: ago(3*time.Hour - 10*time.Second), Reason: "registered", Index: 6},
				{Status: down, Time: ago(2 * time.Hour), Reason: "missed heartbeat TTL", Index: 7},
				{Status: ready, Time: ago(90 * time.Minute), Reason: "heartbeat resumed", Index: 8},
			},
			Inventory: &droverv1.NodeInventory{
				Host: &droverv1.HostInfo{Hostname: "gpu-01.dc-west", Os: "Ubuntu 22.04.4 LTS", OsId: "ubuntu",
					OsVersion: "22.04", Kernel: "6.5.0-35-generic", Arch: "amd64", BootId: "0c5d9f1e"},
				Cpu: &droverv1.CPUInfo{Model: "AMD EPYC 9454 48-Core Processor", Vendor: "AuthenticAMD",
					Sockets: 2, Cores: 96, Threads: 192, Mhz: 2750, Flags: []string{"avx2", "avx512f", "sse4_2"}},
				Memory:   &droverv1.MemoryInfo{TotalBytes: 1536 << 30, AvailableBytes: 1400 << 30},
				Disks:    []*droverv1.DiskInfo{{Path: "/dev/nvme0n1p2", MountPoint: "/", FsType: "ext4", TotalBytes: 7 << 39, FreeBytes: 3 << 40}},
				GpuProbe: &droverv1.GPUProbe{Available: true, DriverVersion: "550.54.15", CudaDriverVersion: "12.4"},
				Gpus:     h100s,
			},
		},
		{
			Id: "b71c09d2aa5e4f10", Name: "edge-7", Site: "edge-eu", Status: down, Revoked: true,
			AgentVersion: "0.4.0", TokenId: "tok2", EnrollTime: ago(50 * time.Hour), CreateIndex: 3, ModifyIndex: 12,
			History: []*droverv1.NodeStatusChange{
				{Status: ready, Time: ago(49 * time.Hour), Reason: "registered", Index: 4},
				{Status: down, Time: ago(30 * time.Minute), Reason: "missed heartbeat TTL", Index: 11},
			},
			Inventory: &droverv1.NodeInventory{
				Host:   &droverv1.HostInfo{Hostname: "edge-7", OsId: "ubuntu", OsVersion: "22.04", Arch: "arm64"},
				Cpu:    &droverv1.CPUInfo{Model: "ARMv8 Processor rev 1 (v8l)", Sockets: 1, Cores: 6, Threads: 6},
				Memory: &droverv1.MemoryInfo{TotalBytes: 7800 << 20},
				Container: &droverv1.ContainerLimits{CgroupVersion: 2, CgroupPath: "/system.slice/drover-agent.service",
					CpuQuota: 2.5, MemoryMaxBytes: 4 << 30},
				Board:    &droverv1.BoardInfo{Model: "NVIDIA Jetson Orin Nano Developer Kit", Family: "jetson", L4TRelease: "36.2.0"},
				GpuProbe: &droverv1.GPUProbe{Reason: "NVML unavailable: libnvidia-ml.so.1: cannot open shared object file"},
				Warnings: []string{"disk /data: permission denied"},
			},
		},
		{
			Id: "c0ffee0011223344", Name: "gpu-02", Labels: map[string]string{"pool": "inference"}, Site: "dc-west",
			Status: ready, EnrollTime: ago(26 * time.Hour),
			History: []*droverv1.NodeStatusChange{{Status: ready, Time: ago(26 * time.Hour), Reason: "registered"}},
			Inventory: &droverv1.NodeInventory{
				Cpu:    &droverv1.CPUInfo{Threads: 64},
				Memory: &droverv1.MemoryInfo{TotalBytes: 512 << 30},
				Gpus: []*droverv1.GPUInfo{
					{Index: 0, Uuid: "GPU-aaaa", Name: "NVIDIA A100-SXM4-40GB", MemoryTotalBytes: 40 << 30, ComputeCapability: "8.0", MigEnabled: true},
					{Index: 0, Uuid: "MIG-bbbb", Name: "NVIDIA A100-SXM4-40GB MIG 3g.20gb", MemoryTotalBytes: 20 << 30, ParentUuid: "GPU-aaaa"},
					{Index: 1, Uuid: "GPU-cccc", Name: "NVIDIA A100-SXM4-40GB", MemoryTotalBytes: 40 << 30, ComputeCapability: "8.0", MigPending: true},
					{Index: 2, Uuid: "GPU-dddd", Name: "Tesla T4", MemoryTotalBytes: 15 << 30, ComputeCapability: "7.5"},
				},
			},
		},
		{
			Id: "d00d", Name: "new-1", Status: initializing, EnrollTime: ago(10 * time.Second),
			History: []*droverv1.NodeStatusChange{{Status: initializing, Time: ago(10 * time.Second), Reason: `enrolled with join token "tok1"`}},
		},
	}
}

func newNodeHarness(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t)
	h.fake.addNodes(testNodes()...)
	return h
}

func TestNodeList(t *testing.T) {
	t.Parallel()
	h := newNodeHarness(t)
	got := h.ok("node", "ls")
	// SINCE is the time in the current status, AGE since enrollment.
	want := `NAME    ID        STATUS           SINCE  SITE     GPUS                            CPU  MEMORY     AGE  LABELS
edge-7  b71c09d2  down, revoked    30m    edge-eu  -                               6    7.6 GiB    2d   -
gpu-01  3f9a2c7e  ready, draining  1h     dc-west  8× H100 80GB HBM3               192  1.5 TiB    3h   pool=training, zone=b
gpu-02  c0ffee00  ready            26h    dc-west  2× A100-SXM4-40GB, 1× Tesla T4  64   512.0 GiB  26h  pool=inference
new-1   d00d      initializing     10s    -        -                               -    -          10s  -
`
	if got != want {
		t.Errorf("node ls:\n%s\nwant:\n%s", got, want)
	}
	if h.fake.lastListNodes.GetOptions() != nil {
		t.Errorf("a plain node ls sent query options %v", h.fake.lastListNodes.GetOptions())
	}

	var list droverv1.ListNodesResponse
	js := h.ok("node", "ls", "-o", "json")
	if err := protojson.Unmarshal([]byte(js), &list); err != nil || len(list.GetNodes()) != 4 {
		t.Fatalf("node ls -o json: %v\n%s", err, js)
	}
	wantContains(t, js, `"id": "3f9a2c7e41d04b8e"`, `"status": "NODE_STATUS_READY"`, `"memoryTotalBytes": "85520809984"`)
}

func TestNodeListFilters(t *testing.T) {
	t.Parallel()
	h := newNodeHarness(t)
	out := h.ok("node", "ls", "--label", "pool=training", "--label", "zone=b", "--site", "dc-west",
		"--status", "ready", "--gpu-model", "h100", "--min-gpu-memory", "80G", "--stale", "--index", "12", "--wait", "30s")
	want := &droverv1.ListNodesRequest{
		Labels: map[string]string{"pool": "training", "zone": "b"}, Site: "dc-west", Status: ready,
		GpuModel: "h100", MinGpuMemoryBytes: 80e9,
	}
	got := h.fake.lastListNodes
	if !maps.Equal(got.GetLabels(), want.Labels) || got.GetSite() != want.Site || got.GetStatus() != want.Status ||
		got.GetGpuModel() != want.GpuModel || got.GetMinGpuMemoryBytes() != want.MinGpuMemoryBytes ||
		got.GetOptions().GetMinIndex() != 12 || got.GetOptions().GetMaxWait().AsDuration() != 30*time.Second {
		t.Errorf("ListNodes request = %v, want %v with min_index 12, max_wait 30s", got, want)
	}
	reqs := h.fake.recordedRequests()
	if s := reqs[len(reqs)-1].header.Get(headerConsistency); s != consistencyStale {
		t.Errorf("--stale sent %s %q", headerConsistency, s)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[1], "gpu-01 ") {
		t.Errorf("filtered node ls:\n%s", out)
	}

	// An H100 "80GB" has less than 80 GiB: 80G finds it, 80GiB does not.
	h.ok("node", "ls", "--min-gpu-memory", "80GiB")
	if n := h.fake.lastListNodes.GetMinGpuMemoryBytes(); n != 80<<30 {
		t.Errorf("--min-gpu-memory 80GiB sent %d", n)
	}
	for _, tt := range []struct {
		args  []string
		names []string
	}{
		{[]string{"--status", "DOWN"}, []string{"edge-7"}},
		{[]string{"--status", "initializing"}, []string{"new-1"}},
		{[]string{"--gpu-model", "a100", "--min-gpu-memory", "40GiB"}, []string{"gpu-02"}},
		{[]string{"--min-gpu-memory", "80GiB"}, nil},
		{[]string{"--min-gpu-memory", "512MiB"}, []string{"gpu-01", "gpu-02"}},
		{[]string{"--site", "dc-west", "--label", "pool=inference"}, []string{"gpu-02"}},
	} {
		var list droverv1.ListNodesResponse
		if err := protojson.Unmarshal([]byte(h.ok(append([]string{"node", "ls", "-o", "json"}, tt.args...)...)), &list); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, n := range list.GetNodes() {
			names = append(names, n.GetName())
		}
		slices.Sort(names)
		if !slices.Equal(names, tt.names) {
			t.Errorf("node ls %s = %q, want %q", strings.Join(tt.args, " "), names, tt.names)
		}
	}
}

func TestNodeShow(t *testing.T) {
	t.Parallel()
	h := newNodeHarness(t)
	got := h.ok("node", "show", "gpu-01")
	want := `Name:           gpu-01
ID:             3f9a2c7e41d04b8e
Status:         ready, draining since 2026-03-01T10:30:00Z (1h ago)
Site:           dc-west
Site pool:      10.0.4.11:7947
Labels:         pool=training, zone=b
Agent version:  0.4.1
Enrolled:       2026-03-01T09:00:00Z (3h ago) with join token tok1
Index:          created 5, modified 9
Draining: it keeps what it runs but gets nothing new; resume with ` + "`drover node undrain gpu-01`" + `.

Hostname:   gpu-01.dc-west
OS:         Ubuntu 22.04.4 LTS
Kernel:     6.5.0-35-generic
Arch:       amd64
Boot ID:    0c5d9f1e
CPU:        AMD EPYC 9454 48-Core Processor; 2 sockets, 96 cores, 192 threads; 2750 MHz
CPU flags:  avx2 avx512f sse4_2
Memory:     1.5 TiB (1.4 TiB available at registration)
GPU probe:  NVML available, driver 550.54.15, CUDA 12.4

DISK            MOUNT  FS    SIZE     FREE
/dev/nvme0n1p2  /      ext4  3.5 TiB  3.0 TiB

GPU  NAME                   MEMORY    COMPUTE  MIG  UUID
0    NVIDIA H100 80GB HBM3  79.6 GiB  9.0      off  GPU-a1b2c3d4-0000
1    NVIDIA H100 80GB HBM3  79.6 GiB  9.0      off  GPU-a1b2c3d4-0001
2    NVIDIA H100 80GB HBM3  79.6 GiB  9.0      off  GPU-a1b2c3d4-0002
3    NVIDIA H100 80GB HBM3  79.6 GiB  9.0      off  GPU-a1b2c3d4-0003
4    NVIDIA H100 80GB HBM3  79.6 GiB  9.0      off  GPU-a1b2c3d4-0004
5    NVIDIA H100 80GB HBM3  79.6 GiB  9.0      off  GPU-a1b2c3d4-0005
6    NVIDIA H100 80GB HBM3  79.6 GiB  9.0      off  GPU-a1b2c3d4-0006
7    NVIDIA H100 80GB HBM3  79.6 GiB  9.0      off  GPU-a1b2c3d4-0007

TIME                  STATUS        REASON
2026-03-01T09:00:00Z  initializing  enrolled with join token "tok1"
2026-03-01T09:00:10Z  ready         registered
2026-03-01T10:00:00Z  down          missed heartbeat TTL
2026-03-01T10:30:00Z  ready         heartbeat resumed
`
	if got != want {
		t.Errorf("node show gpu-01:\n%s\nwant:\n%s", got, want)
	}

	// By ID; an edge board without GPUs, in a container, revoked.
	edge := squeeze(h.ok("node", "show", "b71c09d2aa5e4f10"))
	wantContains(t, edge,
		"Name: edge-7\n",
		"Status: down, revoked since 2026-03-01T11:30:00Z (30m ago)\n",
		"Revoked: the node's identity is refused; it comes back only by enrolling again with a new join token.\n",
		"OS: ubuntu 22.04\n",
		"CPU: ARMv8 Processor rev 1 (v8l); 1 socket, 6 cores, 6 threads\n",
		"Memory: 7.6 GiB\n",
		"Container: cgroup v2 /system.slice/drover-agent.service; CPU quota 2.5, memory limit 4.0 GiB\n",
		"Board: NVIDIA Jetson Orin Nano Developer Kit (jetson, L4T 36.2.0)\n",
		"GPU probe: no GPUs: NVML unavailable: libnvidia-ml.so.1: cannot open shared object file\n",
		"Warning: disk /data: permission denied\n")
	if strings.Contains(edge, "GPU NAME") || strings.Contains(edge, "DISK") {
		t.Errorf("tables without rows:\n%s", edge)
	}

	mig := h.ok("node", "show", "gpu-02")
	wantContains(t, mig,
		"GPU  NAME                               MEMORY    COMPUTE  MIG                   UUID\n"+
			"0    NVIDIA A100-SXM4-40GB              40.0 GiB  8.0      on                    GPU-aaaa\n"+
			"0    NVIDIA A100-SXM4-40GB MIG 3g.20gb  20.0 GiB  -        instance of GPU-aaaa  MIG-bbbb\n")
	wantContains(t, squeeze(mig), "1 NVIDIA A100-SXM4-40GB 40.0 GiB 8.0 off, change pending GPU-cccc\n")

	wantContains(t, h.ok("node", "show", "new-1"), "No hardware inventory yet: the agent has not registered.\n")

	var resp droverv1.GetNodeResponse
	js := h.ok("node", "show", "gpu-01", "-o", "json")
	if err := protojson.Unmarshal([]byte(js), &resp); err != nil || len(resp.GetNode().GetInventory().GetGpus()) != 8 {
		t.Errorf("node show -o json: %v\n%s", err, js)
	}

	r := h.run("node", "show", "gpu-99")
	if want := "Error: node \"gpu-99\" not found\nHint: list nodes with `drover node ls`\n"; r.code != exitError || r.stderr != want || r.stdout != "" {
		t.Errorf("show of an unknown node: %+v", r)
	}
}

func TestNodeDrain(t *testing.T) {
	t.Parallel()
	h := newNodeHarness(t)
	wantContains(t, h.ok("node", "drain", "gpu-02"), "Node gpu-02 is draining: it keeps what it runs and gets nothing new (index 1)")
	wantContains(t, h.ok("node", "ls", "--site", "dc-west"), "gpu-02  c0ffee00  ready, draining")
	wantContains(t, h.ok("node", "undrain", "c0ffee0011223344"), "Node gpu-02 is no longer draining: it may get new work (index 2)")

	var resp droverv1.DrainNodeResponse
	if err := protojson.Unmarshal([]byte(h.ok("node", "drain", "gpu-01", "-o", "json")), &resp); err != nil ||
		!resp.GetNode().GetDraining() || resp.GetMeta().GetIndex() != 3 {
		t.Errorf("node drain -o json: %v, %v", err, &resp)
	}
	if r := h.run("node", "undrain", "nope"); r.code != exitError || !strings.Contains(r.stderr, `node "nope" not found`) {
		t.Errorf("undrain of an unknown node: %+v", r)
	}
}

func TestNodeLabel(t *testing.T) {
	t.Parallel()
	h := newNodeHarness(t)
	out := h.ok("node", "label", "gpu-01", "pool=inference", "rack=r12", "--remove", "zone", "--remove", "absent")
	if want := "Labels of node gpu-01 (index 1): pool=inference, rack=r12\n"; out != want {
		t.Errorf("node label = %q, want %q", out, want)
	}
	req := h.fake.lastLabelNode
	if req.GetNode() != "gpu-01" || !maps.Equal(req.GetSet(), map[string]string{"pool": "inference", "rack": "r12"}) ||
		!slices.Equal(req.GetRemove(), []string{"zone", "absent"}) {
		t.Errorf("LabelNode request = %v", req)
	}
	wantContains(t, h.ok("node", "label", "gpu-01", "--remove", "pool", "--remove", "rack"), "Node gpu-01 has no labels now (index 2)")

	var resp droverv1.LabelNodeResponse
	if err := protojson.Unmarshal([]byte(h.ok("node", "label", "gpu-01", "a=1", "-o", "json")), &resp); err != nil ||
		resp.GetNode().GetLabels()["a"] != "1" {
		t.Errorf("node label -o json: %v, %v", err, &resp)
	}

	n := len(h.fake.recordedRequests())
	for _, args := range [][]string{
		{"node", "label", "gpu-01"},
		{"node", "label", "gpu-01", "pool"},
		{"node", "label", "gpu-01", "a=1", "--remove", "a"},
	} {
		if r := h.run(args...); r.code != exitUsage {
			t.Errorf("drover %s: exit %d, want %d", strings.Join(args, " "), r.code, exitUsage)
		}
	}
	if got := len(h.fake.recordedRequests()); got != n {
		t.Errorf("label argument errors sent %d requests", got-n)
	}
}

func TestNodeRevoke(t *testing.T) {
	t.Parallel()
	h := newNodeHarness(t)

	// A terminal asks, naming the machine; anything but yes cancels.
	h.terminal, h.stdin = true, "n\n"
	r := h.run("node", "revoke", "gpu-02")
	if r.code != exitError || !strings.Contains(r.stderr,
		"Revoke node gpu-02 (ID c0ffee0011223344, ready)? Its agent's next call will fail and it will not enroll again by itself. [y/N] ") ||
		!strings.Contains(r.stderr, "Error: revoke cancelled; the node is unchanged\n") {
		t.Errorf("declined revoke: %+v", r)
	}
	h.stdin = ""
	if r := h.run("node", "revoke", "gpu-02"); r.code != exitError || !strings.Contains(r.stderr, "revoke cancelled") {
		t.Errorf("revoke answered by end of input: %+v", r)
	}
	if len(h.fake.revokedNodes) != 0 {
		t.Fatalf("revoked although the operator did not say yes: %q", h.fake.revokedNodes)
	}

	h.stdin = "y\n"
	r = h.run("node", "revoke", "gpu-02")
	if r.code != 0 || !strings.Contains(r.stderr, "[y/N]") {
		t.Errorf("confirmed revoke: %+v", r)
	}
	wantContains(t, r.stdout, "Revoked node gpu-02 (index 1). Its agent's next call will fail; to bring the machine back, enroll its agent again with a new join token.")

	// An unknown node fails before anyone is asked.
	h.stdin = "y\n"
	r = h.run("node", "revoke", "gpu-99")
	if r.code != exitError || strings.Contains(r.stderr, "[y/N]") || !strings.Contains(r.stderr, `node "gpu-99" not found`) {
		t.Errorf("revoke of an unknown node: %+v", r)
	}

	// --yes on a terminal, and a script (stdin not a terminal): no question.
	h.stdin = ""
	r = h.run("node", "revoke", "--yes", "gpu-01")
	if r.code != 0 || strings.Contains(r.stderr, "[y/N]") {
		t.Errorf("revoke --yes: %+v", r)
	}
	h.terminal = false
	r = h.run("node", "revoke", "new-1", "-o", "json")
	var resp droverv1.RevokeNodeResponse
	if r.code != 0 || r.stderr != "" || protojson.Unmarshal([]byte(r.stdout), &resp) != nil || resp.GetMeta().GetIndex() != 3 {
		t.Errorf("revoke from a script: %+v", r)
	}
	if want := []string{"gpu-02", "gpu-01", "new-1"}; !slices.Equal(h.fake.revokedNodes, want) {
		t.Errorf("RevokeNode calls = %q, want %q", h.fake.revokedNodes, want)
	}
	wantContains(t, h.ok("node", "ls", "--site", "dc-west"), "gpu-01  3f9a2c7e  ready, draining, revoked", "gpu-02  c0ffee00  ready, revoked")
}

func TestGPUSummary(t *testing.T) {
	t.Parallel()
	gpu := func(name, parent string) *droverv1.GPUInfo { return &droverv1.GPUInfo{Name: name, ParentUuid: parent} }
	tests := []struct {
		gpus []*droverv1.GPUInfo
		want string
	}{
		{nil, "-"},
		{[]*droverv1.GPUInfo{gpu("NVIDIA H100 80GB HBM3", ""), gpu("NVIDIA H100 80GB HBM3", "")}, "2× H100 80GB HBM3"},
		{[]*droverv1.GPUInfo{gpu("Tesla T4", ""), gpu("NVIDIA L4", ""), gpu("Tesla T4", "")}, "2× Tesla T4, 1× L4"},
		{[]*droverv1.GPUInfo{gpu("NVIDIA A100", ""), gpu("NVIDIA A100 MIG 1g.10gb", "GPU-1")}, "1× A100"},
		{[]*droverv1.GPUInfo{gpu("", "")}, "1× GPU"},
	}
	for _, tt := range tests {
		if got := gpuSummary(tt.gpus); got != tt.want {
			t.Errorf("gpuSummary(%v) = %q, want %q", tt.gpus, got, tt.want)
		}
	}
}

// A node that cordoned itself says why in show and ls, and uncordon
// clears it.
func TestNodeCordonedAndUncordon(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.fake.addNodes(&droverv1.Node{
		Id: "beef00112233", Name: "gpu-09", Site: "dc-west", Status: droverv1.NodeStatus_NODE_STATUS_READY,
		Cordoned: true, CordonReason: "gpu_xid on GPU-b: Xid 79: GPU has fallen off the bus",
		Conditions: []*droverv1.NodeCondition{{
			Kind: "gpu_xid", GpuUuid: "GPU-b", Since: timestamppb.New(time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC)),
			Detail: "Xid 79: GPU has fallen off the bus",
		}},
	})
	wantContains(t, h.ok("node", "ls"), "gpu-09  beef0011  ready, cordoned")
	wantContains(t, h.ok("node", "show", "gpu-09"),
		"Status:    ready, cordoned",
		"Cordoned: gpu_xid on GPU-b: Xid 79: GPU has fallen off the bus.",
		"`drover node uncordon gpu-09`",
		"CONDITION  GPU    SINCE                          DETAIL\n"+
			"gpu_xid    GPU-b  2026-03-01T11:00:00Z (1h ago)  Xid 79: GPU has fallen off the bus\n")
	wantContains(t, h.ok("node", "uncordon", "gpu-09"), "Node gpu-09 is no longer cordoned: it may get new work (index 1)")
	if out := h.ok("node", "show", "gpu-09"); strings.Contains(out, "Cordoned:") || !strings.Contains(out, "CONDITION") {
		t.Errorf("after uncordon, show should keep the condition and drop the cordon:\n%s", out)
	}
	if r := h.run("node", "uncordon", "nope"); r.code != exitError || !strings.Contains(r.stderr, `node "nope" not found`) {
		t.Errorf("uncordon of an unknown node: %+v", r)
	}
}
