package sketch

import (
	"cmp"
	"slices"
	"strings"
	"unicode/utf8"
)

const (
	// DefaultCapacity is how many distinct values a categorical sketch
	// tracks. 64 keeps a feature's wire form near 2 KiB with short values.
	DefaultCapacity = 64
	// MaxCapacity bounds the capacity a decoder accepts.
	MaxCapacity = 256
	// MaxValueBytes is the longest value a categorical sketch keeps; longer
	// values are cut to this many bytes (at a UTF-8 boundary) before
	// counting, so one long value cannot blow the window's size.
	MaxValueBytes = 64
)

// Categorical is a Misra–Gries frequent-items summary with capacity k:
// it keeps at most k values with counts and the exact total.
//
// What it guarantees, for a single stream and after any number of merges
// (Agarwal et al., "Mergeable Summaries", 2012): each kept count is a lower
// bound of the value's true count, short of it by at most
// ErrorBound() = Other()/(k+1) ≤ N/(k+1); a value whose true count
// exceeds that bound is always kept. Other() = N − Σ kept counts is the
// mass not attributed to any kept value.
//
// The zero value is not usable; call NewCategorical. A Categorical is not
// safe for concurrent use.
type Categorical struct {
	capacity int
	counts   map[string]uint64
	total    uint64
}

// NewCategorical returns an empty sketch keeping up to capacity values;
// capacity is clamped to [1, MaxCapacity].
func NewCategorical(capacity int) *Categorical {
	capacity = min(max(capacity, 1), MaxCapacity)
	return &Categorical{capacity: capacity, counts: make(map[string]uint64, capacity+1)}
}

// Clip cuts v to MaxValueBytes at a UTF-8 boundary.
func Clip(v string) string {
	if len(v) <= MaxValueBytes {
		return v
	}
	n := MaxValueBytes
	for n > 0 && !utf8.RuneStart(v[n]) {
		n--
	}
	return v[:n]
}

// Add records one value.
func (c *Categorical) Add(v string) {
	v = Clip(v)
	c.total++
	if n, ok := c.counts[v]; ok {
		c.counts[v] = n + 1
		return
	}
	if len(c.counts) < c.capacity {
		// Clone: v may point into a large request buffer the map would
		// otherwise keep alive for the whole window.
		c.counts[strings.Clone(v)] = 1
		return
	}
	// Full and v is new: decrement every count (and v's implicit 1).
	// Each such round removes k+1 from the kept mass, so rounds are at
	// most N/(k+1) and cost O(1) amortized per Add.
	for k, n := range c.counts {
		if n == 1 {
			delete(c.counts, k)
		} else {
			c.counts[k] = n - 1
		}
	}
}

// Merge adds o into c with the Misra–Gries merge: sum the counts, then,
// when more than k values remain, subtract the (k+1)-th largest count from
// every count and drop those left at zero. The result keeps the smaller
// of the two capacities; the guarantee above holds for the merged stream.
func (c *Categorical) Merge(o *Categorical) {
	if o == nil {
		return
	}
	c.capacity = min(c.capacity, o.capacity)
	c.total += o.total
	for k, n := range o.counts {
		c.counts[k] += n
	}
	c.shrink()
}

func (c *Categorical) shrink() {
	if len(c.counts) <= c.capacity {
		return
	}
	ns := make([]uint64, 0, len(c.counts))
	for _, n := range c.counts {
		ns = append(ns, n)
	}
	slices.SortFunc(ns, func(a, b uint64) int { return cmp.Compare(b, a) })
	cut := ns[c.capacity]
	for k, n := range c.counts {
		if n <= cut {
			delete(c.counts, k)
		} else {
			c.counts[k] = n - cut
		}
	}
}

// Clone returns an independent copy.
func (c *Categorical) Clone() *Categorical {
	d := &Categorical{capacity: c.capacity, total: c.total, counts: make(map[string]uint64, len(c.counts))}
	for k, n := range c.counts {
		d.counts[k] = n
	}
	return d
}

// Capacity is the most values the sketch keeps.
func (c *Categorical) Capacity() int { return c.capacity }

// Total is the exact number of values added.
func (c *Categorical) Total() uint64 { return c.total }

// Count returns v's kept count (a lower bound), 0 if not kept.
func (c *Categorical) Count(v string) uint64 { return c.counts[Clip(v)] }

// Other is the count not attributed to any kept value.
func (c *Categorical) Other() uint64 {
	var kept uint64
	for _, n := range c.counts {
		kept += n
	}
	return c.total - kept
}

// ErrorBound is the most any value's kept count falls short of its true
// count.
func (c *Categorical) ErrorBound() uint64 { return c.Other() / uint64(c.capacity+1) }

// Item is a kept value and its count.
type Item struct {
	Value string
	Count uint64
}

// Items returns the kept values, largest count first, ties by value.
func (c *Categorical) Items() []Item {
	items := make([]Item, 0, len(c.counts))
	for k, n := range c.counts {
		items = append(items, Item{k, n})
	}
	slices.SortFunc(items, func(a, b Item) int {
		if a.Count != b.Count {
			return cmp.Compare(b.Count, a.Count)
		}
		return strings.Compare(a.Value, b.Value)
	})
	return items
}
