package hwprobe

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// memoryProber reads total and available memory from /proc/meminfo.
type memoryProber struct{}

var _ Prober = memoryProber{}

func (memoryProber) Name() string { return "memory" }

func (memoryProber) Probe(_ context.Context, env *Env, inv *Inventory) error {
	lines, err := readLines(env.FS, "proc/meminfo")
	if err != nil {
		return err
	}
	for _, line := range lines {
		key, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch key {
		case "MemTotal":
			dst = &inv.Memory.TotalBytes
		case "MemAvailable":
			dst = &inv.Memory.AvailableBytes
		default:
			continue
		}
		// Values are in kibibytes whatever the "kB" says.
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return fmt.Errorf("meminfo %s: %w", key, err)
		}
		*dst = kb * 1024
	}
	if inv.Memory.TotalBytes == 0 {
		return fmt.Errorf("meminfo: no MemTotal")
	}
	return nil
}
