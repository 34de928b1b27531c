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
	// items holds the kept values in no order; index maps a value to its
	// position. A slice beside the map keeps the decrement rounds and
	// merges to a scan of at most 2k counts instead of map iteration.
	items []Item
	index map[string]int32
	total uint64
	// sorted says items are in value order: true for a sketch decoded
	// from the wire or ended by a Recorder's Flush, so its encoding and a
	// Merger skip sorting it. Any Add or merge that changes the kept
	// values clears it.
	sorted bool
}

// NewCategorical returns an empty sketch keeping up to capacity values;
// capacity is clamped to [1, MaxCapacity].
func NewCategorical(capacity int) *Categorical {
	capacity = min(max(capacity, 1), MaxCapacity)
	return &Categorical{capacity: capacity, items: make([]Item, 0, capacity), index: make(map[string]int32, capacity), sorted: true}
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
	if i, ok := c.index[v]; ok {
		c.items[i].Count++
		return
	}
	if len(c.items) < c.capacity {
		// Clone: v may point into a large request buffer the map would
		// otherwise keep alive for the whole window.
		v = strings.Clone(v)
		c.index[v] = int32(len(c.items))
		c.items = append(c.items, Item{v, 1})
		c.sorted = false
		return
	}
	// Full and v is new: decrement every count (and v's implicit 1).
	// Each such round removes k+1 from the kept mass, so rounds are at
	// most N/(k+1) and cost O(1) amortized per Add.
	c.cut(1)
}

// cut subtracts d from every count and drops the values left at zero.
func (c *Categorical) cut(d uint64) {
	for i := 0; i < len(c.items); {
		it := &c.items[i]
		if it.Count > d {
			it.Count -= d
			i++
			continue
		}
		delete(c.index, it.Value)
		c.sorted = false
		last := len(c.items) - 1
		if i != last {
			c.items[i] = c.items[last]
			c.index[c.items[i].Value] = int32(i)
		}
		c.items = c.items[:last]
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
	for _, it := range o.items {
		c.addCount(it.Value, it.Count)
	}
	c.shrink()
}

func (c *Categorical) addCount(v string, n uint64) {
	if i, ok := c.index[v]; ok {
		c.items[i].Count += n
		return
	}
	c.index[v] = int32(len(c.items))
	c.items = append(c.items, Item{v, n})
	c.sorted = false
}

// sortItems puts the kept values in value order.
func (c *Categorical) sortItems() {
	if c.sorted {
		return
	}
	slices.SortFunc(c.items, compareItems)
	for i, it := range c.items {
		c.index[it.Value] = int32(i)
	}
	c.sorted = true
}

// shrink ends a merge: with more than k values, subtract the (k+1)-th
// largest count from all.
func (c *Categorical) shrink() {
	if len(c.items) <= c.capacity {
		return
	}
	var buf [2 * MaxCapacity]uint64
	ns := buf[:0]
	for _, it := range c.items {
		ns = append(ns, it.Count)
	}
	c.cut(largest(ns, c.capacity+1))
}

// Clone returns an independent copy.
func (c *Categorical) Clone() *Categorical {
	d := &Categorical{capacity: c.capacity, total: c.total, items: slices.Clone(c.items), index: make(map[string]int32, len(c.items)), sorted: c.sorted}
	for k, i := range c.index {
		d.index[k] = i
	}
	return d
}

// Capacity is the most values the sketch keeps.
func (c *Categorical) Capacity() int { return c.capacity }

// Total is the exact number of values added.
func (c *Categorical) Total() uint64 { return c.total }

// Count returns v's kept count (a lower bound), 0 if not kept.
func (c *Categorical) Count(v string) uint64 {
	if i, ok := c.index[Clip(v)]; ok {
		return c.items[i].Count
	}
	return 0
}

// Other is the count not attributed to any kept value.
func (c *Categorical) Other() uint64 {
	var kept uint64
	for _, it := range c.items {
		kept += it.Count
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
	items := slices.Clone(c.items)
	slices.SortFunc(items, func(a, b Item) int {
		if a.Count != b.Count {
			return cmp.Compare(b.Count, a.Count)
		}
		return strings.Compare(a.Value, b.Value)
	})
	return items
}

// largest returns the k-th largest of ns (1-based), reordering ns:
// quickselect, linear on average, where a sort would be n log n on every
// merge.
func largest(ns []uint64, k int) uint64 {
	lo, hi, want := 0, len(ns)-1, k-1
	for lo < hi {
		// Median of three as the pivot keeps sorted input linear.
		mid := lo + (hi-lo)/2
		a, b, c := ns[lo], ns[mid], ns[hi]
		p := max(min(a, b), min(max(a, b), c))
		i, j := lo, hi
		for i <= j {
			for ns[i] > p {
				i++
			}
			for ns[j] < p {
				j--
			}
			if i <= j {
				ns[i], ns[j] = ns[j], ns[i]
				i++
				j--
			}
		}
		switch {
		case want <= j:
			hi = j
		case want >= i:
			lo = i
		default:
			return ns[want]
		}
	}
	return ns[want]
}
