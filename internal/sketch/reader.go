package sketch

import (
	"fmt"
	"math"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// WindowReader parses encoded windows into messages it keeps and reuses,
// for a leader that merges thousands of windows: protobuf's Unmarshal
// allocates every item, bin run and string of every window, and that
// allocation (and the garbage collection after it) costs more than the
// merge itself.
//
// Read accepts and refuses exactly what UnmarshalWindow does. Windows in
// the form proto.Marshal writes are read straight from the wire; anything
// else (fields this build does not know, a message field given twice,
// strings that are not UTF-8, a malformed message) goes through
// UnmarshalWindow, and so does every refusal, so errors name the problem
// the same way.
//
// The zero value is ready to use. A WindowReader is not safe for
// concurrent use.
type WindowReader struct {
	w          droverv1.TelemetryWindow
	start, end timestamppb.Timestamp
	p          droverv1.Profile
	feats      pool[droverv1.FeatureProfile]
	nums       pool[droverv1.NumericSketch]
	bins       pool[droverv1.SketchBins]
	cats       pool[droverv1.CategoricalSketch]
	items      pool[droverv1.CategoryCount]
	errs       pool[droverv1.ErrorCount]
	// last is the window the last Read returned, nil after a refusal.
	last *droverv1.TelemetryWindow
}

// pool hands out messages kept from earlier reads.
type pool[T any] struct {
	all []*T
	n   int
}

func (p *pool[T]) get() *T {
	if p.n == len(p.all) {
		p.all = append(p.all, new(T))
	}
	p.n++
	return p.all[p.n-1]
}

// Read parses and checks b as UnmarshalWindow does. The message it
// returns belongs to the reader and its strings point into b: it is valid
// until the next Read and while b is unchanged, so a caller keeps nothing
// of it. Merger.AddProto copies what it keeps and is safe to feed it.
func (r *WindowReader) Read(b []byte) (*droverv1.TelemetryWindow, error) {
	w, err := r.read(b)
	r.last = w
	return w, err
}

func (r *WindowReader) read(b []byte) (*droverv1.TelemetryWindow, error) {
	if len(b) > MaxWindowBytes || !r.parse(b) {
		return UnmarshalWindow(b)
	}
	if _, _, err := checkWindowHeader(&r.w); err != nil {
		return UnmarshalWindow(b)
	}
	if err := checkProfile(r.w.Profile); err != nil {
		return UnmarshalWindow(b)
	}
	return &r.w, nil
}

// MergeInto merges the profile of the window the last Read returned into
// m, as m.AddProto would, without checking it a second time (Read did).
// The window must not have been changed since.
func (r *WindowReader) MergeInto(m *Merger) error {
	if r.last == nil {
		return fmt.Errorf("merge window: no window to merge: the last Read refused its input, or nothing was read yet")
	}
	return m.addChecked(r.last.Profile)
}

// parse reads the window in place; false sends it to UnmarshalWindow.
func (r *WindowReader) parse(b []byte) bool {
	r.feats.n, r.nums.n, r.bins.n, r.cats.n, r.items.n, r.errs.n = 0, 0, 0, 0, 0, 0
	w := &r.w
	w.NodeId, w.Deployment, w.Model, w.Version = "", "", "", ""
	w.Start, w.End, w.Profile, w.Node = nil, nil, nil, nil
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num >= 1 && num <= 4 && typ == protowire.BytesType:
			s, n := consumeString(b)
			if n < 0 {
				return false
			}
			b = b[n:]
			switch num {
			case 1:
				w.NodeId = s
			case 2:
				w.Deployment = s
			case 3:
				w.Model = s
			default:
				w.Version = s
			}
		case (num == 5 || num == 6) && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return false
			}
			b = b[n:]
			ts, at := &r.start, &w.Start
			if num == 6 {
				ts, at = &r.end, &w.End
			}
			if *at != nil || !parseTimestamp(ts, v) {
				return false
			}
			*at = ts
		case num == 7 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 || w.Profile != nil {
				return false
			}
			b = b[n:]
			r.p.Requests = 0
			r.p.Inputs, r.p.Outputs, r.p.Errors = r.p.Inputs[:0], r.p.Outputs[:0], r.p.Errors[:0]
			r.p.LatencySeconds = nil
			if !r.parseProfile(&r.p, v) {
				return false
			}
			w.Profile = &r.p
		default:
			return false
		}
	}
	return true
}

