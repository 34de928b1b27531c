package agent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/hwprobe"
	"github.com/droverhq/drover/internal/jointoken"
	"github.com/droverhq/drover/internal/names"
)

func TestHeartbeatInterval(t *testing.T) {
	for _, tt := range []struct{ ttl, want time.Duration }{
		{30 * time.Second, 10 * time.Second},
		{3 * time.Second, time.Second},
		{600 * time.Millisecond, 200 * time.Millisecond},
		{300 * time.Millisecond, 200 * time.Millisecond},
		{time.Millisecond, 200 * time.Millisecond},
		{0, 10 * time.Second},
		{-time.Second, 10 * time.Second},
	} {
		if got := heartbeatInterval(tt.ttl); got != tt.want {
			t.Errorf("heartbeatInterval(%v) = %v, want %v", tt.ttl, got, tt.want)
		}
	}
}

func TestRenewalTime(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(3 * time.Hour)
	if got, want := renewalTime(nb, na, time.Time{}), nb.Add(2*time.Hour); !got.Equal(want) {
		t.Errorf("renewalTime = %v, want %v", got, want)
	}
	// A certificate so short that its renewal time has passed is not
	// renewed again at once.
	last := nb.Add(2*time.Hour + 59*time.Minute)
	if got, want := renewalTime(nb, na, last), last.Add(minRenewInterval); !got.Equal(want) {
		t.Errorf("renewalTime after a renewal = %v, want %v", got, want)
	}
}

