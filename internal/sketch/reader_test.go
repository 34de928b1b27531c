package sketch

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// readerCases are encoded windows of every shape the reader must treat
// as UnmarshalWindow does: good ones, refused ones, and valid encodings
// proto.Marshal does not write (which the reader hands over).
func readerCases(t testing.TB) map[string][]byte {
	enc := func(w *droverv1.TelemetryWindow) []byte {
		b, err := proto.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := func(seed uint64) *droverv1.TelemetryWindow {
		return testWindow(realisticProfile(t, seed, 300)).ToProto()
	}
	cases := map[string][]byte{}
	for i := range 4 {
		cases["good"+string(rune('a'+i))] = enc(good(uint64(30 + i)))
	}
	w := good(40)
	w.Profile.Inputs[1].Numeric.Count++
	cases["count mismatch"] = enc(w)
	w = good(41)
	w.Profile.Inputs[0], w.Profile.Inputs[1] = w.Profile.Inputs[1], w.Profile.Inputs[0]
	cases["unsorted"] = enc(w)
	w = good(42)
	w.Profile = nil
	cases["no profile"] = enc(w)
	w = good(43)
	w.Node = &droverv1.NodeMetrics{MemoryTotalBytes: 1}
	cases["node metrics beside a profile"] = enc(w)
	w = good(43)
	w.Profile, w.Deployment, w.Model, w.Version = nil, "", "", ""
	w.Node = &droverv1.NodeMetrics{MemoryTotalBytes: 1}
	cases["node metrics"] = enc(w)
	b := enc(good(44))
	cases["truncated"] = b[:len(b)-3]
	cases["unknown field"] = protowire.AppendVarint(protowire.AppendTag(enc(good(45)), 99, protowire.VarintType), 7)
	// The profile twice: protobuf merges the two messages (here into one
	// whose inputs repeat, refused).
	p := enc(&droverv1.TelemetryWindow{Profile: good(46).Profile})
	cases["profile twice"] = append(enc(good(47)), p...)
	// A label twice: the last one counts.
	cases["label twice"] = protowire.AppendString(protowire.AppendTag(enc(good(48)), 1, protowire.BytesType), "node-2")
	bad := enc(good(49))
	i := bytes.Index(bad, []byte("node-1"))
	bad[i] = 0xff
	cases["not utf-8"] = bad
	bad = enc(good(52))
	bad[bytes.Index(bad, []byte("sku-"))] = 0xff
	cases["value not utf-8"] = bad
	// Bins present but empty: refused, the count no longer matches.
	w = good(50)
	w.Profile.Inputs[0].Numeric.Positive = &droverv1.SketchBins{}
	w.Profile.Inputs[0].Numeric.Negative = &droverv1.SketchBins{}
	cases["empty bins"] = enc(w)
	// Counts written unpacked, which protobuf also reads.
	bins := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), protowire.EncodeZigZag(int64(theMapping.Index(3))))
	for _, c := range []uint64{2, 0, 1} {
		bins = protowire.AppendVarint(protowire.AppendTag(bins, 2, protowire.VarintType), c)
	}
	num, err := proto.Marshal(&droverv1.NumericSketch{RelativeAccuracy: RelativeAccuracy, Mapping: droverv1.SketchMapping_SKETCH_MAPPING_CUBIC, Count: 3, Sum: 9, Min: 3, Max: 3.1})
	if err != nil {
		t.Fatal(err)
	}
	num = protowire.AppendBytes(protowire.AppendTag(num, 3, protowire.BytesType), bins)
	feat := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "x")
	feat = protowire.AppendVarint(protowire.AppendTag(feat, 2, protowire.VarintType), 1)
	feat = protowire.AppendBytes(protowire.AppendTag(feat, 3, protowire.BytesType), num)
	prof := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 3)
	prof = protowire.AppendBytes(protowire.AppendTag(prof, 2, protowire.BytesType), feat)
	w = good(51)
	w.Profile = nil
	cases["unpacked counts"] = protowire.AppendBytes(protowire.AppendTag(enc(w), 7, protowire.BytesType), prof)
	cases["empty"] = nil
	return cases
}

