package telemetry

import (
	"flag"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/droverhq/drover/agent/telemetry/telemetrytest"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Flags of BenchmarkSpoolOffline.
var (
	offlineHours       = flag.Int("offline.hours", 24, "hours BenchmarkSpoolOffline simulates without a server")
	offlineRate        = flag.Int("offline.rate", 5, "requests per second each deployment serves in BenchmarkSpoolOffline")
	offlineDeployments = flag.Int("offline.deployments", 2, "deployments the node serves in BenchmarkSpoolOffline")
	offlineSpool       = flag.Int64("offline.spool", 64<<20, "spool bound in bytes (drover-agent's default --telemetry-spool-size is 64 MiB)")
)

// BenchmarkSpoolOffline measures what a node's telemetry takes on disk
// while no server answers. The real collector and spool run on a
// simulated clock: -offline.deployments deployments of the digits
// classifier each serve -offline.rate requests per second (digits
// requests and answers, 75 features), one-minute windows, plus the node's
// own metrics window each minute (CPU, memory, disk and one GPU, sampled
// every 10 s), for -offline.hours hours, nothing shipped. It reports the
// spool's bytes (records with their headers, and the blocks the files
// take on disk) after the first hour and at the end, the merges that kept
// it under -offline.spool, and the windows dropped, which must be none
// for a day at the default bound.
func BenchmarkSpoolOffline(b *testing.B) {
	if *offlineHours < 1 || *offlineRate < 1 || *offlineDeployments < 1 || *offlineSpool < 1<<20 {
		b.Fatalf("-offline.hours %d, -offline.rate %d, -offline.deployments %d, -offline.spool %d: out of range",
			*offlineHours, *offlineRate, *offlineDeployments, *offlineSpool)
	}
	dir := b.TempDir()
	sp, err := OpenSpool(dir, SpoolOptions{MaxBytes: *offlineSpool, Merge: MergeWindows})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cfg := DefaultCollectorConfig()
	cfg.NodeID, cfg.Spool = "node-1", sp
	cfg.Now = func() time.Time { return now }
	c, err := NewCollector(cfg)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	deps := make([]string, *offlineDeployments)
	for i := range deps {
		deps[i] = "digits-" + strconv.Itoa(i)
	}
	start := now
	step := time.Second / time.Duration(*offlineRate)
	var hour SpoolStats
	var hourDisk int64
	b.ResetTimer()
	for minute := range *offlineHours * 60 {
		for tick := time.Duration(0); tick < time.Minute; tick += step {
			now = start.Add(time.Duration(minute)*time.Minute + tick)
			for _, d := range deps {
				e := c.Get()
				e.At = now
				e.Deployment, e.Model, e.Version, e.Status = d, "digits", 1, 200
				e.Latency = time.Duration(200+rng.IntN(800)) * time.Microsecond
				e.CaptureRequest(telemetrytest.DigitsRequest(rng), cfg.CaptureBytes)
				e.CaptureResponse(telemetrytest.DigitsResponse(rng), cfg.CaptureBytes)
				c.observe(e)
			}
		}
		wStart := start.Add(time.Duration(minute) * time.Minute)
		wEnd := wStart.Add(time.Minute)
		now = wEnd
		c.closeEnded(now, false)
		data, err := EncodeNodeWindow(cfg.NodeID, wStart, wEnd, offlineNodeMetrics(rng))
		if err != nil {
			b.Fatal(err)
		}
		if err := sp.Add(Record{Key: NodeRecordKey, Start: wStart, End: wEnd, Windows: 1, Data: data}); err != nil {
			b.Fatal(err)
		}
		if minute == 59 {
			hour, hourDisk = sp.Stats(), diskBytes(b, dir)
		}
	}
	b.StopTimer()
	st, disk := sp.Stats(), diskBytes(b, dir)
	if cs := c.Stats(); cs.Unparsed != 0 || cs.SpoolErrors != 0 || cs.Dropped != 0 {
		b.Fatalf("collector: %+v", cs)
	}
	windowsPerHour := 60 * (len(deps) + 1)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(hour.Bytes), "bytes-1h")
	b.ReportMetric(float64(hourDisk), "disk-bytes-1h")
	b.ReportMetric(float64(st.Bytes), "bytes-end")
	b.ReportMetric(float64(disk), "disk-bytes-end")
	b.ReportMetric(float64(st.Records), "records-end")
	b.ReportMetric(float64(st.Merges), "merges")
	b.ReportMetric(float64(st.DroppedWindows), "dropped-windows")
	b.Logf("%d deployments at %d req/s and the node's metrics, 1-minute windows, offline: after 1 h %d windows in %d records, %d bytes "+
		"(%d on disk), %.1f KiB a window; after %d h %d records, %d bytes (%d on disk) under a bound of %d, %d merges, %d windows dropped "+
		"(%d records); unmerged, %d h would take about %d bytes",
		len(deps), *offlineRate, windowsPerHour, hour.Records, hour.Bytes, hourDisk, float64(hour.Bytes)/float64(windowsPerHour)/1024,
		*offlineHours, st.Records, st.Bytes, disk, *offlineSpool, st.Merges, st.DroppedWindows, st.DroppedRecords,
		*offlineHours, hour.Bytes*int64(*offlineHours))
}

// diskBytes is the space dir's files take on disk (their allocated
// blocks).
func diskBytes(b *testing.B, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// offlineNodeMetrics is a minute of a one-GPU node's metrics sampled
// every 10 s.
func offlineNodeMetrics(rng *rand.Rand) *droverv1.NodeMetrics {
	sample := func(lo, hi float64) *droverv1.NumericSketch {
		n := sketch.NewNumeric()
		for range 6 {
			_ = n.Add(lo + rng.Float64()*(hi-lo))
		}
		return n.ToProto()
	}
	return &droverv1.NodeMetrics{
		CpuUtilization:   sample(0.05, 0.3),
		MemoryUsedBytes:  sample(6<<30, 8<<30),
		MemoryTotalBytes: 64 << 30,
		DiskFreeBytes:    sample(200<<30, 201<<30),
		DiskTotalBytes:   500 << 30,
		Gpus: []*droverv1.GPUMetrics{{
			Uuid:               "GPU-8a1c3f52-7e0b-4d6a-9f1e-2b3c4d5e6f70",
			Model:              "NVIDIA L4",
			UtilizationPercent: sample(5, 40),
			MemoryUsedBytes:    sample(2<<30, 3<<30),
			TemperatureCelsius: sample(40, 55),
			PowerWatts:         sample(20, 45),
			SmClockMhz:         sample(1200, 2040),
		}},
	}
}