func TestBackoff(t *testing.T) {
	top := func(n int64) int64 { return n - 1 }
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second,
		4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for round, w := range want {
		if got := backoff(round, top); got != w-1 {
			t.Errorf("backoff(%d) ceiling = %v, want %v", round, got+1, w)
		}
	}
	if got := backoff(1000, top); got != backoffCap-1 {
		t.Errorf("backoff(1000) ceiling = %v, want the cap", got+1)
	}
	if got := backoff(3, func(int64) int64 { return 0 }); got != 0 {
		t.Errorf("backoff with zero jitter = %v, want 0 (full jitter)", got)
	}
	for range 1000 {
		if d := backoff(5, nil); d < 0 || d >= 8*time.Second {
			t.Fatalf("backoff(5) = %v, want in [0, 8s)", d)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ca := strings.Repeat("ab", 32)
	tok, err := jointoken.New(ca)
	if err != nil {
		t.Fatal(err)
	}
	good := func() Config {
		c := DefaultConfig()
		c.Name = "gpu-01"
		c.Servers = []string{"10.0.0.5:7400", "[::1]:7400", "server.example.com:7400"}
		c.Token = tok.String()
		return c
	}
	tests := []struct {
		name   string
		change func(c *Config)
		want   string // "" for valid
	}{
		{"good", func(*Config) {}, ""},
		{"enrolled: no token, no servers", func(c *Config) { c.Token, c.Servers = "", nil }, ""},
		{"prefixed label", func(c *Config) { c.Labels = map[string]string{"drover.dev/zone": "b", "gpu": ""} }, ""},
		{"server without port", func(c *Config) { c.Servers = []string{"10.0.0.5"} }, `--server "10.0.0.5": want HOST:PORT`},
		{"server without host", func(c *Config) { c.Servers = []string{":7400"} }, "no host"},
		{"server bad port", func(c *Config) { c.Servers = []string{"a:http"} }, `port "http"`},
		{"server port 0", func(c *Config) { c.Servers = []string{"a:0"} }, `port "0"`},
		{"malformed token", func(c *Config) { c.Token = "s3cr3t" }, "--token (or DROVER_TOKEN)"},
		{"token without servers", func(c *Config) { c.Servers = nil }, ""}, // enrolled already, perhaps
		{"no data dir", func(c *Config) { c.DataDir = "" }, "--data-dir is empty"},
		{"no root", func(c *Config) { c.Root = "" }, "--root is empty"},
		{"no name", func(c *Config) { c.Name = "" }, "--name is empty"},
		{"bad name", func(c *Config) { c.Name = "GPU_01!" }, `--name "GPU_01!"`},
		{"bad site", func(c *Config) { c.Site = "-x" }, `--site "-x"`},
		{"bad label key", func(c *Config) { c.Labels = map[string]string{"a b": "c"} }, "--label a b=c: key"},
		{"bad label value", func(c *Config) { c.Labels = map[string]string{"k": "a b"} }, "--label k=a b: value"},
		{"probe interval", func(c *Config) { c.ProbeInterval = time.Millisecond }, "probe interval"},
		{"gossip off", func(c *Config) { c.GossipAddr = "" }, ""},
		{"gossip on loopback, free port", func(c *Config) { c.GossipAddr = "127.0.0.1:0" }, ""},
		{"gossip every address", func(c *Config) { c.GossipAddr = ":7947" }, ""},
		{"gossip IPv6 advertised", func(c *Config) { c.GossipAddr, c.GossipAdvertise = "[::]:7947", "[fd00::7]:7947" }, ""},
		{"gossip NATed", func(c *Config) { c.GossipAdvertise = "203.0.113.7:17947" }, ""},
		{"gossip host name", func(c *Config) { c.GossipAddr = "gpu-01:7947" }, `--gossip-addr "gpu-01:7947": "gpu-01" is not an IP address`},
		{"gossip without port", func(c *Config) { c.GossipAddr = "10.0.0.7" }, `--gossip-addr "10.0.0.7": want IP:PORT`},
		{"gossip bad port", func(c *Config) { c.GossipAddr = "10.0.0.7:70000" }, `--gossip-addr "10.0.0.7:70000": port "70000"`},
		{"gossip every IPv6 address", func(c *Config) { c.GossipAddr = "[::]:7947" }, "--gossip-advertise IP:PORT"},
		{"advertise with pool off", func(c *Config) { c.GossipAddr, c.GossipAdvertise = "", "10.0.0.7:7947" }, "--gossip-advertise \"10.0.0.7:7947\" is set but the site gossip pool is off"},
		{"advertise unspecified", func(c *Config) { c.GossipAdvertise = "0.0.0.0:7947" }, `--gossip-advertise "0.0.0.0:7947"`},
		{"advertise port 0", func(c *Config) { c.GossipAdvertise = "10.0.0.7:0" }, `--gossip-advertise "10.0.0.7:0"`},
		{"advertise host name", func(c *Config) { c.GossipAdvertise = "gpu-01:7947" }, `--gossip-advertise "gpu-01:7947": "gpu-01" is not an IP address`},
		{"telemetry window", func(c *Config) { c.TelemetryWindow = 10 * time.Second }, ""},
		{"telemetry window too short", func(c *Config) { c.TelemetryWindow = 500 * time.Millisecond }, "--telemetry-window 500ms: want a length from 1s to 24h"},
		{"telemetry window too long", func(c *Config) { c.TelemetryWindow = 48 * time.Hour }, "--telemetry-window 48h0m0s"},
		{"telemetry spool too small", func(c *Config) { c.TelemetrySpoolBytes = 1024 }, "--telemetry-spool-size 1024: want at least 64KiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.change(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig with %q", err, tt.want)
			}
			if strings.Contains(err.Error(), tok.Secret) {
				t.Errorf("error %q contains the token's secret", err)
			}
			if _, err := New(c); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("New = %v, want ErrInvalidConfig", err)
			}
		})
	}

	// Every problem is reported at once.
	c := good()
	c.Name, c.Site = "", "-"
	if err := c.Validate(); !strings.Contains(err.Error(), "--name") || !strings.Contains(err.Error(), "--site") {
		t.Errorf("Validate = %v, want both --name and --site", err)
	}
}

func TestDefaultName(t *testing.T) {
	n := DefaultName()
	if n != "" && !names.IsName(n) {
		t.Errorf("DefaultName() = %q, not a valid node name", n)
	}
}

