// Package gpu hands the node's GPUs and MIG instances to model instances,
// each to one holder at a time, and keeps the table on disk so that an
// agent that restarts while instances keep running does not hand their
// GPUs out again.
//
// Rules: a device is held by at most one holder. A physical GPU in MIG
// mode is never handed out whole: CUDA can use it only through its MIG
// instances. A MIG instance is not handed out while its parent is held
// whole, and a parent is not handed out whole while any of its MIG
// instances is held (which can happen only across a change of MIG mode,
// but the table outlives such changes).
//
// An Allocator is safe for concurrent use.
package gpu

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/droverhq/drover/internal/atomicfile"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Errors the allocator returns, wrapped with the detail.
var (
	// ErrInsufficient: the request cannot be met from the free devices;
	// the message lists what is free and who holds the rest.
	ErrInsufficient = errors.New("not enough free GPUs")
	// ErrHolderExists: the holder already holds devices; release them
	// first (one allocation per holder keeps release exact).
	ErrHolderExists = errors.New("holder already holds GPUs")
	// ErrBadRequest: the request itself is malformed.
	ErrBadRequest = errors.New("bad GPU request")
)

// AnyMIG as a Request's MIGProfile accepts any MIG instance.
const AnyMIG = "any"

// Request asks for devices.
type Request struct {
	// Count is how many devices; 0 asks for none and always succeeds.
	Count int
	// MIGProfile empty asks for whole GPUs. Otherwise it asks for MIG
	// instances: AnyMIG for any, or a profile such as "1g.10gb", matched
	// against the end of the instance's name as NVML reports it ("NVIDIA
	// A100-SXM4-80GB MIG 1g.10gb").
	MIGProfile string
	// MinMemoryBytes is the least memory each device must have.
	MinMemoryBytes uint64
}

// Device is one allocatable device as the inventory describes it.
type Device struct {
	UUID        string
	Name        string
	MemoryBytes uint64
	// MIGEnabled is set on a physical GPU in MIG mode.
	MIGEnabled bool
	// ParentUUID is set on a MIG instance.
	ParentUUID string
}

func (d Device) String() string {
	return fmt.Sprintf("%s (%s, %s)", d.UUID, d.Name, formatBytes(d.MemoryBytes))
}

// Allocator is the table of which holder holds which devices.
type Allocator struct {
	path string

	mu      sync.Mutex        // guards the fields below
	devices map[string]Device // by UUID, from the inventory
	order   []string          // device UUIDs in inventory order
	holders map[string][]string
	owner   map[string]string // device UUID → holder
	// parent records, for each held MIG instance, the GPU it was carved
	// from when it was handed out: the inventory may stop listing it (MIG
	// mode turned off) while its holder still runs on it.
	parent map[string]string
}

// tableFile is the on-disk form of the table.
type tableFile struct {
	Version int                 `json:"version"`
	Holders map[string][]string `json:"holders"`
	// Parents maps each held MIG instance to its GPU.
	Parents map[string]string `json:"parents,omitempty"`
}

// Open reads the allocation table at path (none yet is an empty table) and
// sets the inventory the allocator hands devices out from. Holders in the
// table keep their devices even where the inventory no longer lists them,
// until they release them: a device that vanished from a probe may still
// be in use.
func Open(path string, inventory []*droverv1.GPUInfo) (*Allocator, error) {
	a := &Allocator{path: path, holders: map[string][]string{}, owner: map[string]string{}, parent: map[string]string{}}
	a.setInventoryLocked(inventory)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return a, nil
	case err != nil:
		return nil, fmt.Errorf("open GPU table: %w", err)
	}
	var tf tableFile
	if err := json.Unmarshal(b, &tf); err != nil {
		return nil, fmt.Errorf("open GPU table %s: %w (move the file aside only if no model instance survives on this node)", path, err)
	}
	if tf.Version != 1 {
		return nil, fmt.Errorf("open GPU table %s: version %d, want 1", path, tf.Version)
	}
	for h, uuids := range tf.Holders {
		for _, u := range uuids {
			if prev, ok := a.owner[u]; ok {
				return nil, fmt.Errorf("open GPU table %s: %s is held by both %q and %q", path, u, prev, h)
			}
			a.owner[u] = h
		}
		a.holders[h] = slices.Clone(uuids)
	}
	for u, p := range tf.Parents {
		if _, held := a.owner[u]; held && p != "" {
			a.parent[u] = p
		}
	}
	a.learnParentsLocked()
	return a, nil
}

