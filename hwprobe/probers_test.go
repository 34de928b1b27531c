package hwprobe

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
)

// fileProbers are the default probers without the GPU prober, so a test over
// a testdata tree never touches the NVML of the machine running it.
func fileProbers() []Prober {
	return slices.DeleteFunc(DefaultProbers(), func(p Prober) bool { return p.Name() == gpuProberName })
}

func probeTree(t *testing.T, tree string) *Inventory {
	t.Helper()
	inv, err := Probe(context.Background(), Options{Root: filepath.Join("testdata", tree), Probers: fileProbers()})
	if err != nil {
		t.Fatalf("Probe(%s): %v", tree, err)
	}
	return inv
}

const (
	kib = 1 << 10
	gib = 1 << 30
)

func TestProbeTrees(t *testing.T) {
	tests := []struct {
		tree      string
		host      Host
		cpu       CPU
		memory    Memory
		container ContainerLimits
		board     *Board
		effCPUs   float64
		effMemory uint64
	}{
		{
			tree: "x86-server",
			host: Host{Hostname: "gpu-node-07", OS: "Ubuntu 24.04.1 LTS", OSID: "ubuntu", OSVersion: "24.04",
				Kernel: "6.8.0-45-generic", Arch: runtime.GOARCH, BootID: "5b1e7c6a-2f0d-4c1e-9a57-3d2c1b0a9f88"},
			cpu: CPU{Model: "Intel(R) Xeon(R) Gold 5420+", Vendor: "Intel", Sockets: 2, Cores: 56, Threads: 112, MHz: 4100,
				Flags: []string{"amx_bf16", "amx_int8", "amx_tile", "avx", "avx2", "avx512_bf16", "avx512_fp16",
					"avx512_vnni", "avx512bw", "avx512f", "avx_vnni", "f16c", "fma", "sse4_2"}},
			memory:    Memory{TotalBytes: 2112893636 * kib, AvailableBytes: 2031234560 * kib},
			container: ContainerLimits{CgroupVersion: 2, CgroupPath: "/system.slice/drover-agent.service", CPUSetCPUs: 112},
			effCPUs:   112,
			effMemory: 2112893636 * kib,
		},
		{
			tree: "jetson-orin",
			host: Host{Hostname: "orin-edge-12", OS: "Ubuntu 22.04.4 LTS", OSID: "ubuntu", OSVersion: "22.04",
				Kernel: "5.15.136-tegra", Arch: runtime.GOARCH, BootID: "9c4f7e1a-0b3d-4a8e-8f21-6d5c4b3a2e10"},
			cpu: CPU{Model: "ARM Cortex-A78AE", Vendor: "ARM", Sockets: 1, Cores: 12, Threads: 12, MHz: 2201.6,
				Flags: []string{"asimd", "asimddp", "asimdhp"}},
			memory:    Memory{TotalBytes: 64335836 * kib, AvailableBytes: 58123456 * kib},
			container: ContainerLimits{CgroupVersion: 2, CgroupPath: "/system.slice/drover-agent.service"},
			board: &Board{Model: "NVIDIA Jetson AGX Orin Developer Kit",
				Compatible: []string{"nvidia,p3737-0000+p3701-0005", "nvidia,p3701-0005", "nvidia,tegra234"},
				Family:     FamilyJetson, L4TRelease: "36.3.0"},
			effCPUs:   12,
			effMemory: 64335836 * kib,
		},
		{
			tree: "rpi5",
			host: Host{Hostname: "pi5-shelf-3", OS: "Debian GNU/Linux 12 (bookworm)", OSID: "debian", OSVersion: "12",
				Kernel: "6.6.31+rpt-rpi-2712", Arch: runtime.GOARCH, BootID: "1d2e3f40-5a6b-4c7d-8e9f-a0b1c2d3e4f5"},
			cpu: CPU{Model: "ARM Cortex-A76", Vendor: "ARM", Sockets: 1, Cores: 4, Threads: 4, MHz: 2400,
				Flags: []string{"asimd", "asimddp", "asimdhp"}},
			memory:    Memory{TotalBytes: 8245776 * kib, AvailableBytes: 7412345 * kib},
			container: ContainerLimits{CgroupVersion: 2, CgroupPath: "/system.slice/drover-agent.service"},
			board: &Board{Model: "Raspberry Pi 5 Model B Rev 1.0",
				Compatible: []string{"raspberrypi,5-model-b", "brcm,bcm2712"}, Family: FamilyRaspberryPi},
			effCPUs:   4,
			effMemory: 8245776 * kib,
		},
		{
			tree: "container",
			host: Host{Hostname: "inference-7f9c4d-x2k8p", OS: "Debian GNU/Linux 12 (bookworm)", OSID: "debian", OSVersion: "12",
				Kernel: "6.1.0-25-cloud-amd64", Arch: runtime.GOARCH, BootID: "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"},
			cpu: CPU{Model: "AMD EPYC 9354P 32-Core Processor", Vendor: "AMD", Sockets: 1, Cores: 32, Threads: 64, MHz: 3250,
				Flags: []string{"avx", "avx2", "avx512_bf16", "avx512_vnni", "avx512bw", "avx512f", "f16c", "fma", "sse4_2"}},
			memory: Memory{TotalBytes: 263727104 * kib, AvailableBytes: 201234567 * kib},
			// The container's 4 GiB wins over the pod's 8 GiB.
			container: ContainerLimits{CgroupVersion: 2,
				CgroupPath: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3f1c9a.slice/cri-containerd-9a8b7c6d.scope",
				CPUQuota:   2.5, CPUSetCPUs: 64, MemoryMaxBytes: 4 * gib},
			effCPUs:   2.5,
			effMemory: 4 * gib,
		},
	}
	for _, tt := range tests {
		t.Run(tt.tree, func(t *testing.T) {
			inv := probeTree(t, tt.tree)
			if len(inv.Warnings) > 0 {
				t.Errorf("warnings: %v", inv.Warnings)
			}
			if inv.Host != tt.host {
				t.Errorf("Host = %+v\nwant   %+v", inv.Host, tt.host)
			}
			if !reflect.DeepEqual(inv.CPU, tt.cpu) {
				t.Errorf("CPU = %+v\nwant  %+v", inv.CPU, tt.cpu)
			}
			if inv.Memory != tt.memory {
				t.Errorf("Memory = %+v, want %+v", inv.Memory, tt.memory)
			}
			if inv.Container != tt.container {
				t.Errorf("Container = %+v\nwant        %+v", inv.Container, tt.container)
			}
			if !reflect.DeepEqual(inv.Board, tt.board) {
				t.Errorf("Board = %+v, want %+v", inv.Board, tt.board)
			}
			if got := inv.EffectiveCPUs(); got != tt.effCPUs {
				t.Errorf("EffectiveCPUs = %v, want %v", got, tt.effCPUs)
			}
			if got := inv.EffectiveMemory(); got != tt.effMemory {
				t.Errorf("EffectiveMemory = %v, want %v", got, tt.effMemory)
			}
		})
	}
}