func TestInventoryProto(t *testing.T) {
	inv := &hwprobe.Inventory{
		Host:      hwprobe.Host{Hostname: "orin", OS: "Ubuntu 22.04", OSID: "ubuntu", OSVersion: "22.04", Kernel: "5.15.136-tegra", Arch: "arm64", BootID: "b"},
		CPU:       hwprobe.CPU{Model: "ARMv8", Vendor: "arm", Sockets: 1, Cores: 12, Threads: 12, MHz: 2201.6, Flags: []string{"asimd"}},
		Memory:    hwprobe.Memory{TotalBytes: 64 << 30, AvailableBytes: 60 << 30},
		Disks:     []hwprobe.Disk{{Path: "/var/lib/drover-agent", MountPoint: "/", FSType: "ext4", TotalBytes: 1 << 40, FreeBytes: 1 << 39}},
		Container: hwprobe.ContainerLimits{CgroupVersion: 2, CgroupPath: "/system.slice", CPUQuota: 4, CPUSetCPUs: 8, MemoryMaxBytes: 8 << 30},
		Board:     &hwprobe.Board{Model: "Jetson AGX Orin", Compatible: []string{"nvidia,p3737"}, Family: "jetson", L4TRelease: "36.3.0"},
		GPUProbe:  hwprobe.GPUProbe{Available: true, DriverVersion: "550", CUDADriverVersion: "12.4"},
		GPUs: []hwprobe.GPU{
			{Index: 0, UUID: "GPU-0", Name: "A100", PCIBusID: "0000:01:00.0", MemoryTotalBytes: 40 << 30, ComputeCapability: "8.0",
				PowerLimitMilliwatts: 400000, MIG: &hwprobe.MIGMode{Current: true, Pending: false}},
			{Index: 0, UUID: "MIG-1", Name: "A100 MIG 1g.5gb", MemoryTotalBytes: 5 << 30, ParentUUID: "GPU-0"},
		},
		Warnings: []hwprobe.Warning{{Probe: "cpu", Message: "no max frequency"}},
	}
	p := inventoryProto(inv)
	if p.GetHost().GetOsId() != "ubuntu" || p.GetCpu().GetThreads() != 12 || p.GetMemory().GetAvailableBytes() != 60<<30 ||
		p.GetDisks()[0].GetFsType() != "ext4" || p.GetContainer().GetCpuQuota() != 4 || p.GetBoard().GetL4TRelease() != "36.3.0" ||
		p.GetGpuProbe().GetCudaDriverVersion() != "12.4" || len(p.GetGpus()) != 2 || !p.GetGpus()[0].GetMigEnabled() ||
		p.GetGpus()[1].GetParentUuid() != "GPU-0" || p.GetWarnings()[0] != "cpu: no max frequency" {
		t.Errorf("inventoryProto = %v", p)
	}
	if inventoryProto(nil) != nil {
		t.Error("inventoryProto(nil) != nil")
	}

	// Readings that drift are not static facts; hardware is.
	drift := *inv
	drift.Memory.AvailableBytes = 1
	drift.Disks = []hwprobe.Disk{{Path: "/var/lib/drover-agent", MountPoint: "/", FSType: "ext4", TotalBytes: 1 << 40, FreeBytes: 7}}
	drift.Warnings = nil
	if !sameStaticFacts(p, inventoryProto(&drift)) {
		t.Error("free memory, free disk and warnings count as hardware changes")
	}
	for name, change := range map[string]func(inv *hwprobe.Inventory){
		"GPU lost":   func(inv *hwprobe.Inventory) { inv.GPUs = inv.GPUs[:1] },
		"MIG switch": func(inv *hwprobe.Inventory) { inv.GPUs[0].MIG = &hwprobe.MIGMode{Current: true, Pending: true} },
		"memory":     func(inv *hwprobe.Inventory) { inv.Memory.TotalBytes /= 2 },
		"limits":     func(inv *hwprobe.Inventory) { inv.Container.MemoryMaxBytes = 1 << 30 },
	} {
		changed := *inv
		changed.GPUs = append([]hwprobe.GPU(nil), inv.GPUs...)
		change(&changed)
		if sameStaticFacts(p, inventoryProto(&changed)) {
			t.Errorf("%s: not a hardware change", name)
		}
	}
}
