package hwprobe

import (
	"context"
	"errors"
	"io/fs"
	"runtime"
	"strconv"
	"strings"
)

// hostProber reads the hostname, kernel, boot id and operating system.
type hostProber struct{}

var _ Prober = hostProber{}

func (hostProber) Name() string { return "host" }

func (p hostProber) Probe(_ context.Context, env *Env, inv *Inventory) error {
	h := &inv.Host
	h.Arch = runtime.GOARCH
	// The hostname comes from /proc rather than os.Hostname so that it is
	// read from the same root as everything else.
	for _, f := range []struct {
		dst  *string
		name string
	}{
		{&h.Hostname, "proc/sys/kernel/hostname"},
		{&h.Kernel, "proc/sys/kernel/osrelease"},
		{&h.BootID, "proc/sys/kernel/random/boot_id"},
	} {
		v, err := readString(env.FS, f.name)
		if err != nil {
			inv.AddWarning(p.Name(), err)
			continue
		}
		*f.dst = v
	}
	osr, err := readOSRelease(env.FS)
	if err != nil {
		inv.AddWarning(p.Name(), err)
		return nil
	}
	h.OS, h.OSID, h.OSVersion = osr["PRETTY_NAME"], osr["ID"], osr["VERSION_ID"]
	if h.OS == "" {
		h.OS = osr["NAME"]
	}
	return nil
}

// readOSRelease parses os-release(5), which lives in /etc or, on some
// distributions, only in /usr/lib.
func readOSRelease(fsys fs.FS) (map[string]string, error) {
	lines, err := readLines(fsys, "etc/os-release")
	if errors.Is(err, fs.ErrNotExist) {
		lines, err = readLines(fsys, "usr/lib/os-release")
	}
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range lines {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		if uq, err := strconv.Unquote(v); err == nil {
			v = uq
		} else {
			v = strings.Trim(v, `'"`)
		}
		out[k] = v
	}
	return out, nil
}
