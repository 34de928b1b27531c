package hwprobe

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// boardProber identifies edge boards by their device tree, which servers do
// not have: a missing device tree is an answer, not a warning.
type boardProber struct{}

var _ Prober = boardProber{}

func (boardProber) Name() string { return "board" }

func (p boardProber) Probe(_ context.Context, env *Env, inv *Inventory) error {
	model, err := fs.ReadFile(env.FS, "proc/device-tree/model")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	b := &Board{Model: strings.TrimSpace(strings.TrimRight(string(model), "\x00"))}
	// compatible is a NUL-separated list, most specific first:
	// "nvidia,p3737-0000+p3701-0005", ..., "nvidia,tegra234".
	if compat, err := fs.ReadFile(env.FS, "proc/device-tree/compatible"); err == nil {
		for _, c := range strings.Split(string(compat), "\x00") {
			if c != "" {
				b.Compatible = append(b.Compatible, c)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		inv.AddWarning(p.Name(), err)
	}
	b.Family = boardFamily(b)
	if b.Family == FamilyJetson {
		rel, err := readString(env.FS, "etc/nv_tegra_release")
		switch {
		case err == nil:
			if b.L4TRelease, err = parseL4TRelease(rel); err != nil {
				inv.AddWarning(p.Name(), err)
			}
		case !errors.Is(err, fs.ErrNotExist):
			// A Jetson without the file runs a distribution other than
			// Jetson Linux, so its absence is no warning.
			inv.AddWarning(p.Name(), err)
		}
	}
	inv.Board = b
	return nil
}

func boardFamily(b *Board) string {
	for _, c := range b.Compatible {
		switch {
		case strings.HasPrefix(c, "nvidia,tegra"):
			return FamilyJetson
		case strings.HasPrefix(c, "raspberrypi,"):
			return FamilyRaspberryPi
		}
	}
	switch {
	case strings.Contains(b.Model, "Jetson"):
		return FamilyJetson
	case strings.HasPrefix(b.Model, "Raspberry Pi"):
		return FamilyRaspberryPi
	}
	return ""
}

// parseL4TRelease turns the first line of /etc/nv_tegra_release,
// "# R36 (release), REVISION: 3.0, GCID: ...", into "36.3.0".
func parseL4TRelease(s string) (string, error) {
	line, _, _ := strings.Cut(s, "\n")
	var major, revision string
	for _, field := range strings.Split(line, ",") {
		field = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(field), "#"))
		if r, ok := strings.CutPrefix(field, "REVISION:"); ok {
			revision = strings.TrimSpace(r)
		} else if r, ok := strings.CutPrefix(field, "R"); ok {
			major, _, _ = strings.Cut(r, " ")
		}
	}
	if major == "" || revision == "" {
		return "", fmt.Errorf("nv_tegra_release: unrecognised %q", line)
	}
	return major + "." + revision, nil
}
