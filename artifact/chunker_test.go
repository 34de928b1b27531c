package artifact

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/bits"
	"slices"
	"testing"
	"testing/iotest"
)

// streamBytes returns n bytes that depend on nothing but seed and n:
// SHA-256 in counter mode, so golden values stay valid whatever happens
// to math/rand.
func streamBytes(seed string, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	var ctr [8]byte
	for i := uint64(0); len(out) < n; i++ {
		binary.BigEndian.PutUint64(ctr[:], i)
		s := sha256.Sum256(append([]byte(seed), ctr[:]...))
		out = append(out, s[:]...)
	}
	return out[:n]
}

// cutReference is FastCDC's cut as the paper writes it, one byte at a
// time, with Drover's table and masks. The fast cut must agree with it.
func cutReference(p ChunkerParams, src []byte) int {
	maskS, maskL := p.masks()
	n := len(src)
	if n <= p.Min {
		return n
	}
	if n > p.Max {
		n = p.Max
	}
	normal := min(p.Avg, n)
	var fp uint64
	i := p.Min
	for ; i < normal; i++ {
		fp = fp<<1 + gear[src[i]]
		if fp&maskS == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		fp = fp<<1 + gear[src[i]]
		if fp&maskL == 0 {
			return i + 1
		}
	}
	return n
}

func chunkAll(t testing.TB, r io.Reader, p ChunkerParams) []Chunk {
	t.Helper()
	c, err := NewChunker(r, p)
	if err != nil {
		t.Fatal(err)
	}
	var out []Chunk
	for {
		ch, err := c.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		ch.Data = slices.Clone(ch.Data)
		out = append(out, ch)
	}
}

func lengths(chunks []Chunk) []int {
	var out []int
	for _, c := range chunks {
		out = append(out, c.Len())
	}
	return out
}

func TestCutMatchesReference(t *testing.T) {
	data := streamBytes("reference", 4<<20)
	// Long runs of one byte value make the fingerprint settle, which
	// exercises the max-size cut and the odd-length tails.
	data = append(data, bytes.Repeat([]byte{0}, 100_001)...)
	data = append(data, streamBytes("tail", 77_777)...)
	for _, p := range []ChunkerParams{
		ChunkerParamsForAverage(256),
		{Min: 64, Avg: 256, Max: 257},
		{Min: 255, Avg: 256, Max: 1001},
		ChunkerParamsForAverage(4096),
		DefaultChunkerParams(),
	} {
		c := newCutter(p)
		for s := data; len(s) > 0; {
			want := cutReference(p, s)
			got := c.cut(s)
			if got != want {
				t.Fatalf("%+v at offset %d: cut %d, reference %d", p, len(data)-len(s), got, want)
			}
			s = s[got:]
		}
	}
}

// The boundaries are part of the format: if this test fails, the chunker
// cuts differently from every manifest published so far. Change
// ChunkerAlgorithm instead of these numbers.
func TestChunkerGolden(t *testing.T) {
	var table []byte
	for _, v := range gear {
		table = binary.BigEndian.AppendUint64(table, v)
	}
	if got, want := Sum(table).String(), "sha256:1170f10151865e1ee89805370f44a8c28818cccdb60864ed6be312cd043779a9"; got != want {
		t.Errorf("gear table digest %s, want %s", got, want)
	}
	s, l := DefaultChunkerParams().masks()
	if s != 0xa4924924a4924924 || l != 0x9122448891224488 {
		t.Errorf("default masks %#x %#x", s, l)
	}

	small := chunkAll(t, bytes.NewReader(streamBytes("golden", 64<<10)), ChunkerParamsForAverage(1024))
	if got, want := lengths(small), []int{
		429, 1107, 572, 1077, 1197, 1172, 1334, 1660, 387, 1705, 1383, 1805, 635, 1073, 1268,
		1417, 1054, 1716, 1223, 1085, 1267, 1067, 1026, 430, 1275, 1119, 2138, 1252, 1597, 1070,
		1057, 1061, 1413, 1204, 498, 1044, 1062, 1231, 1122, 597, 1170, 2055, 1264, 1519, 1031,
		728, 1309, 468, 1334, 1049, 1108, 1253, 1123, 1112, 390, 1245, 1110, 439,
	}; !slices.Equal(got, want) {
		t.Errorf("avg 1 KiB over 64 KiB: lengths\n%#v\nwant\n%#v", got, want)
	}
	large := chunkAll(t, bytes.NewReader(streamBytes("golden", 16<<20)), DefaultChunkerParams())
	if got, want := lengths(large), []int{
		1481116, 1213398, 637489, 867479, 1091183, 1279568, 1171017, 1641838,
		1344265, 1307548, 1186814, 1229460, 1082749, 1129811, 113481,
	}; !slices.Equal(got, want) {
		t.Errorf("default over 16 MiB: lengths\n%#v\nwant\n%#v", got, want)
	}
	if got, want := Sum(large[0].Data).String(), "sha256:185f3560a58cfe83b1d79b7edc421e314391ca53e331a04815b9f25fb068e583"; got != want {
		t.Errorf("first chunk %s, want %s", got, want)
	}
}

