//go:build !linux

package exec

// cgroupManager has nothing to manage where there are no cgroups.
type cgroupManager struct{}

type cgroup struct{ dir string }

func newCgroupManager(string) *cgroupManager { return &cgroupManager{} }

func (*cgroupManager) create(_ string, memoryBytes uint64, cpus float64) (*cgroup, string) {
	if memoryBytes > 0 || cpus > 0 {
		return nil, "cgroup limits not applied: cgroups exist only on Linux"
	}
	return nil, ""
}

func (*cgroup) kill()   {}
func (*cgroup) remove() {}
