package exec

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupManager makes a cgroup v2 child per instance under a parent the
// agent may write: its own cgroup where that is delegated to it (systemd
// Delegate=yes, a container with a private cgroup namespace), or the one
// configured.
type cgroupManager struct {
	parent string // "" when cgroups are unavailable
	reason string // why they are, for the warning
	// own: parent is the agent's own cgroup, which it may leave for a
	// leaf of its own to make room for controllers.
	own bool

	mu sync.Mutex // serialises enabling controllers (and the move)
}

// agentLeaf is the cgroup, under its own, that the agent moves itself to
// when the kernel's no-internal-processes rule keeps it from enabling
// controllers where it runs (systemd's advice for Delegate=yes services).
const agentLeaf = "drover-agent"

// cgroup is one instance's cgroup.
type cgroup struct {
	dir string
	fd  int // an open descriptor of dir, for CLONE_INTO_CGROUP
}

func newCgroupManager(parent string) *cgroupManager {
	if parent == "none" {
		return &cgroupManager{reason: "cgroups are turned off in the runtime's configuration"}
	}
	own := parent == ""
	if own {
		p, err := ownCgroup()
		if err != nil {
			return &cgroupManager{reason: err.Error()}
		}
		parent = p
	}
	if _, err := os.Stat(filepath.Join(parent, "cgroup.procs")); err != nil {
		return &cgroupManager{reason: fmt.Sprintf("%s is not a cgroup v2 directory: %v", parent, err)}
	}
	if err := unix.Access(parent, unix.W_OK); err != nil {
		return &cgroupManager{reason: fmt.Sprintf("the agent may not create cgroups in %s (%v): delegate it a cgroup subtree", parent, err)}
	}
	return &cgroupManager{parent: parent, own: own}
}

// ownCgroup finds the agent's cgroup v2 directory from /proc/self/cgroup
// and the cgroup2 mount in /proc/self/mountinfo.
func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("find the agent's cgroup: %w", err)
	}
	var rel string
	found := false
	for line := range strings.Lines(string(b)) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			rel, found = p, true
		}
	}
	if !found {
		return "", errors.New("the agent is not in a cgroup v2 hierarchy (no 0:: line in /proc/self/cgroup)")
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find the cgroup2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional…] - fstype source super
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		fields := strings.Fields(pre)
		if len(fields) < 5 {
			continue
		}
		root, mnt := unescapeMount(fields[3]), unescapeMount(fields[4])
		sub, ok := strings.CutPrefix(rel, root)
		if !ok {
			continue // the agent's cgroup is outside this mount's view
		}
		return filepath.Join(mnt, sub), nil
	}
	return "", errors.New("no cgroup2 file system is mounted where the agent can see its cgroup")
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// create makes the instance's cgroup and applies the limits asked for.
// The cgroup is useful without limits (a kill reaches every process in
// it), so a limit that cannot be applied costs only the limit; warning
// says which and why, and is empty when everything asked for was applied.
func (m *cgroupManager) create(id string, memoryBytes uint64, cpus float64) (cg *cgroup, warning string) {
	limits := memoryBytes > 0 || cpus > 0
	notApplied := func(why string) string {
		if !limits {
			return ""
		}
		return "cgroup limits not applied: " + why
	}
	if m.parent == "" {
		return nil, notApplied(m.reason)
	}
	var want []string
	if memoryBytes > 0 {
		want = append(want, "memory")
	}
	if cpus > 0 {
		want = append(want, "cpu")
	}
	limitErr := m.enable(want)
	dir := filepath.Join(m.parent, "drover-"+id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, notApplied(fmt.Sprintf("create cgroup %s: %v", dir, err))
	}
	if limitErr == nil {
		limitErr = writeLimits(dir, memoryBytes, cpus)
	}
	// One OOM kill takes the whole instance, not a random worker of it.
	_ = os.WriteFile(filepath.Join(dir, "memory.oom.group"), []byte("1"), 0)
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		_ = os.Remove(dir)
		return nil, notApplied(fmt.Sprintf("open cgroup %s: %v", dir, err))
	}
	cg = &cgroup{dir: dir, fd: fd}
	if limitErr != nil {
		return cg, notApplied(limitErr.Error())
	}
	return cg, ""
}

// enable makes the controllers available to the parent's children.
func (m *cgroupManager) enable(controllers []string) error {
	if len(controllers) == 0 {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(m.parent, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("read controllers of %s: %w", m.parent, err)
	}
	have := strings.Fields(string(b))
	for _, c := range controllers {
		if !slices.Contains(have, c) {
			return fmt.Errorf("controller %s is not delegated to %s (it has: %s)", c, m.parent, strings.Join(have, " "))
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	b, _ = os.ReadFile(filepath.Join(m.parent, "cgroup.subtree_control"))
	on := strings.Fields(string(b))
	for _, c := range controllers {
		if slices.Contains(on, c) {
			continue
		}
		err := m.writeSubtreeControl(c)
		if errors.Is(err, syscall.EBUSY) && m.own {
			// A non-root cgroup with processes in it cannot hand
			// controllers to its children; the agent is such a process.
			if merr := m.moveSelfToLeaf(); merr != nil {
				return fmt.Errorf("enable %s in %s: %w (and moving the agent to a leaf failed: %v)", c, m.parent, err, merr)
			}
			err = m.writeSubtreeControl(c)
		}
		if err != nil {
			hint := ""
			if errors.Is(err, syscall.EBUSY) {
				hint = " (the cgroup holds processes other than the agent; run the agent in a leaf of a delegated subtree and give the subtree as CgroupParent)"
			}
			return fmt.Errorf("enable %s in %s: %w%s", c, m.parent, err, hint)
		}
	}
	return nil
}

func (m *cgroupManager) writeSubtreeControl(controller string) error {
	return os.WriteFile(filepath.Join(m.parent, "cgroup.subtree_control"), []byte("+"+controller), 0)
}

// moveSelfToLeaf moves the agent's process (all its threads) from its own
// cgroup into agentLeaf under it.
func (m *cgroupManager) moveSelfToLeaf() error {
	leaf := filepath.Join(m.parent, agentLeaf)
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
}

func writeLimits(dir string, memoryBytes uint64, cpus float64) error {
	if memoryBytes > 0 {
		if err := os.WriteFile(filepath.Join(dir, "memory.max"), []byte(strconv.FormatUint(memoryBytes, 10)), 0); err != nil {
			return fmt.Errorf("set memory.max: %w", err)
		}
	}
	if cpus > 0 {
		const period = 100000 // µs, the kernel's default
		quota := max(int64(cpus*period), 1000)
		if err := os.WriteFile(filepath.Join(dir, "cpu.max"), fmt.Appendf(nil, "%d %d", quota, period), 0); err != nil {
			return fmt.Errorf("set cpu.max: %w", err)
		}
	}
	return nil
}

// kill ends every process in the cgroup, those that left the process
// group included.
func (c *cgroup) kill() {
	if err := os.WriteFile(filepath.Join(c.dir, "cgroup.kill"), []byte("1"), 0); err == nil {
		return
	}
	// Kernels before 5.14 have no cgroup.kill.
	b, _ := os.ReadFile(filepath.Join(c.dir, "cgroup.procs"))
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// remove kills what is left and removes the cgroup. The kernel refuses
// while killed processes are still exiting, so it retries briefly; this
// is clean-up after the instance ended, not a wait anyone observes.
func (c *cgroup) remove() {
	syscall.Close(c.fd)
	c.kill()
	for range 100 {
		if err := os.Remove(c.dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
