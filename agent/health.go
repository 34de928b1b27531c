package agent

import (
	"context"
	"sync"
	"time"

	"github.com/droverhq/drover/hwprobe"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// startHealth starts the node's health monitor for this run and returns
// what stops it: it samples the machine for telemetry windows
// (NodeMetrics) and derives the conditions heartbeats report. Without an
// NVIDIA driver it samples CPU, memory and disk alone.
func (a *Agent) startHealth(ctx context.Context, hw *hwprobe.Inventory) (stop func()) {
	opts := hwprobe.MonitorOptions{Root: a.cfg.Root, DataDir: a.cfg.DataDir, Interval: a.cfg.HealthInterval}
	var sampler *hwprobe.Sampler
	if hw.GPUProbe.Available {
		s, err := hwprobe.NewSampler(a.nvml)
		if err != nil {
			a.log.Warn("GPU health is not sampled", "err", err)
		} else {
			sampler, opts.GPUs = s, s
		}
	}
	m := hwprobe.NewMonitor(opts)
	m.SetGPUModels(hw)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = m.Run(ctx) // returns nil when ctx ends
	}()
	a.health.Store(m)
	return func() {
		cancel()
		wg.Wait()
		a.health.Store(nil)
		if sampler != nil {
			if err := sampler.Close(); err != nil {
				a.log.Warn("closing the GPU sampler", "err", err)
			}
		}
	}
}

// NodeMetrics summarises how the machine felt over [start, end): the
// health monitor's samples and Xid events in that span, each handed out
// once. It returns nil when the agent is not running or took no sample
// then. The telemetry collector calls it as each window closes.
func (a *Agent) NodeMetrics(start, end time.Time) *droverv1.NodeMetrics {
	m := a.health.Load()
	if m == nil {
		return nil
	}
	return m.Window(start, end)
}

// Conditions are the node's current conditions, as its next heartbeat
// reports them; nil when the agent is not running.
func (a *Agent) Conditions() []*droverv1.NodeCondition {
	m := a.health.Load()
	if m == nil {
		return nil
	}
	return m.Conditions()
}
