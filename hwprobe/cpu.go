package hwprobe

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// cpuProber reads the CPU model, topology, frequency and ISA flags from
// /proc/cpuinfo, and the maximum frequency from cpufreq where the kernel
// has it.
type cpuProber struct{}

var _ Prober = cpuProber{}

func (cpuProber) Name() string { return "cpu" }

// mlFlags are the ISA extensions that inference runtimes choose kernels by;
// the other hundred-odd flags only bloat the inventory.
var mlFlags = map[string]bool{
	// x86
	"sse4_2": true, "avx": true, "avx2": true, "fma": true, "f16c": true,
	"avx_vnni": true, "avx512f": true, "avx512bw": true, "avx512_vnni": true,
	"avx512_bf16": true, "avx512_fp16": true,
	"amx_tile": true, "amx_bf16": true, "amx_int8": true,
	// Arm ("neon" on 32-bit kernels, "asimd" on 64-bit ones)
	"neon": true, "asimd": true, "asimdhp": true, "asimddp": true,
	"i8mm": true, "bf16": true, "sve": true, "sve2": true,
}

// armImplementers and armParts name the "CPU implementer" and "CPU part"
// codes that arm64 kernels print instead of a model name; only parts seen
// on edge boards and Arm servers are listed.
var (
	armImplementers = map[string]string{
		"0x41": "ARM", "0x4e": "NVIDIA", "0x51": "Qualcomm", "0x61": "Apple",
		"0x48": "HiSilicon", "0xc0": "Ampere",
	}
	armParts = map[string]string{
		"0x41/0xd03": "Cortex-A53", "0x41/0xd05": "Cortex-A55",
		"0x41/0xd07": "Cortex-A57", "0x41/0xd08": "Cortex-A72",
		"0x41/0xd0b": "Cortex-A76", "0x41/0xd41": "Cortex-A78",
		"0x41/0xd42": "Cortex-A78AE", "0x41/0xd0c": "Neoverse-N1",
		"0x41/0xd40": "Neoverse-V1", "0x41/0xd4f": "Neoverse-V2",
		"0x4e/0x004": "Carmel",
	}
)

func (cpuProber) Probe(_ context.Context, env *Env, inv *Inventory) error {
	lines, err := readLines(env.FS, "proc/cpuinfo")
	if err != nil {
		return err
	}
	c, err := parseCPUInfo(lines)
	if err != nil {
		return err
	}
	// cpufreq gives the rated maximum, where cpuinfo's "cpu MHz" is the
	// current clock of an idle core; arm64 cpuinfo has no clock at all.
	if khz, err := readString(env.FS, "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"); err == nil {
		if v, err := strconv.ParseFloat(khz, 64); err == nil && v > 0 {
			c.MHz = v / 1000
		}
	}
	inv.CPU = c
	return nil
}

// parseCPUInfo reads the per-processor blocks of /proc/cpuinfo. x86 blocks
// carry model, vendor and topology; arm64 blocks carry implementer and part
// codes and no topology, so every processor counts as one core of one
// socket there.
func parseCPUInfo(lines []string) (CPU, error) {
	var c CPU
	var first map[string]string // the first processor's fields
	sockets := map[string]bool{}
	cores := map[string]bool{}
	block := map[string]string{}
	flush := func() {
		if _, ok := block["processor"]; !ok {
			block = map[string]string{}
			return
		}
		c.Threads++
		if first == nil {
			first = block
		}
		if id, ok := block["physical id"]; ok {
			sockets[id] = true
			cores[id+"/"+block["core id"]] = true
		}
		if mhz, err := strconv.ParseFloat(block["cpu MHz"], 64); err == nil && mhz > c.MHz {
			c.MHz = mhz
		}
		block = map[string]string{}
	}
	for _, line := range lines {
		if strings.TrimSpace(line) == "" {
			flush()
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		block[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	flush()
	if c.Threads == 0 {
		return CPU{}, fmt.Errorf("cpuinfo: no processors listed")
	}
	c.Sockets, c.Cores = max(len(sockets), 1), len(cores)
	if c.Cores == 0 {
		c.Cores = c.Threads
	}

	switch first["vendor_id"] {
	case "GenuineIntel":
		c.Vendor = "Intel"
	case "AuthenticAMD":
		c.Vendor = "AMD"
	default:
		c.Vendor = first["vendor_id"]
	}
	c.Model = first["model name"]
	if impl := first["CPU implementer"]; impl != "" {
		c.Vendor = armImplementers[impl]
		part := first["CPU part"]
		if name, ok := armParts[impl+"/"+part]; ok {
			c.Model = strings.TrimSpace(c.Vendor + " " + name)
		} else if c.Model == "" {
			c.Model = fmt.Sprintf("implementer %s part %s", impl, part)
		}
	}

	flags := first["flags"] // x86
	if flags == "" {
		flags = first["Features"] // Arm
	}
	for _, f := range strings.Fields(flags) {
		if mlFlags[f] {
			c.Flags = append(c.Flags, f)
		}
	}
	slices.Sort(c.Flags)
	return c, nil
}