// The same bytes make the same chunks however the reader hands them over.
func TestChunkerIndependentOfReads(t *testing.T) {
	data := streamBytes("reads", 3<<20+12345)
	p := ChunkerParamsForAverage(64 << 10)
	want := chunkAll(t, bytes.NewReader(data), p)
	for name, r := range map[string]io.Reader{
		"one byte":    iotest.OneByteReader(bytes.NewReader(data)),
		"half":        iotest.HalfReader(bytes.NewReader(data)),
		"data+EOF":    iotest.DataErrReader(bytes.NewReader(data)),
		"7 at a time": &shortReader{r: bytes.NewReader(data), n: 7},
	} {
		got := chunkAll(t, r, p)
		if !slices.Equal(lengths(got), lengths(want)) {
			t.Errorf("%s: lengths differ from one big read", name)
		}
	}
	var off int64
	var joined []byte
	for _, c := range want {
		if c.Offset != off {
			t.Fatalf("chunk at offset %d, want %d", c.Offset, off)
		}
		if c.Len() > p.Max || (c.Len() < p.Min && off+int64(c.Len()) != int64(len(data))) {
			t.Errorf("chunk of %d bytes at %d, outside [%d, %d]", c.Len(), off, p.Min, p.Max)
		}
		off += int64(c.Len())
		joined = append(joined, c.Data...)
	}
	if !bytes.Equal(joined, data) {
		t.Fatal("chunks do not join up to the input")
	}
}

type shortReader struct {
	r io.Reader
	n int
}

func (s *shortReader) Read(p []byte) (int, error) {
	if len(p) > s.n {
		p = p[:s.n]
	}
	return s.r.Read(p)
}

// Inserting bytes in the middle of a stream changes only the chunks near
// the insertion: the rest are found again, which is what lets the next
// version of a model upload only what changed.
func TestChunkerInsertionChangesOnlyNearbyChunks(t *testing.T) {
	p := ChunkerParamsForAverage(16 << 10)
	data := streamBytes("insert", 4<<20)
	edited := slices.Concat(data[:2<<20], []byte("a few inserted bytes"), data[2<<20:])
	before := chunkAll(t, bytes.NewReader(data), p)
	after := chunkAll(t, bytes.NewReader(edited), p)

	old := map[Digest]bool{}
	for _, c := range before {
		old[Sum(c.Data)] = true
	}
	var newBytes, newChunks int
	for _, c := range after {
		if !old[Sum(c.Data)] {
			newChunks++
			newBytes += c.Len()
			if c.Offset+int64(c.Len()) < 2<<20-int64(p.Max) || c.Offset > 2<<20+int64(2*p.Max) {
				t.Errorf("new chunk at %d (+%d) is far from the insertion at %d", c.Offset, c.Len(), 2<<20)
			}
		}
	}
	t.Logf("%d of %d chunks new, %d bytes", newChunks, len(after), newBytes)
	if newChunks == 0 || newChunks > 3 {
		t.Errorf("%d new chunks after one insertion, want 1 to 3", newChunks)
	}
}

func TestChunkerEdges(t *testing.T) {
	p := ChunkerParamsForAverage(1024)
	if got := chunkAll(t, bytes.NewReader(nil), p); len(got) != 0 {
		t.Errorf("empty stream: %d chunks", len(got))
	}
	if got := chunkAll(t, bytes.NewReader([]byte("x")), p); len(got) != 1 || string(got[0].Data) != "x" {
		t.Errorf("one byte: %v", got)
	}
	// A stream of one repeated byte never matches a mask: max-size chunks.
	got := chunkAll(t, bytes.NewReader(bytes.Repeat([]byte{7}, 3*p.Max+5)), p)
	if !slices.Equal(lengths(got), []int{p.Max, p.Max, p.Max, 5}) {
		t.Errorf("repeated byte: lengths %v", lengths(got))
	}
}