// SetInventory replaces the inventory, for example after the agent probed
// the hardware again. Holdings are kept.
func (a *Allocator) SetInventory(inventory []*droverv1.GPUInfo) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.setInventoryLocked(inventory)
}

func (a *Allocator) setInventoryLocked(inventory []*droverv1.GPUInfo) {
	a.devices = map[string]Device{}
	a.order = nil
	for _, g := range inventory {
		if g.GetUuid() == "" {
			continue
		}
		if _, dup := a.devices[g.GetUuid()]; dup {
			continue
		}
		a.devices[g.GetUuid()] = Device{
			UUID:        g.GetUuid(),
			Name:        g.GetName(),
			MemoryBytes: g.GetMemoryTotalBytes(),
			MIGEnabled:  g.GetMigEnabled(),
			ParentUUID:  g.GetParentUuid(),
		}
		a.order = append(a.order, g.GetUuid())
	}
	a.learnParentsLocked()
}

// learnParentsLocked records the parents of held MIG instances that the
// table does not name yet (a table written before the instance's parent was
// known to it).
func (a *Allocator) learnParentsLocked() {
	for u := range a.owner {
		if p := a.devices[u].ParentUUID; p != "" && a.parent[u] == "" {
			a.parent[u] = p
		}
	}
}

// Allocate gives holder devices that meet req, records them on disk, and
// returns their UUIDs. Among the devices that qualify it picks the
// smallest first, keeping large devices for requests that need them. It
// fails with ErrInsufficient, naming what is free, when req cannot be met,
// and changes nothing then.
func (a *Allocator) Allocate(holder string, req Request) ([]string, error) {
	if holder == "" {
		return nil, fmt.Errorf("allocate GPUs: %w: empty holder", ErrBadRequest)
	}
	if req.Count < 0 {
		return nil, fmt.Errorf("allocate GPUs for %s: %w: count %d is negative", holder, ErrBadRequest, req.Count)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if held, ok := a.holders[holder]; ok {
		return nil, fmt.Errorf("allocate GPUs for %s: %w: %s", holder, ErrHolderExists, strings.Join(held, ","))
	}
	if req.Count == 0 {
		return nil, nil
	}
	var fit []Device
	for _, u := range a.order {
		d := a.devices[u]
		if a.freeLocked(d) && matches(d, req) {
			fit = append(fit, d)
		}
	}
	if len(fit) < req.Count {
		return nil, fmt.Errorf("allocate %s for %s: %w: %d qualify; %s", describe(req), holder, ErrInsufficient, len(fit), a.summaryLocked())
	}
	sort.SliceStable(fit, func(i, j int) bool { return fit[i].MemoryBytes < fit[j].MemoryBytes })
	got := make([]string, req.Count)
	for i := range got {
		got[i] = fit[i].UUID
	}
	a.holders[holder] = got
	for _, u := range got {
		a.owner[u] = holder
		if p := a.devices[u].ParentUUID; p != "" {
			a.parent[u] = p
		}
	}
	if err := a.saveLocked(); err != nil {
		delete(a.holders, holder)
		for _, u := range got {
			delete(a.owner, u)
			delete(a.parent, u)
		}
		return nil, fmt.Errorf("allocate GPUs for %s: %w", holder, err)
	}
	return slices.Clone(got), nil
}

// Release frees everything holder holds. Releasing a holder that holds
// nothing is not an error.
func (a *Allocator) Release(holder string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	held, ok := a.holders[holder]
	if !ok {
		return nil
	}
	parents := map[string]string{}
	delete(a.holders, holder)
	for _, u := range held {
		delete(a.owner, u)
		if p, ok := a.parent[u]; ok {
			parents[u] = p
			delete(a.parent, u)
		}
	}
	if err := a.saveLocked(); err != nil {
		a.holders[holder] = held
		for _, u := range held {
			a.owner[u] = holder
		}
		maps.Copy(a.parent, parents)
		return fmt.Errorf("release GPUs of %s: %w", holder, err)
	}
	return nil
}

// Held returns the UUIDs holder holds, nil if none.
func (a *Allocator) Held(holder string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.holders[holder])
}