func parseTimestamp(ts *timestamppb.Timestamp, b []byte) bool {
	ts.Seconds, ts.Nanos = 0, 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.VarintType || num < 1 || num > 2 {
			return false
		}
		v, m := protowire.ConsumeVarint(b[n:])
		if m < 0 {
			return false
		}
		b = b[n+m:]
		if num == 1 {
			ts.Seconds = int64(v)
		} else {
			ts.Nanos = int32(v)
		}
	}
	return true
}

func (r *WindowReader) parseProfile(p *droverv1.Profile, b []byte) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if num == 1 {
			v, n := protowire.ConsumeVarint(b)
			if typ != protowire.VarintType || n < 0 {
				return false
			}
			p.Requests, b = v, b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if typ != protowire.BytesType || n < 0 {
			return false
		}
		b = b[n:]
		switch num {
		case 2, 3:
			f := r.feats.get()
			if !r.parseFeature(f, v) {
				return false
			}
			if num == 2 {
				p.Inputs = append(p.Inputs, f)
			} else {
				p.Outputs = append(p.Outputs, f)
			}
		case 4:
			e := r.errs.get()
			e.Kind, e.Count = "", 0
			if !parseStringCount(&e.Kind, &e.Count, v, true) {
				return false
			}
			p.Errors = append(p.Errors, e)
		case 5:
			if !r.parseNumericOnce(&p.LatencySeconds, v) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func (r *WindowReader) parseFeature(f *droverv1.FeatureProfile, b []byte) bool {
	f.Name, f.Kind, f.Numeric, f.Categorical, f.Missing, f.OutOfSchema = "", 0, nil, nil, 0, 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch num {
		case 2, 5, 6:
			v, n := protowire.ConsumeVarint(b)
			if typ != protowire.VarintType || n < 0 {
				return false
			}
			b = b[n:]
			switch num {
			case 2:
				f.Kind = droverv1.FeatureKind(int32(v))
			case 5:
				f.Missing = v
			default:
				f.OutOfSchema = v
			}
		case 1, 3, 4:
			if typ != protowire.BytesType {
				return false
			}
			if num == 1 {
				s, n := consumeString(b)
				if n < 0 {
					return false
				}
				f.Name, b = s, b[n:]
				continue
			}
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return false
			}
			b = b[n:]
			if num == 3 {
				if !r.parseNumericOnce(&f.Numeric, v) {
					return false
				}
				continue
			}
			if f.Categorical != nil {
				return false
			}
			f.Categorical = r.cats.get()
			if !r.parseCategorical(f.Categorical, v) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// parseNumericOnce parses b into a reused sketch set at *dst, refusing a
// field that occurs twice (proto.Marshal writes a message field once).
func (r *WindowReader) parseNumericOnce(dst **droverv1.NumericSketch, b []byte) bool {
	if *dst != nil {
		return false
	}
	*dst = r.nums.get()
	return r.parseNumeric(*dst, b)
}

func (r *WindowReader) parseNumeric(s *droverv1.NumericSketch, b []byte) bool {
	s.RelativeAccuracy, s.Mapping, s.Positive, s.Negative = 0, 0, nil, nil
	s.ZeroCount, s.Count, s.Sum, s.Min, s.Max = 0, 0, 0, 0, 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch num {
		case 1, 7, 8, 9:
			v, n := protowire.ConsumeFixed64(b)
			if typ != protowire.Fixed64Type || n < 0 {
				return false
			}
			b = b[n:]
			x := math.Float64frombits(v)
			switch num {
			case 1:
				s.RelativeAccuracy = x
			case 7:
				s.Sum = x
			case 8:
				s.Min = x
			default:
				s.Max = x
			}
		case 2, 5, 6:
			v, n := protowire.ConsumeVarint(b)
			if typ != protowire.VarintType || n < 0 {
				return false
			}
			b = b[n:]
			switch num {
			case 2:
				s.Mapping = droverv1.SketchMapping(int32(v))
			case 5:
				s.ZeroCount = v
			default:
				s.Count = v
			}
		case 3, 4:
			v, n := protowire.ConsumeBytes(b)
			if typ != protowire.BytesType || n < 0 {
				return false
			}
			b = b[n:]
			at := &s.Positive
			if num == 4 {
				at = &s.Negative
			}
			if *at != nil {
				return false
			}
			bins := r.bins.get()
			if !parseBins(bins, v) {
				return false
			}
			*at = bins
		default:
			return false
		}
	}
	return true
}

func parseBins(s *droverv1.SketchBins, b []byte) bool {
	s.Offset, s.Counts = 0, s.Counts[:0]
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return false
			}
			b = b[n:]
			// sint32, as protobuf decodes it.
			s.Offset = int32(protowire.DecodeZigZag(v & math.MaxUint32))
		case num == 2 && typ == protowire.BytesType: // packed
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return false
			}
			b = b[n:]
			for len(v) > 0 {
				// Most counts of a window fit in one byte.
				if v[0] < 0x80 {
					s.Counts, v = append(s.Counts, uint64(v[0])), v[1:]
					continue
				}
				c, n := protowire.ConsumeVarint(v)
				if n < 0 {
					return false
				}
				s.Counts, v = append(s.Counts, c), v[n:]
			}
		case num == 2 && typ == protowire.VarintType: // unpacked, also valid
			c, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return false
			}
			s.Counts, b = append(s.Counts, c), b[n:]
		default:
			return false
		}
	}
	return true
}