func TestWindowReaderMatchesUnmarshal(t *testing.T) {
	var r WindowReader
	cases := readerCases(t)
	// Twice over, in one reader: what one read leaves must not show in the
	// next.
	for range 2 {
		for name, b := range cases {
			want, wantErr := UnmarshalWindow(b)
			got, err := r.Read(b)
			if (err == nil) != (wantErr == nil) || (err != nil && err.Error() != wantErr.Error()) {
				t.Fatalf("%s: read error %v, UnmarshalWindow's %v", name, err, wantErr)
			}
			if err == nil && !proto.Equal(got, want) {
				t.Fatalf("%s: read another window than UnmarshalWindow", name)
			}
			if ok := strings.HasPrefix(name, "good") || name == "unpacked counts" || name == "label twice" || name == "unknown field" || name == "node metrics"; ok != (err == nil) {
				t.Fatalf("%s: read error %v", name, err)
			}
		}
	}
}

func FuzzWindowReader(f *testing.F) {
	for _, b := range readerCases(f) {
		f.Add(b)
	}
	var r WindowReader
	f.Fuzz(func(t *testing.T, b []byte) {
		want, wantErr := UnmarshalWindow(b)
		got, err := r.Read(b)
		if (err == nil) != (wantErr == nil) || (err != nil && err.Error() != wantErr.Error()) {
			t.Fatalf("read error %v, UnmarshalWindow's %v", err, wantErr)
		}
		if err == nil && !proto.Equal(got, want) {
			t.Fatal("read another window than UnmarshalWindow")
		}
	})
}

// A Merger fed a reader's windows keeps nothing that points into the
// bytes read: reusing the buffer afterwards changes nothing merged.
func TestMergerKeepsNothingOfReadBytes(t *testing.T) {
	var r WindowReader
	slow := NewProfile(nil)
	m := NewMerger()
	buf := make([]byte, 0, 64<<10)
	for i, p := range mixedProfiles(t, 8, 40) {
		w := testWindow(p)
		w.Profile.Errors = map[string]uint64{"timeout": 1, "runtime": 2}
		w.Profile.Requests += 3
		pb := w.ToProto()
		b, err := proto.MarshalOptions{}.MarshalAppend(buf[:0], pb)
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.Read(b)
		if err != nil {
			t.Fatalf("window %d: %v", i, err)
		}
		if i%2 == 0 {
			err = m.AddProto(got.Profile)
		} else {
			err = r.MergeInto(m)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := slow.MergeProto(pb.Profile); err != nil {
			t.Fatal(err)
		}
		for j := range b {
			b[j] = 'x'
		}
	}
	if marshalProfile(t, m.Profile()) != marshalProfile(t, slow) {
		t.Fatal("the merged profile changed when the read buffer was reused")
	}
	if _, err := r.Read([]byte("not a window")); err == nil {
		t.Fatal("garbage read as a window")
	}
	if err := r.MergeInto(m); err == nil {
		t.Fatal("MergeInto after a refused read merged something")
	}
}

// Between the seeds and a fuzzing run: many small corruptions of the
// cases above, each read as UnmarshalWindow reads it.
func TestWindowReaderMatchesUnmarshalOnCorruptions(t *testing.T) {
	var seeds [][]byte
	for _, b := range readerCases(t) {
		seeds = append(seeds, b)
	}
	slices.SortFunc(seeds, bytes.Compare) // map order would change the draws
	r := rand.New(rand.NewPCG(1, 2))
	var rd WindowReader
	accepted := 0
	for i := range 5000 {
		b := slices.Clone(seeds[r.IntN(len(seeds))])
		for range 1 + r.IntN(3) {
			if len(b) == 0 {
				break
			}
			j := r.IntN(len(b))
			switch r.IntN(3) {
			case 0:
				b[j] = byte(r.Uint32())
			case 1:
				b = slices.Delete(b, j, min(len(b), j+1+r.IntN(8)))
			default:
				b = slices.Insert(b, j, byte(r.Uint32()))
			}
		}
		want, wantErr := UnmarshalWindow(b)
		got, err := rd.Read(b)
		if (err == nil) != (wantErr == nil) || (err != nil && err.Error() != wantErr.Error()) {
			t.Fatalf("corruption %d: read error %v, UnmarshalWindow's %v", i, err, wantErr)
		}
		if err == nil {
			accepted++
			if !proto.Equal(got, want) {
				t.Fatalf("corruption %d: read another window than UnmarshalWindow", i)
			}
		}
	}
	if accepted == 0 {
		t.Fatal("no corrupted window was accepted, so none was compared")
	}
}
