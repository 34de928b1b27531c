package hwprobe

import "syscall"

// statfs asks the kernel about the filesystem holding path.
func statfs(path string) (diskUsage, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return diskUsage{}, err
	}
	// Frsize is the unit of the block counts; Bsize only the preferred I/O
	// size, though the two agree on every common Linux filesystem.
	unit := uint64(st.Frsize)
	if unit == 0 {
		unit = uint64(st.Bsize)
	}
	return diskUsage{TotalBytes: st.Blocks * unit, FreeBytes: st.Bavail * unit}, nil
}