func (r *WindowReader) parseCategorical(s *droverv1.CategoricalSketch, b []byte) bool {
	s.Capacity, s.Total, s.Items = 0, 0, s.Items[:0]
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case (num == 1 || num == 3) && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return false
			}
			b = b[n:]
			if num == 1 {
				s.Capacity = uint32(v)
			} else {
				s.Total = v
			}
		case num == 2 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return false
			}
			b = b[n:]
			it := r.items.get()
			it.Value, it.Count = "", 0
			// checkCategorical refuses a value that is not UTF-8, and a
			// refusal goes through UnmarshalWindow, which names it.
			if !parseStringCount(&it.Value, &it.Count, v, false) {
				return false
			}
			s.Items = append(s.Items, it)
		default:
			return false
		}
	}
	return true
}

// parseStringCount reads a message of a string (field 1) and a uint64
// (field 2): CategoryCount and ErrorCount. With validate unset the string
// is not checked for UTF-8 (the caller's checks do it).
func parseStringCount(str *string, count *uint64, b []byte, validate bool) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 || (validate && !utf8.Valid(v)) {
				return false
			}
			*str, b = unsafeString(v), b[n:]
		case num == 2 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return false
			}
			*count, b = v, b[n:]
		default:
			return false
		}
	}
	return true
}

// consumeString reads a length-prefixed UTF-8 string without copying it:
// the string points into b. Invalid UTF-8 is refused, as protobuf refuses
// it in a proto3 string.
func consumeString(b []byte) (string, int) {
	v, n := protowire.ConsumeBytes(b)
	if n < 0 || !utf8.Valid(v) {
		return "", -1
	}
	return unsafeString(v), n
}

// unsafeString is v as a string sharing its bytes.
func unsafeString(v []byte) string {
	if len(v) == 0 {
		return ""
	}
	return unsafe.String(&v[0], len(v))
}