// An empty root is a machine where nothing can be read: every prober warns,
// none fails the probe, and files that only some machines have (device
// tree, data dir) stay quiet.
func TestProbeEmptyRoot(t *testing.T) {
	inv, err := Probe(context.Background(), Options{Root: t.TempDir(), Probers: fileProbers()})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, w := range inv.Warnings {
		got[w.Probe] = true
	}
	for _, want := range []string{"host", "cpu", "memory", "container"} {
		if !got[want] {
			t.Errorf("no warning from %s; warnings: %v", want, inv.Warnings)
		}
	}
	for _, quiet := range []string{"board", "disk"} {
		if got[quiet] {
			t.Errorf("unexpected warning from %s: %v", quiet, inv.Warnings)
		}
	}
	if inv.Board != nil {
		t.Errorf("Board = %+v, want nil", inv.Board)
	}
}

func TestContainerProber(t *testing.T) {
	v2 := func(files map[string]string) fstest.MapFS {
		m := fstest.MapFS{"sys/fs/cgroup/cgroup.controllers": {Data: []byte("cpu memory\n")}}
		for k, v := range files {
			m[k] = &fstest.MapFile{Data: []byte(v)}
		}
		return m
	}
	tests := []struct {
		name     string
		fs       fstest.MapFS
		want     ContainerLimits
		warnings int
	}{
		{
			// Docker's default on cgroup v2: a private cgroup namespace,
			// the container's own files at the top.
			name: "cgroup namespace",
			fs: v2(map[string]string{
				"proc/self/cgroup":                    "0::/\n",
				"sys/fs/cgroup/cpu.max":               "250000 100000\n",
				"sys/fs/cgroup/memory.max":            "4294967296\n",
				"sys/fs/cgroup/cpuset.cpus.effective": "0-3,8,10-11\n",
			}),
			want: ContainerLimits{CgroupVersion: 2, CgroupPath: "/", CPUQuota: 2.5, CPUSetCPUs: 7, MemoryMaxBytes: 4 * gib},
		},
		{
			name: "unlimited",
			fs: v2(map[string]string{
				"proc/self/cgroup":                    "0::/user.slice\n",
				"sys/fs/cgroup/user.slice/cpu.max":    "max 100000\n",
				"sys/fs/cgroup/user.slice/memory.max": "max\n",
			}),
			want: ContainerLimits{CgroupVersion: 2, CgroupPath: "/user.slice"},
		},
		{
			// The parent's quota is tighter than the child's.
			name: "parent tighter",
			fs: v2(map[string]string{
				"proc/self/cgroup":             "0::/a/b\n",
				"sys/fs/cgroup/a/cpu.max":      "100000 100000\n",
				"sys/fs/cgroup/a/b/cpu.max":    "400000 100000\n",
				"sys/fs/cgroup/a/b/memory.max": "1073741824\n",
			}),
			want: ContainerLimits{CgroupVersion: 2, CgroupPath: "/a/b", CPUQuota: 1, MemoryMaxBytes: gib},
		},
		{
			name: "garbage limits",
			fs: v2(map[string]string{
				"proc/self/cgroup":         "0::/\n",
				"sys/fs/cgroup/cpu.max":    "lots\n",
				"sys/fs/cgroup/memory.max": "-1\n",
			}),
			want:     ContainerLimits{CgroupVersion: 2, CgroupPath: "/"},
			warnings: 2,
		},
		{
			name: "cgroup v1",
			fs: fstest.MapFS{
				"proc/self/cgroup": {Data: []byte("12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n")},
			},
			want:     ContainerLimits{CgroupVersion: 1},
			warnings: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var inv Inventory
			runProber(context.Background(), containerProber{}, &Env{FS: tt.fs}, &inv)
			if inv.Container != tt.want {
				t.Errorf("Container = %+v, want %+v", inv.Container, tt.want)
			}
			if len(inv.Warnings) != tt.warnings {
				t.Errorf("warnings = %v, want %d", inv.Warnings, tt.warnings)
			}
		})
	}
}