func TestChunkerReadError(t *testing.T) {
	boom := errors.New("disk on fire")
	c, err := NewChunker(io.MultiReader(bytes.NewReader(streamBytes("x", 10_000)), iotest.ErrReader(boom)), ChunkerParamsForAverage(256))
	if err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		if _, err = c.Next(); err != nil {
			break
		}
	}
	if !errors.Is(err, boom) {
		t.Fatalf("error %v, want the reader's", err)
	}
	if _, err := c.Next(); !errors.Is(err, boom) {
		t.Fatalf("second call after the error: %v", err)
	}
}

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestChunkerGivesUpOnReaderWithoutProgress(t *testing.T) {
	c, err := NewChunker(zeroReader{}, ChunkerParamsForAverage(256))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Next(); !errors.Is(err, io.ErrNoProgress) {
		t.Fatalf("error %v, want io.ErrNoProgress", err)
	}
}

func TestChunkerReset(t *testing.T) {
	p := ChunkerParamsForAverage(1024)
	a, b := streamBytes("a", 50_000), streamBytes("b", 30_000)
	c, err := NewChunker(bytes.NewReader(a), p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Next(); err != nil {
		t.Fatal(err)
	}
	c.Reset(bytes.NewReader(b))
	var got []int
	for {
		ch, err := c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ch.Len())
	}
	if want := lengths(chunkAll(t, bytes.NewReader(b), p)); !slices.Equal(got, want) {
		t.Fatalf("after Reset: %v, want %v", got, want)
	}
}

func TestChunkerParamsValidate(t *testing.T) {
	for _, tt := range []struct {
		p  ChunkerParams
		ok bool
	}{
		{DefaultChunkerParams(), true},
		{ChunkerParamsForAverage(256), true},
		{ChunkerParamsForAverage(16 << 20), true},
		{ChunkerParamsForAverage(128), false},                   // average too small
		{ChunkerParamsForAverage(32 << 20), false},              // maximum too large
		{ChunkerParams{Min: 1000, Avg: 3000, Max: 9000}, false}, // not a power of two
		{ChunkerParams{Min: 32, Avg: 1024, Max: 4096}, false},   // minimum too small
		{ChunkerParams{Min: 1024, Avg: 1024, Max: 4096}, false}, // minimum not below average
		{ChunkerParams{Min: 256, Avg: 1024, Max: 1024}, false},  // maximum not above average
		{ChunkerParams{}, false},
	} {
		if err := tt.p.Validate(); (err == nil) != tt.ok {
			t.Errorf("%+v: Validate() = %v, want ok=%v", tt.p, err, tt.ok)
		}
	}
}

func TestSpreadMask(t *testing.T) {
	for n := 1; n <= 30; n++ {
		m := spreadMask(n)
		if bits.OnesCount64(m) != n || m>>63 != 1 {
			t.Errorf("spreadMask(%d) = %#x: want %d bits with bit 63 set", n, m, n)
		}
	}
}

// The average chunk comes out near the average size asked for, so the
// parameters mean what they say.
func TestChunkerAverage(t *testing.T) {
	p := ChunkerParamsForAverage(16 << 10)
	data := streamBytes("avg", 16<<20)
	chunks := chunkAll(t, bytes.NewReader(data), p)
	mean := len(data) / len(chunks)
	t.Logf("%d chunks, mean %d bytes", len(chunks), mean)
	if mean < p.Avg || mean > p.Avg*3/2 {
		t.Errorf("mean chunk %d bytes for an average of %d", mean, p.Avg)
	}
}

// Training one layer of a model again makes only that layer's bytes new,
// plus at most a chunk at each of its ends: a push of the new version
// uploads little more than the layer.
func TestRetrainedLayerChangesOnlyItsChunks(t *testing.T) {
	p := ChunkerParamsForAverage(16 << 10)
	ts := make([]tensor, 8)
	for i := range ts {
		ts[i] = tensor{size: 512 << 10, seed: 1, stream: uint64(i)}
	}
	old, _ := chunkSet(t, pseudoModel(ts), p)
	have := map[Digest]bool{}
	for _, d := range old {
		have[d] = true
	}
	ts[3].seed = 2
	chunks, n := newBytes(t, have, pseudoModel(ts), p)
	t.Logf("%d new chunks, %d new bytes for a %d-byte layer", chunks, n, ts[3].size)
	if n < ts[3].size || n > ts[3].size+2*p.Max {
		t.Errorf("%d new bytes for a layer of %d (maximum chunk %d)", n, ts[3].size, p.Max)
	}
}
