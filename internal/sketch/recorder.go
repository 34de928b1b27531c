package sketch

import (
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Recorder fills a Profile from many goroutines at once. It keeps one
// profile per shard, each behind its own mutex; Record takes the first
// shard it can lock without waiting, so a request waits only when every
// shard is busy at that instant. Flush swaps every shard for an empty one
// and returns their merge: the window's contents.
//
// Record and Flush are safe to call concurrently.
type Recorder struct {
	schema *Schema
	// inPos[i] is the index in a Profile's Inputs of schema input i
	// (Profile keeps features sorted by name); outPos likewise.
	inPos, outPos []int
	next          atomic.Uint32
	shards        []shard
}

type shard struct {
	mu sync.Mutex // guards p
	p  *Profile
	_  [48]byte // keeps neighbouring shards' locks off one cache line
}

// NewRecorder returns a recorder for s with the given number of shards;
// shards ≤ 0 means GOMAXPROCS. A nil schema records requests, errors and
// latency only.
func NewRecorder(s *Schema, shards int) *Recorder {
	if s == nil {
		s = &Schema{}
	}
	if shards <= 0 {
		shards = runtime.GOMAXPROCS(0)
	}
	r := &Recorder{schema: s, shards: make([]shard, shards)}
	r.inPos = positions(s.inputs)
	r.outPos = positions(s.outputs)
	for i := range r.shards {
		r.shards[i].p = NewProfile(s)
	}
	return r
}

func positions(fs []Field) []int {
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.Name
	}
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	pos := make([]int, len(fs))
	for i, n := range names {
		pos[i], _ = slices.BinarySearchFunc(sorted, n, strings.Compare)
	}
	return pos
}

// Record adds one request to the current window.
func (r *Recorder) Record(o *Observation) {
	start := int(r.next.Add(1)) % len(r.shards)
	var sh *shard
	for i := range r.shards {
		c := &r.shards[(start+i)%len(r.shards)]
		if c.mu.TryLock() {
			sh = c
			break
		}
	}
	if sh == nil {
		sh = &r.shards[start]
		sh.mu.Lock()
	}
	r.recordLocked(sh.p, o)
	sh.mu.Unlock()
}

// recordLocked adds one request to p, a shard's profile made by
// NewProfile(r.schema); the caller holds the shard's lock.
func (r *Recorder) recordLocked(p *Profile, o *Observation) {
	p.Requests++
	if o.ErrKind != "" {
		addError(p.Errors, o.ErrKind, 1)
	}
	_ = p.Latency.Add(o.Latency.Seconds())
	for i, at := range r.inPos {
		var v Value
		if i < len(o.Inputs) {
			v = o.Inputs[i]
		}
		p.Inputs[at].Observe(v)
	}
	for i, at := range r.outPos {
		var v Value
		if i < len(o.Outputs) {
			v = o.Outputs[i]
		}
		p.Outputs[at].Observe(v)
	}
}

// Flush ends the window: it returns everything recorded since the last
// Flush and starts empty.
func (r *Recorder) Flush() *Profile {
	out := NewProfile(r.schema)
	for i := range r.shards {
		fresh := NewProfile(r.schema)
		sh := &r.shards[i]
		sh.mu.Lock()
		p := sh.p
		sh.p = fresh
		sh.mu.Unlock()
		// Same schema on both sides: Merge cannot fail.
		_ = out.Merge(p)
	}
	// Values in order: the window encodes without sorting them again and
	// merges on the leader without a sort or a hash per value.
	for _, fs := range [][]*FeatureProfile{out.Inputs, out.Outputs} {
		for _, f := range fs {
			if f.Categorical != nil {
				f.Categorical.sortItems()
			}
		}
	}
	return out
}
