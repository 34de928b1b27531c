package agent

import (
	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/hwprobe"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// InventoryProto is a probe's findings as the agent registers them, the
// NodeInventory `drover node show` reads back; `drover-agent probe -o
// json` prints it.
func InventoryProto(inv *hwprobe.Inventory) *droverv1.NodeInventory { return inventoryProto(inv) }

// inventoryProto maps a probe's findings onto the wire, field by field.
// Per-GPU samples stay behind: they are telemetry, not inventory.
func inventoryProto(inv *hwprobe.Inventory) *droverv1.NodeInventory {
	if inv == nil {
		return nil
	}
	out := &droverv1.NodeInventory{
		Host: &droverv1.HostInfo{
			Hostname:  inv.Host.Hostname,
			Os:        inv.Host.OS,
			OsId:      inv.Host.OSID,
			OsVersion: inv.Host.OSVersion,
			Kernel:    inv.Host.Kernel,
			Arch:      inv.Host.Arch,
			BootId:    inv.Host.BootID,
		},
		Cpu: &droverv1.CPUInfo{
			Model:   inv.CPU.Model,
			Vendor:  inv.CPU.Vendor,
			Sockets: uint32(inv.CPU.Sockets),
			Cores:   uint32(inv.CPU.Cores),
			Threads: uint32(inv.CPU.Threads),
			Mhz:     inv.CPU.MHz,
			Flags:   inv.CPU.Flags,
		},
		Memory: &droverv1.MemoryInfo{
			TotalBytes:     inv.Memory.TotalBytes,
			AvailableBytes: inv.Memory.AvailableBytes,
		},
		Container: &droverv1.ContainerLimits{
			CgroupVersion:  uint32(inv.Container.CgroupVersion),
			CgroupPath:     inv.Container.CgroupPath,
			CpuQuota:       inv.Container.CPUQuota,
			CpusetCpus:     uint32(inv.Container.CPUSetCPUs),
			MemoryMaxBytes: inv.Container.MemoryMaxBytes,
		},
		GpuProbe: &droverv1.GPUProbe{
			Available:         inv.GPUProbe.Available,
			Reason:            inv.GPUProbe.Reason,
			DriverVersion:     inv.GPUProbe.DriverVersion,
			CudaDriverVersion: inv.GPUProbe.CUDADriverVersion,
		},
	}
	for _, d := range inv.Disks {
		out.Disks = append(out.Disks, &droverv1.DiskInfo{
			Path:       d.Path,
			MountPoint: d.MountPoint,
			FsType:     d.FSType,
			TotalBytes: d.TotalBytes,
			FreeBytes:  d.FreeBytes,
		})
	}
	if b := inv.Board; b != nil {
		out.Board = &droverv1.BoardInfo{
			Model:      b.Model,
			Compatible: b.Compatible,
			Family:     b.Family,
			L4TRelease: b.L4TRelease,
		}
	}
	for _, g := range inv.GPUs {
		pg := &droverv1.GPUInfo{
			Index:             uint32(g.Index),
			Uuid:              g.UUID,
			Name:              g.Name,
			PciBusId:          g.PCIBusID,
			MemoryTotalBytes:  g.MemoryTotalBytes,
			ComputeCapability: g.ComputeCapability,
			PowerLimitMw:      g.PowerLimitMilliwatts,
			ParentUuid:        g.ParentUUID,
		}
		if g.MIG != nil {
			pg.MigEnabled, pg.MigPending = g.MIG.Current, g.MIG.Pending
		}
		out.Gpus = append(out.Gpus, pg)
	}
	for _, w := range inv.Warnings {
		out.Warnings = append(out.Warnings, w.String())
	}
	return out
}

// staticFacts returns inv without the readings that change by themselves
// (free memory and disk, the probe's warnings), so that two probes of an
// unchanged machine compare equal.
func staticFacts(inv *droverv1.NodeInventory) *droverv1.NodeInventory {
	s := proto.CloneOf(inv)
	if s == nil {
		return nil
	}
	if s.Memory != nil {
		s.Memory.AvailableBytes = 0
	}
	for _, d := range s.Disks {
		d.FreeBytes = 0
	}
	s.Warnings = nil
	return s
}

// sameStaticFacts reports whether a and b describe the same hardware.
func sameStaticFacts(a, b *droverv1.NodeInventory) bool {
	return proto.Equal(staticFacts(a), staticFacts(b))
}
