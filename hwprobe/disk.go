package hwprobe

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// diskUsage is what statfs(2) says about a filesystem.
type diskUsage struct {
	TotalBytes, FreeBytes uint64
}

// diskProber reports the filesystem that holds the data directory: models
// are cached there, so its free space decides which versions fit.
type diskProber struct {
	// statfs is a field so tests can stand in for the syscall.
	statfs func(path string) (diskUsage, error)
}

var _ Prober = diskProber{}

func (diskProber) Name() string { return "disk" }

func (p diskProber) Probe(_ context.Context, env *Env, inv *Inventory) error {
	if env.DataDir == "" {
		return nil
	}
	// On first start the data directory may not exist yet; the filesystem
	// it will be created on is the one that matters.
	dir := filepath.Clean(env.DataDir)
	u, err := p.statfs(dir)
	for errors.Is(err, fs.ErrNotExist) && dir != filepath.Dir(dir) {
		dir = filepath.Dir(dir)
		u, err = p.statfs(dir)
	}
	if err != nil {
		return fmt.Errorf("statfs %s: %w", env.DataDir, err)
	}
	d := Disk{Path: env.DataDir, TotalBytes: u.TotalBytes, FreeBytes: u.FreeBytes}
	if lines, err := readLines(env.FS, "proc/self/mountinfo"); err != nil {
		inv.AddWarning(p.Name(), err)
	} else {
		d.MountPoint, d.FSType = mountFor(lines, dir)
	}
	inv.Disks = append(inv.Disks, d)
	return nil
}

// mountFor finds the mount holding dir in /proc/self/mountinfo: the one with
// the longest mount point that is a prefix of dir. Later mounts hide earlier
// ones at the same point, so ties go to the later line.
func mountFor(lines []string, dir string) (mountPoint, fsType string) {
	for _, line := range lines {
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 1 {
			continue
		}
		mp := unescapeMount(f[4])
		if !underDir(dir, mp) || len(mp) < len(mountPoint) {
			continue
		}
		mountPoint, fsType = mp, g[0]
	}
	return mountPoint, fsType
}

// underDir reports whether path is dir or inside it.
func underDir(path, dir string) bool {
	return dir == "/" || path == dir || strings.HasPrefix(path, dir+"/")
}

// unescapeMount undoes the octal escapes (\040 for a space) that mountinfo
// uses for white space and backslashes in paths.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
