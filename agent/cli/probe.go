package cli

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/hwprobe"
	"github.com/droverhq/drover/internal/protoout"
	"github.com/droverhq/drover/internal/units"
)

func newProbeCommand() *cobra.Command {
	var output, dataDir, root string
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Print this machine's hardware inventory, without joining anything",
		Long: `Probe the hardware as the agent does at start, and print what it found: the
inventory the agent would register. Nothing is sent anywhere and nothing is
written.

The table shows the host, CPU, memory, the disk that holds the data
directory, cgroup limits (a container's or a systemd unit's), the edge board,
and NVIDIA GPUs with their memory and MIG mode. Where no GPU is listed it says
why: no NVIDIA driver, or a binary built without cgo (NVML needs it).

-o json prints the inventory exactly as the agent registers it, warnings
included, in the API's JSON: the same field names as ` + "`drover node show -o json`" + `
(lowerCamelCase, 64-bit numbers as strings).`,
		Example: `  drover-agent probe
  drover-agent probe -o json | jq '.gpus[] | {name, memoryTotalBytes}'
  drover-agent probe --root /host    # in a container, with the host's / mounted at /host`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageErr(cmd, fmt.Errorf("-o %s: want table or json", output))
			}
			dir, err := filepath.Abs(dataDir)
			if err != nil {
				return usageErr(cmd, fmt.Errorf("--data-dir %q: %w", dataDir, err))
			}
			inv, err := hwprobe.Probe(cmd.Context(), hwprobe.Options{Root: root, DataDir: dir, NVML: hwprobe.SystemNVML()})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				return protoout.WriteJSON(out, agent.InventoryProto(inv))
			}
			return printInventory(out, inv)
		},
	}
	cmd.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageErr(cmd, err) })
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", "table", "output `FORMAT`: table or json")
	f.StringVar(&dataDir, "data-dir", agent.DefaultDataDir, "`DIR` whose disk to report")
	f.StringVar(&root, "root", "/", "`DIR` that stands for / when reading /proc, /sys and /etc")
	return cmd
}

// printInventory writes inv as a table for people.
func printInventory(w io.Writer, inv *hwprobe.Inventory) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	field := func(name, value string) {
		if value == "" {
			value = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\n", name, value)
	}
	h := inv.Host
	field("Host", join(" · ", h.Hostname, h.OS, prefixed("kernel ", h.Kernel), h.Arch))

	c := inv.CPU
	var counts []string
	if c.Sockets > 1 {
		counts = append(counts, fmt.Sprintf("%d sockets", c.Sockets))
	}
	if c.Cores > 0 {
		counts = append(counts, fmt.Sprintf("%d cores", c.Cores))
	}
	if c.Threads > 0 {
		counts = append(counts, fmt.Sprintf("%d threads", c.Threads))
	}
	mhz := ""
	if c.MHz > 0 {
		mhz = fmt.Sprintf("%.0f MHz", c.MHz)
	}
	field("CPU", join(" · ", c.Model, strings.Join(counts, ", "), mhz))
	if len(c.Flags) > 0 {
		field("CPU flags", strings.Join(c.Flags, " "))
	}

	mem := ""
	if m := inv.Memory; m.TotalBytes > 0 {
		mem = units.Bytes(m.TotalBytes)
		if m.AvailableBytes > 0 {
			mem += fmt.Sprintf(" (%s available)", units.Bytes(m.AvailableBytes))
		}
	}
	field("Memory", mem)

	if len(inv.Disks) == 0 {
		field("Disk", "")
	}
	for _, d := range inv.Disks {
		where := ""
		if d.MountPoint != "" {
			where = fmt.Sprintf(" (%s on %s)", cmpOr(d.FSType, "?"), d.MountPoint)
		}
		field("Disk", fmt.Sprintf("%s: %s free of %s%s", d.Path, units.Bytes(d.FreeBytes), units.Bytes(d.TotalBytes), where))
	}

	ct := inv.Container
	switch ct.CgroupVersion {
	case 0:
		field("Limits", "")
	case 1:
		field("Limits", "cgroup v1: not read")
	default:
		var limits []string
		if ct.CPUQuota > 0 {
			limits = append(limits, fmt.Sprintf("%g CPUs", ct.CPUQuota))
		}
		if ct.CPUSetCPUs > 0 {
			limits = append(limits, fmt.Sprintf("cpuset of %d CPUs", ct.CPUSetCPUs))
		}
		if ct.MemoryMaxBytes > 0 {
			limits = append(limits, units.Bytes(ct.MemoryMaxBytes)+" memory")
		}
		if len(limits) == 0 {
			limits = []string{"none"}
		}
		field("Limits", fmt.Sprintf("cgroup v%d %s: %s", ct.CgroupVersion, cmpOr(ct.CgroupPath, "/"), strings.Join(limits, ", ")))
	}

	if b := inv.Board; b != nil {
		field("Board", join(" · ", b.Model, b.Family, prefixed("L4T ", b.L4TRelease)))
	} else {
		field("Board", "")
	}

	gp := inv.GPUProbe
	physical := 0
	for _, g := range inv.GPUs {
		if g.ParentUUID == "" {
			physical++
		}
	}
	switch {
	case len(inv.GPUs) == 0 && gp.Reason != "":
		field("GPUs", "none: "+gp.Reason)
	case len(inv.GPUs) == 0:
		field("GPUs", "none"+prefixed(" · NVIDIA driver ", gp.DriverVersion))
	default:
		field("GPUs", fmt.Sprintf("%d%s", physical, prefixed(" · NVIDIA driver ", gp.DriverVersion)+prefixed(" · CUDA ", gp.CUDADriverVersion)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if len(inv.GPUs) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "INDEX\tNAME\tMEMORY\tCOMPUTE\tMIG\tUUID")
		for _, g := range inv.GPUs {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", g.Index, g.Name, units.Bytes(g.MemoryTotalBytes),
				cmpOr(g.ComputeCapability, "-"), migMode(g), g.UUID)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(inv.Warnings) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Warnings:")
		for _, wn := range inv.Warnings {
			fmt.Fprintf(w, "  %s\n", wn)
		}
	}
	return nil
}

// migMode describes a GPU's MIG mode for the table.
func migMode(g hwprobe.GPU) string {
	switch {
	case g.ParentUUID != "":
		return "instance of " + g.ParentUUID
	case g.MIG == nil:
		return "-"
	case g.MIG.Current == g.MIG.Pending:
		return onOff(g.MIG.Current)
	default:
		return onOff(g.MIG.Current) + " (" + onOff(g.MIG.Pending) + " after reset)"
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// join joins the non-empty parts with sep.
func join(sep string, parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, sep)
}

func prefixed(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
