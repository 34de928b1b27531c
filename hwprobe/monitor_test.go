//go:build cgo

package hwprobe

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/hwprobe/nvmltest"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// fakeProc writes /proc/stat and /proc/meminfo under a temporary root.
func fakeProc(t *testing.T, root, stat string, totalKB, availKB int) {
	t.Helper()
	dir := filepath.Join(root, "proc")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat+"\ncpu0 1 2 3 4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mem := []byte("MemTotal: " + strconv.Itoa(totalKB) + " kB\nMemFree: 1 kB\nMemAvailable: " + strconv.Itoa(availKB) + " kB\n")
	if err := os.WriteFile(filepath.Join(dir, "meminfo"), mem, 0o644); err != nil {
		t.Fatal(err)
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestMonitor(t *testing.T, lib *nvmltest.NVML, clk *fakeClock, opts MonitorOptions) *Monitor {
	t.Helper()
	s, err := NewSampler(lib)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	opts.GPUs, opts.Now = s, clk.now
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	return NewMonitor(opts)
}

func TestMonitorWindowSummarisesSamples(t *testing.T) {
	root := t.TempDir()
	lib := nvmltest.New(nvmltest.GPU{UUID: "GPU-a", Name: "NVIDIA H100", MemoryTotalBytes: 80 << 30})
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := newTestMonitor(t, lib, clk, MonitorOptions{Root: root})
	m.SetGPUModels(&Inventory{GPUs: []GPU{{UUID: "GPU-a", Name: "NVIDIA H100"}}})
	start := clk.now()

	// First sample: the CPU baseline; 1000 jiffies later 250 are busy.
	fakeProc(t, root, "cpu 100 0 100 800 0 0 0 0 0 0", 16<<20, 12<<20)
	lib.Set(0, nvmltest.Readings{UtilizationPercent: 40, MemoryUsedBytes: 10 << 30, TemperatureC: 60,
		PowerMilliwatts: 300_000, SMClockMHz: 1980, ECCCorrected: 5, ECCUncorrected: 0})
	m.Sample(context.Background())
	clk.add(5 * time.Second)
	fakeProc(t, root, "cpu 250 0 200 1550 0 0 0 0 0 0", 16<<20, 8<<20)
	lib.Set(0, nvmltest.Readings{UtilizationPercent: 80, MemoryUsedBytes: 20 << 30, TemperatureC: 70,
		PowerMilliwatts: 500_000, SMClockMHz: 1755, ThrottleReasons: 0x4, ECCCorrected: 8, ECCUncorrected: 0})
	m.Sample(context.Background())
	clk.add(5 * time.Second)
	end := clk.now()
	// A sample at end belongs to the next window.
	m.Sample(context.Background())

	w := m.Window(start, end)
	if w == nil {
		t.Fatal("window with two samples is nil")
	}
	if got := w.GetCpuUtilization().GetCount(); got != 1 {
		t.Errorf("cpu samples = %d, want 1 (the first sample only sets the baseline)", got)
	}
	if got := w.GetCpuUtilization().GetSum(); got < 0.249 || got > 0.251 {
		t.Errorf("cpu busy share = %v, want 0.25", got)
	}
	if got := w.GetMemoryTotalBytes(); got != 16<<30 {
		t.Errorf("memory total = %d, want 16 GiB", got)
	}
	if got, want := w.GetMemoryUsedBytes().GetMax(), float64(8<<30); got < want*0.98 || got > want*1.02 {
		t.Errorf("memory used max = %v, want about %v", got, want)
	}
	if w.GetDiskTotalBytes() == 0 || w.GetDiskFreeBytes().GetCount() != 2 {
		t.Errorf("disk: total %d, %d samples; want the data volume sampled twice", w.GetDiskTotalBytes(), w.GetDiskFreeBytes().GetCount())
	}
	if len(w.GetGpus()) != 1 {
		t.Fatalf("gpus = %d, want 1", len(w.GetGpus()))
	}
	g := w.GetGpus()[0]
	if g.GetUuid() != "GPU-a" || g.GetModel() != "NVIDIA H100" {
		t.Errorf("gpu = %q %q", g.GetUuid(), g.GetModel())
	}
	if got := g.GetUtilizationPercent().GetSum(); got != 120 {
		t.Errorf("utilization sum = %v, want 120", got)
	}
	if got := g.GetPowerWatts().GetMax(); got < 495 || got > 505 {
		t.Errorf("power max = %v W, want 500", got)
	}
	if got := g.GetSmClockMhz().GetMin(); got < 1740 || got > 1770 {
		t.Errorf("SM clock min = %v, want 1755", got)
	}
	if g.GetThrottleReasons() != 0x4 {
		t.Errorf("throttle reasons = %#x, want 0x4", g.GetThrottleReasons())
	}
	if g.GetEccCorrected() != 3 {
		t.Errorf("ECC corrected in window = %d, want 3 (8 - 5)", g.GetEccCorrected())
	}
	if len(m.Conditions()) != 0 {
		t.Errorf("healthy node has conditions %v", m.Conditions())
	}
	// The samples are forgotten once taken; the one at end is not.
	if again := m.Window(start, end); again != nil {
		t.Errorf("second Window over the same span = %v, want nil", again)
	}
	if next := m.Window(end, end.Add(10*time.Second)); next.GetDiskFreeBytes().GetCount() != 1 {
		t.Errorf("next window has %d disk samples, want 1", next.GetDiskFreeBytes().GetCount())
	}
}

func TestMonitorXidRaisesCondition(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, "cpu 1 0 1 1 0 0 0 0", 1<<20, 1<<19)
	lib := nvmltest.New(nvmltest.GPU{UUID: "GPU-a"}, nvmltest.GPU{UUID: "GPU-b"})
	clk := &fakeClock{t: time.Now()}
	m := newTestMonitor(t, lib, clk, MonitorOptions{Root: root, Interval: 10 * time.Millisecond})
	start := time.Now().Add(-time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	for !lib.Watching() {
		time.Sleep(5 * time.Millisecond)
	}
	lib.InjectXid(1, 13) // an application's fault: recorded, no condition
	lib.InjectXid(1, 79)
	var conds []*droverv1.NodeCondition
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if conds = m.Conditions(); len(conds) > 0 {
			break
		}
	}
	if len(conds) != 1 || conds[0].GetKind() != ConditionGPUXid || conds[0].GetGpuUuid() != "GPU-b" {
		t.Fatalf("conditions = %v, want one gpu_xid on GPU-b", conds)
	}
	if d := conds[0].GetDetail(); d != "Xid 79: GPU has fallen off the bus" {
		t.Errorf("detail = %q", d)
	}
	w := m.Window(start, time.Now().Add(time.Minute))
	var xids []uint64
	for _, g := range w.GetGpus() {
		for _, x := range g.GetXidEvents() {
			if g.GetUuid() != "GPU-b" || x.GetGpuUuid() != "GPU-b" {
				t.Errorf("Xid %d filed under %q/%q, want GPU-b", x.GetXid(), g.GetUuid(), x.GetGpuUuid())
			}
			xids = append(xids, x.GetXid())
		}
	}
	if len(xids) != 2 || xids[0] != 13 || xids[1] != 79 {
		t.Errorf("window Xids = %v, want [13 79]", xids)
	}
}

func TestMonitorConditions(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, "cpu 1 0 1 1 0 0 0 0", 1<<20, 1<<19)
	lib := nvmltest.New(nvmltest.GPU{UUID: "GPU-a"})
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	// No real volume has an exabyte free: disk pressure at once.
	m := newTestMonitor(t, lib, clk, MonitorOptions{Root: root, ThermalSustain: 30 * time.Second, DiskMinFreeBytes: 1 << 60})
	kinds := func() map[string]*droverv1.NodeCondition {
		out := map[string]*droverv1.NodeCondition{}
		for _, c := range m.Conditions() {
			out[c.GetKind()] = c
		}
		return out
	}
	hot := nvmltest.Readings{ThrottleReasons: 0x40 | 0x1}
	lib.Set(0, hot)
	m.Sample(context.Background())
	if c := kinds(); c[ConditionDiskPressure] == nil || c[ConditionGPUThermal] != nil {
		t.Fatalf("after one hot sample: %v; want disk pressure and no thermal condition yet", m.Conditions())
	}
	clk.add(20 * time.Second)
	m.Sample(context.Background())
	clk.add(20 * time.Second)
	m.Sample(context.Background())
	th := kinds()[ConditionGPUThermal]
	if th == nil || !th.GetSince().AsTime().Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("after 40 s of thermal slowdown: %v; want gpu_thermal since the first hot sample", m.Conditions())
	}
	// A cool sample clears it; heat again starts a new run.
	lib.Set(0, nvmltest.Readings{})
	clk.add(5 * time.Second)
	m.Sample(context.Background())
	if kinds()[ConditionGPUThermal] != nil {
		t.Errorf("thermal condition outlived a cool sample")
	}

	// Uncorrectable errors: growth is a new occurrence, a steady count is not.
	lib.Set(0, nvmltest.Readings{ECCUncorrected: 1})
	clk.add(5 * time.Second)
	m.Sample(context.Background())
	first := kinds()[ConditionGPUECC]
	if first == nil {
		t.Fatalf("no ECC condition after an uncorrectable error: %v", m.Conditions())
	}
	clk.add(5 * time.Second)
	m.Sample(context.Background())
	if c := kinds()[ConditionGPUECC]; !c.GetSince().AsTime().Equal(first.GetSince().AsTime()) {
		t.Errorf("a steady ECC count moved since from %v to %v", first.GetSince().AsTime(), c.GetSince().AsTime())
	}
	lib.Set(0, nvmltest.Readings{ECCUncorrected: 2})
	clk.add(5 * time.Second)
	m.Sample(context.Background())
	if c := kinds()[ConditionGPUECC]; !c.GetSince().AsTime().After(first.GetSince().AsTime()) {
		t.Errorf("a new uncorrectable error kept since %v", c.GetSince().AsTime())
	}
}

func TestMonitorWithoutGPUs(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, "cpu 1 0 1 1 0 0 0 0", 1<<20, 1<<19)
	m := NewMonitor(MonitorOptions{Root: root, DataDir: t.TempDir()})
	start := time.Now()
	m.Sample(context.Background())
	w := m.Window(start, time.Now().Add(time.Second))
	if w == nil || len(w.GetGpus()) != 0 || w.GetMemoryUsedBytes().GetCount() != 1 {
		t.Errorf("window without NVML = %v, want memory sampled and no GPUs", w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Run(ctx); err != nil {
		t.Errorf("Run without GPUs: %v", err)
	}
}
