// Package hwprobe is hardware discovery for the agent: a registry of small
// probers, each filling its part of one Inventory, after Nomad's
// fingerprint pattern.
//
// Probers read Linux files through an fs.FS rooted at Options.Root, so tests
// point them at a fake /proc and /sys tree, and NVIDIA GPUs through an NVML
// handle, so tests hand them go-nvml's mock. A prober that fails records a
// Warning; the probe as a whole still succeeds, because a machine whose
// temperature sensor or NVIDIA driver is missing is still a machine that can
// run models.
package hwprobe

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Errors returned by this package, wrapped with the operation that failed;
// test for them with errors.Is.
var (
	// ErrInvalidOptions means Options.Validate rejected the options.
	ErrInvalidOptions = errors.New("invalid options")
	// ErrNVMLUnavailable means NVML cannot be used on this machine: the
	// binary was built without cgo, the NVIDIA driver is not installed, or
	// NVML failed to initialise.
	ErrNVMLUnavailable = errors.New("NVML unavailable")
	// ErrClosed means a Sampler was used after Close.
	ErrClosed = errors.New("sampler closed")
)

// Prober fills one part of an Inventory. Probers run one at a time, in
// registry order, so a prober may read what earlier ones wrote. A returned
// error becomes a Warning under the prober's Name; a prober that can read
// some facts but not others records the misses with Inventory.AddWarning and
// returns nil.
type Prober interface {
	Name() string
	Probe(ctx context.Context, env *Env, inv *Inventory) error
}

// Env is what probers read from.
type Env struct {
	// FS is the machine's root filesystem; paths are unrooted
	// ("proc/cpuinfo"), as fs.FS requires.
	FS fs.FS
	// DataDir is the agent's data directory as the agent process sees it
	// (statfs needs a real path, so it is not resolved through FS). Empty
	// skips the disk prober.
	DataDir string
	// NVML is the handle the GPU prober uses; nil means no GPUs.
	NVML NVML
}

// Options configures Probe.
type Options struct {
	// Root is the directory that stands for "/" when reading /proc, /sys
	// and /etc: "/" in production, a testdata tree in tests, or the host's
	// root mounted into a container.
	Root string
	// DataDir is the agent's data directory; its filesystem is reported as
	// a disk. It need not exist yet: the nearest existing parent is used.
	DataDir string
	// NVML is the NVML handle; nil means a fresh SystemNVML. An agent that
	// also samples GPUs passes the handle it gives NewSampler.
	NVML NVML
	// Probers replaces DefaultProbers when non-nil.
	Probers []Prober
}

// DefaultOptions returns the options for probing the machine the agent runs
// on.
func DefaultOptions() Options {
	return Options{Root: "/", DataDir: "/var/lib/drover"}
}

// Validate reports whether the options can be used.
func (o Options) Validate() error {
	if o.Root == "" {
		return fmt.Errorf("%w: Root is empty (use \"/\" for this machine)", ErrInvalidOptions)
	}
	if o.DataDir != "" && !filepath.IsAbs(o.DataDir) {
		return fmt.Errorf("%w: DataDir %q is not absolute", ErrInvalidOptions, o.DataDir)
	}
	seen := make(map[string]bool, len(o.Probers))
	for i, p := range o.Probers {
		if p == nil {
			return fmt.Errorf("%w: Probers[%d] is nil", ErrInvalidOptions, i)
		}
		// Warnings are keyed by prober name, so two probers with one name
		// would make a warning ambiguous.
		if seen[p.Name()] {
			return fmt.Errorf("%w: two probers named %q", ErrInvalidOptions, p.Name())
		}
		seen[p.Name()] = true
	}
	return nil
}

// DefaultProbers returns the probers Probe runs when Options.Probers is nil.
// The slice is new on every call, so callers may append their own.
func DefaultProbers() []Prober {
	return []Prober{
		hostProber{},
		cpuProber{},
		memoryProber{},
		containerProber{},
		diskProber{statfs: statfs},
		boardProber{},
		gpuProber{},
	}
}

// Probe runs every prober and returns what they found. It fails only for
// invalid options or a cancelled ctx; everything a prober could not read is
// in Inventory.Warnings.
func Probe(ctx context.Context, opts Options) (*Inventory, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("probe: %w", err)
	}
	env := &Env{FS: os.DirFS(opts.Root), DataDir: opts.DataDir, NVML: opts.NVML}
	if env.NVML == nil {
		env.NVML = SystemNVML()
	}
	probers := opts.Probers
	if probers == nil {
		probers = DefaultProbers()
	}
	inv := &Inventory{}
	for _, p := range probers {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("probe: %w", err)
		}
		runProber(ctx, p, env, inv)
	}
	return inv, nil
}

// runProber runs one prober, turning its error, or its panic, into a
// warning: a bug in one prober (or a driver library misbehaving under it)
// must not take the agent down.
func runProber(ctx context.Context, p Prober, env *Env, inv *Inventory) {
	defer func() {
		if r := recover(); r != nil {
			inv.AddWarning(p.Name(), fmt.Errorf("panic: %v", r))
		}
	}()
	if err := p.Probe(ctx, env, inv); err != nil {
		inv.AddWarning(p.Name(), err)
	}
}