// HolderOf returns who holds the device, "" if nobody.
func (a *Allocator) HolderOf(uuid string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.owner[uuid]
}

// Holders returns a copy of the table: holder → UUIDs.
func (a *Allocator) Holders() map[string][]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string][]string, len(a.holders))
	for h, u := range a.holders {
		out[h] = slices.Clone(u)
	}
	return out
}

// Free returns the devices that could be handed out now, whole GPUs and
// MIG instances, in inventory order.
func (a *Allocator) Free() []Device {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Device
	for _, u := range a.order {
		if d := a.devices[u]; a.freeLocked(d) {
			out = append(out, d)
		}
	}
	return out
}

// freeLocked reports whether d can be handed out now.
func (a *Allocator) freeLocked(d Device) bool {
	if _, held := a.owner[d.UUID]; held {
		return false
	}
	if d.ParentUUID != "" {
		_, parentHeld := a.owner[d.ParentUUID]
		return !parentHeld
	}
	if d.MIGEnabled {
		return false
	}
	// A held MIG instance carved from d blocks d, even where the inventory
	// no longer lists it.
	for _, p := range a.parent {
		if p == d.UUID {
			return false
		}
	}
	return true
}

func matches(d Device, req Request) bool {
	if d.MemoryBytes < req.MinMemoryBytes {
		return false
	}
	switch req.MIGProfile {
	case "":
		return d.ParentUUID == ""
	case AnyMIG:
		return d.ParentUUID != ""
	default:
		return d.ParentUUID != "" && strings.HasSuffix(d.Name, " "+req.MIGProfile)
	}
}

func describe(req Request) string {
	what := "whole GPU(s)"
	switch req.MIGProfile {
	case "":
	case AnyMIG:
		what = "MIG instance(s)"
	default:
		what = "MIG " + req.MIGProfile + " instance(s)"
	}
	s := fmt.Sprintf("%d %s", req.Count, what)
	if req.MinMemoryBytes > 0 {
		s += " with at least " + formatBytes(req.MinMemoryBytes)
	}
	return s
}

// summaryLocked says what is free and who holds the rest, for errors.
func (a *Allocator) summaryLocked() string {
	var free []string
	for _, u := range a.order {
		if d := a.devices[u]; a.freeLocked(d) {
			kind := "GPU"
			if d.ParentUUID != "" {
				kind = "MIG"
			}
			free = append(free, kind+" "+d.String())
		}
	}
	s := "free: none"
	if len(free) > 0 {
		s = "free: " + strings.Join(free, ", ")
	}
	if len(a.owner) > 0 {
		var held []string
		for _, u := range slices.Sorted(maps.Keys(a.owner)) {
			held = append(held, u+" by "+a.owner[u])
		}
		s += "; held: " + strings.Join(held, ", ")
	}
	if len(a.devices) == 0 {
		s += " (the inventory lists no GPUs)"
	}
	return s
}

// saveLocked writes the table atomically.
func (a *Allocator) saveLocked() error {
	b, err := json.MarshalIndent(tableFile{Version: 1, Holders: a.holders, Parents: a.parent}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(a.path, append(b, '\n'), 0o644)
}

func formatBytes(n uint64) string {
	const gib = 1 << 30
	if n >= gib {
		return fmt.Sprintf("%.1f GiB", float64(n)/gib)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}