func TestParseCPUMax(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		wantErr bool
	}{
		{"max 100000", 0, false},
		{"max", 0, false},
		{"250000 100000", 2.5, false},
		{"50000 100000", 0.5, false},
		{"200000", 2, false}, // period omitted: the kernel default
		{"150000 50000", 3, false},
		{"x 100000", 0, true},
		{"100000 0", 0, true},
	}
	for _, tt := range tests {
		got, err := parseCPUMax(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("parseCPUMax(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestCountCPUList(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"0", 1, false},
		{"0-63", 64, false},
		{"0-3,8,10-11", 7, false},
		{"3-1", 0, true},
		{"a", 0, true},
	}
	for _, tt := range tests {
		got, err := countCPUList(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("countCPUList(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseL4TRelease(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{"# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64", "36.3.0", false},
		{"# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n# KERNEL_VARIANT: oot", "35.4.1", false},
		{"# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64", "32.7.4", false},
		{"something else", "", true},
	}
	for _, tt := range tests {
		got, err := parseL4TRelease(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("parseL4TRelease(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseCPUInfoEmpty(t *testing.T) {
	if _, err := parseCPUInfo([]string{"", "garbage"}); err == nil {
		t.Error("parseCPUInfo of no processors: no error")
	}
}

func TestDiskProber(t *testing.T) {
	// fakeStatfs answers for the directories in sizes and says the rest do
	// not exist, the way statfs(2) does.
	fakeStatfs := func(sizes map[string]diskUsage) func(string) (diskUsage, error) {
		return func(p string) (diskUsage, error) {
			if u, ok := sizes[p]; ok {
				return u, nil
			}
			return diskUsage{}, syscall.ENOENT
		}
	}
	sizes := map[string]diskUsage{
		"/":                 {TotalBytes: 500 * gib, FreeBytes: 200 * gib},
		"/var":              {TotalBytes: 500 * gib, FreeBytes: 200 * gib},
		"/var/lib":          {TotalBytes: 500 * gib, FreeBytes: 200 * gib},
		"/var/lib/drover":   {TotalBytes: 7 << 40, FreeBytes: 6 << 40},
		"/mnt/scratch disk": {TotalBytes: 64 * gib, FreeBytes: 60 * gib},
	}
	tests := []struct {
		name    string
		dataDir string
		want    []Disk
	}{
		{"own filesystem", "/var/lib/drover",
			[]Disk{{Path: "/var/lib/drover", MountPoint: "/var/lib/drover", FSType: "xfs", TotalBytes: 7 << 40, FreeBytes: 6 << 40}}},
		{"not created yet", "/var/lib/drover/models/cache",
			[]Disk{{Path: "/var/lib/drover/models/cache", MountPoint: "/var/lib/drover", FSType: "xfs", TotalBytes: 7 << 40, FreeBytes: 6 << 40}}},
		// /var/lib/drover-old is a mount whose name starts like the data
		// dir's parent but does not hold it.
		{"sibling with common prefix", "/var/lib/drover-new",
			[]Disk{{Path: "/var/lib/drover-new", MountPoint: "/", FSType: "ext4", TotalBytes: 500 * gib, FreeBytes: 200 * gib}}},
		{"escaped mount point", "/mnt/scratch disk/drover",
			[]Disk{{Path: "/mnt/scratch disk/drover", MountPoint: "/mnt/scratch disk", FSType: "vfat", TotalBytes: 64 * gib, FreeBytes: 60 * gib}}},
		{"no data dir", "", nil},
	}
	env := &Env{FS: dirFS("x86-server")}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var inv Inventory
			env.DataDir = tt.dataDir
			runProber(context.Background(), diskProber{statfs: fakeStatfs(sizes)}, env, &inv)
			if !reflect.DeepEqual(inv.Disks, tt.want) {
				t.Errorf("Disks = %+v\nwant    %+v", inv.Disks, tt.want)
			}
			if len(inv.Warnings) > 0 {
				t.Errorf("warnings: %v", inv.Warnings)
			}
		})
	}

	t.Run("statfs fails", func(t *testing.T) {
		var inv Inventory
		failing := func(string) (diskUsage, error) { return diskUsage{}, syscall.EACCES }
		runProber(context.Background(), diskProber{statfs: failing}, &Env{FS: env.FS, DataDir: "/var/lib/drover"}, &inv)
		if len(inv.Disks) != 0 || len(inv.Warnings) != 1 || !strings.Contains(inv.Warnings[0].Message, "permission denied") {
			t.Errorf("Disks = %+v, warnings = %v; want none and one permission warning", inv.Disks, inv.Warnings)
		}
	})
}

// The real statfs, on this machine's own filesystem.
func TestDiskProberReal(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("statfs is implemented for Linux only")
	}
	dir := t.TempDir()
	inv, err := Probe(context.Background(), Options{Root: "/", DataDir: dir, Probers: []Prober{diskProber{statfs: statfs}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Disks) != 1 || inv.Disks[0].TotalBytes == 0 || inv.Disks[0].MountPoint == "" || inv.Disks[0].FSType == "" {
		t.Fatalf("Disks = %+v, warnings = %v", inv.Disks, inv.Warnings)
	}
	t.Logf("%s: %+v", dir, inv.Disks[0])
}

func dirFS(tree string) fs.FS { return os.DirFS(filepath.Join("testdata", tree)) }

func TestMountFor(t *testing.T) {
	// Two mounts at the same point: the later one hides the earlier.
	lines := []string{
		"1 0 8:1 / / rw - ext4 /dev/sda1 rw",
		"2 1 0:40 / /data rw - ext4 /dev/sdb1 rw",
		"3 1 0:41 / /data rw - overlay overlay rw",
		"malformed line",
	}
	if mp, typ := mountFor(lines, "/data/x"); mp != "/data" || typ != "overlay" {
		t.Errorf("mountFor = %q, %q; want /data, overlay", mp, typ)
	}
}
