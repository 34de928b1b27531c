package hwprobe

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// containerProber reads the cgroup v2 limits that apply to the agent: inside
// a container, or a systemd unit with CPUQuota= or MemoryMax=, these rather
// than /proc/cpuinfo and /proc/meminfo say what the agent can use.
type containerProber struct{}

var _ Prober = containerProber{}

func (containerProber) Name() string { return "container" }

func (p containerProber) Probe(_ context.Context, env *Env, inv *Inventory) error {
	lines, err := readLines(env.FS, "proc/self/cgroup")
	if err != nil {
		return err
	}
	if _, err := fs.Stat(env.FS, "sys/fs/cgroup/cgroup.controllers"); err != nil {
		// cgroup v1 (or hybrid) puts each controller in its own tree;
		// reading those is not worth it for the few hosts that still run it.
		inv.Container.CgroupVersion = 1
		return fmt.Errorf("cgroup v1: limits not read")
	}
	cg, ok := unifiedCgroup(lines)
	if !ok {
		return fmt.Errorf("proc/self/cgroup: no cgroup v2 entry")
	}
	l := ContainerLimits{CgroupVersion: 2, CgroupPath: cg}

	// Limits nest: a container inside a pod inside a slice gets the
	// tightest of them all, so walk up to the root. Inside a cgroup
	// namespace the path is "/" and the container's own files sit at the
	// top of /sys/fs/cgroup.
	for dir := cg; ; dir = path.Dir(dir) {
		base := path.Join("sys/fs/cgroup", dir)
		if v, err := readString(env.FS, base+"/cpu.max"); err == nil {
			q, err := parseCPUMax(v)
			if err != nil {
				inv.AddWarning(p.Name(), err)
			} else if q > 0 && (l.CPUQuota == 0 || q < l.CPUQuota) {
				l.CPUQuota = q
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			inv.AddWarning(p.Name(), err)
		}
		if v, err := readString(env.FS, base+"/memory.max"); err == nil {
			m, err := parseMemoryMax(v)
			if err != nil {
				inv.AddWarning(p.Name(), err)
			} else if m > 0 && (l.MemoryMaxBytes == 0 || m < l.MemoryMaxBytes) {
				l.MemoryMaxBytes = m
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			inv.AddWarning(p.Name(), err)
		}
		if dir == "/" {
			break
		}
	}
	// cpuset.cpus.effective already folds in every ancestor's cpuset.
	if v, err := readString(env.FS, path.Join("sys/fs/cgroup", cg, "cpuset.cpus.effective")); err == nil && v != "" {
		n, err := countCPUList(v)
		if err != nil {
			inv.AddWarning(p.Name(), err)
		}
		l.CPUSetCPUs = n
	}
	inv.Container = l
	return nil
}

// unifiedCgroup finds the cgroup v2 path ("0::/path") in /proc/self/cgroup.
func unifiedCgroup(lines []string) (string, bool) {
	for _, line := range lines {
		if cg, ok := strings.CutPrefix(line, "0::"); ok && strings.HasPrefix(cg, "/") {
			// A cgroup removed under us reads "/path (deleted)".
			return path.Clean(strings.TrimSuffix(cg, " (deleted)")), true
		}
	}
	return "", false
}

// parseCPUMax turns cpu.max ("QUOTA PERIOD", or "max PERIOD") into CPUs;
// zero means unlimited.
func parseCPUMax(s string) (float64, error) {
	quota, period, _ := strings.Cut(s, " ")
	if quota == "max" {
		return 0, nil
	}
	q, err := strconv.ParseFloat(quota, 64)
	if err != nil {
		return 0, fmt.Errorf("cpu.max %q: %w", s, err)
	}
	per := 100000.0 // the kernel's default period
	if period != "" {
		if per, err = strconv.ParseFloat(period, 64); err != nil || per <= 0 {
			return 0, fmt.Errorf("cpu.max %q: bad period", s)
		}
	}
	return q / per, nil
}

// parseMemoryMax turns memory.max into bytes; zero means unlimited.
func parseMemoryMax(s string) (uint64, error) {
	if s == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("memory.max %q: %w", s, err)
	}
	return n, nil
}

// countCPUList counts the CPUs in a kernel CPU list such as "0-3,8,10-11".
func countCPUList(s string) (int, error) {
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("cpu list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0, fmt.Errorf("cpu list %q: bad range %q", s, part)
			}
		}
		n += b - a + 1
	}
	return n, nil
}
