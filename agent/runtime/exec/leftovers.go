package exec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/droverhq/drover/internal/atomicfile"
)

// recordFile is written beside an instance's logs while its process runs,
// so that an agent that restarts finds what its predecessor left running:
// model servers are not killed with the agent (they are not its threads'
// children in any sense the kernel enforces), and one left behind would
// keep its port, its GPUs and its memory.
const recordFile = "process.json"

type processRecord struct {
	ID         string   `json:"id"`
	Deployment string   `json:"deployment"`
	Model      string   `json:"model,omitempty"`
	Version    uint64   `json:"version"`
	PID        int      `json:"pid"`
	StartTicks uint64   `json:"start_ticks"`
	Addr       string   `json:"addr"`
	GPUs       []string `json:"gpus,omitempty"`
	Cgroup     string   `json:"cgroup,omitempty"`
}

// Leftover is a model server process that an earlier agent (or an earlier
// Runtime on the same LogsDir) started and did not see end.
type Leftover struct {
	ID         string
	Deployment string
	Model      string
	Version    uint64
	PID        int
	Addr       string
	// GPUs it was given: release them in the allocator once it is gone.
	GPUs []string
	// Running: the process still runs (checked by pid and start time).
	Running bool
}

func (in *instance) writeRecord(p *process) {
	ticks, err := procStartTicks(p.pid)
	if err != nil {
		in.rt.cfg.Logger.Warn("instance process not recorded; a restarted agent will not find it", "instance", in.id, "err", err)
		return
	}
	rec := processRecord{
		ID: in.id, Deployment: in.spec.Deployment, Model: in.spec.Model, Version: in.spec.Version,
		PID: p.pid, StartTicks: ticks, Addr: in.addr, GPUs: in.spec.GPUs,
	}
	if in.cgroup != nil {
		rec.Cgroup = in.cgroup.dir
	}
	b, _ := json.Marshal(rec)
	if err := atomicfile.Write(filepath.Join(in.rt.cfg.LogsDir, in.id, recordFile), b, 0o640); err != nil {
		in.rt.cfg.Logger.Warn("instance process not recorded; a restarted agent will not find it", "instance", in.id, "err", err)
	}
}

func (in *instance) removeRecord() {
	_ = os.Remove(filepath.Join(in.rt.cfg.LogsDir, in.id, recordFile))
}

// Leftovers lists the processes recorded under LogsDir that are not this
// runtime's instances. Records of processes that are gone are listed with
// Running false and removed.
func (r *Runtime) Leftovers() ([]Leftover, error) {
	recs, err := r.leftoverRecords()
	if err != nil {
		return nil, err
	}
	out := make([]Leftover, 0, len(recs))
	for _, rec := range recs {
		l := rec.leftover()
		if !l.Running {
			_ = os.Remove(filepath.Join(r.cfg.LogsDir, rec.ID, recordFile))
		}
		out = append(out, l)
	}
	return out, nil
}

// KillLeftovers kills every leftover process with its process group and
// cgroup, waits until they are gone or ctx ends, and returns them all,
// so that the caller can release their GPUs.
func (r *Runtime) KillLeftovers(ctx context.Context) ([]Leftover, error) {
	recs, err := r.leftoverRecords()
	if err != nil {
		return nil, err
	}
	var out []Leftover
	for _, rec := range recs {
		l := rec.leftover()
		if l.Running {
			r.cfg.Logger.Info("killing a leftover instance process", "instance", rec.ID, "pid", rec.PID)
			killGroup(rec.PID, syscall.SIGKILL)
			if rec.Cgroup != "" {
				(&cgroup{dir: rec.Cgroup}).kill()
			}
			if err := r.waitGone(ctx, rec); err != nil {
				return out, fmt.Errorf("kill leftover %s (pid %d): %w", rec.ID, rec.PID, err)
			}
		}
		if rec.Cgroup != "" {
			_ = os.Remove(rec.Cgroup)
		}
		_ = os.Remove(filepath.Join(r.cfg.LogsDir, rec.ID, recordFile))
		out = append(out, l)
	}
	return out, nil
}

func (r *Runtime) waitGone(ctx context.Context, rec processRecord) error {
	for rec.running() {
		t := r.cfg.Clock.NewTimer(20 * time.Millisecond)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	return nil
}

func (r *Runtime) leftoverRecords() ([]processRecord, error) {
	entries, err := os.ReadDir(r.cfg.LogsDir)
	if err != nil {
		return nil, fmt.Errorf("leftovers: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var recs []processRecord
	for _, e := range entries {
		if _, ours := r.instances[e.Name()]; ours || !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(r.cfg.LogsDir, e.Name(), recordFile))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("leftovers: %w", err)
		}
		var rec processRecord
		if err := json.Unmarshal(b, &rec); err != nil || rec.PID <= 0 || rec.ID != e.Name() {
			r.cfg.Logger.Warn("unreadable process record ignored", "path", filepath.Join(r.cfg.LogsDir, e.Name(), recordFile), "err", err)
			continue
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

func (rec processRecord) running() bool {
	ticks, err := procStartTicks(rec.PID)
	return err == nil && ticks == rec.StartTicks
}

func (rec processRecord) leftover() Leftover {
	return Leftover{
		ID: rec.ID, Deployment: rec.Deployment, Model: rec.Model, Version: rec.Version,
		PID: rec.PID, Addr: rec.Addr, GPUs: rec.GPUs, Running: rec.running(),
	}
}
