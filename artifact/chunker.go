package artifact

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Content-defined chunking is FastCDC (Xia et al., "FastCDC: a Fast and
// Efficient Content-Defined Chunking Approach for Data Deduplication",
// USENIX ATC 2016) with normalized chunking at level 2, implemented here
// rather than taken from a library. The boundaries are part of the format:
// a chunker that cut differently after an upgrade would make every push
// re-upload everything, so the gear table, the masks and the cut rule must
// never change under the name ChunkerAlgorithm, and a golden test pins
// them. Of the libraries tried (docs/artifacts.md), jotfs/fastcdc-go is
// unmaintained since 2020 and ran at half this chunker's speed in the same
// run. PlakarKorp/go-cdc-chunkers is kept up and ran at 0.85 of it, but
// its cut rule has already changed once (it keeps the old one under
// another name), it registers chunkers in a process-wide table, and it
// would link a BLAKE3 module and cpuid into the agent for a keyed mode
// Drover does not use. Owning the eighty lines below is cheaper than
// pinning a dependency's cut rule forever.

// ChunkerAlgorithm names the chunking of format version 1: FastCDC with
// normalization level 2, the gear table from gearTable, the masks from
// spreadMask, and a cut after the byte whose fingerprint matches.
const ChunkerAlgorithm = "fastcdc-v1"

// DefaultAverageChunkSize is the average chunk size of new manifests,
// chosen by measurement (docs/artifacts.md, BenchmarkChunkSize): at 1 MiB
// a retrained layer costs about three chunks more than its own bytes to
// push again, and a 10 GiB model is about 9,000 chunks with a manifest of
// about 370 KB. A quarter of it makes four times the chunks and manifest
// to save 2.6 MiB per such edit; four times it cuts the manifest to a
// third but costs about twice the bytes per edit, and its largest chunk
// is 16 MiB.
const DefaultAverageChunkSize = 1 << 20

// The range of chunk sizes any manifest may use. A server or peer may hold
// a chunk whole in memory while it serves or checks it, so the largest
// must stay small enough for an edge device.
const (
	minChunkSize    = 64
	minAverageChunk = 256
	maxAverageChunk = 16 << 20
	maxChunkSize    = 64 << 20
)

// normalizationLevel moves the cut probability two bits either side of the
// average, which concentrates chunk sizes around it (FastCDC's NC level 2).
const normalizationLevel = 2

// ChunkerParams are the sizes, in bytes, of a content-defined chunking.
// Every chunk but a file's last is at least Min and at most Max bytes long;
// Avg, a power of two, is where the cut probability changes.
type ChunkerParams struct {
	Min, Avg, Max int
}

// DefaultChunkerParams returns ChunkerParamsForAverage(DefaultAverageChunkSize).
func DefaultChunkerParams() ChunkerParams {
	return ChunkerParamsForAverage(DefaultAverageChunkSize)
}

// ChunkerParamsForAverage returns the usual sizes around an average:
// a quarter of it as the minimum (FastCDC skips that many bytes without
// hashing them, which is much of its speed) and four times it as the
// maximum.
func ChunkerParamsForAverage(avg int) ChunkerParams {
	return ChunkerParams{Min: avg / 4, Avg: avg, Max: avg * 4}
}

// Validate checks the sizes and their relations.
func (p ChunkerParams) Validate() error {
	switch {
	case p.Avg < minAverageChunk || p.Avg > maxAverageChunk || p.Avg&(p.Avg-1) != 0:
		return fmt.Errorf("chunker: average size %d must be a power of two from %d to %d", p.Avg, minAverageChunk, maxAverageChunk)
	case p.Min < minChunkSize || p.Min >= p.Avg:
		return fmt.Errorf("chunker: minimum size %d must be at least %d and below the average %d", p.Min, minChunkSize, p.Avg)
	case p.Max <= p.Avg || p.Max > maxChunkSize:
		return fmt.Errorf("chunker: maximum size %d must be above the average %d and at most %d", p.Max, p.Avg, maxChunkSize)
	}
	return nil
}

// Proto returns the parameters as a manifest records them.
func (p ChunkerParams) Proto() *droverv1.ChunkerParams {
	return &droverv1.ChunkerParams{
		Algorithm: ChunkerAlgorithm,
		MinSize:   uint32(p.Min),
		AvgSize:   uint32(p.Avg),
		MaxSize:   uint32(p.Max),
	}
}

// ChunkerParamsFromProto reads and validates the parameters a manifest
// records.
func ChunkerParamsFromProto(pb *droverv1.ChunkerParams) (ChunkerParams, error) {
	if pb == nil {
		return ChunkerParams{}, errors.New("chunker: parameters missing")
	}
	if pb.GetAlgorithm() != ChunkerAlgorithm {
		return ChunkerParams{}, fmt.Errorf("chunker: algorithm %q is not supported (this build knows %q): upgrade Drover", pb.GetAlgorithm(), ChunkerAlgorithm)
	}
	p := ChunkerParams{Min: int(pb.GetMinSize()), Avg: int(pb.GetAvgSize()), Max: int(pb.GetMaxSize())}
	return p, p.Validate()
}

// gear is FastCDC's table of 256 random 64-bit values, one per byte value.
// It is derived rather than pasted so that anyone can rebuild it from this
// description: entry i is the first 8 bytes, big-endian, of
// SHA-256("drover fastcdc-v1 gear" || byte(i)).
// Never modified after init.
var gear = gearTable()

func gearTable() [256]uint64 {
	var t [256]uint64
	seed := []byte("drover fastcdc-v1 gear\x00")
	for i := range t {
		seed[len(seed)-1] = byte(i)
		s := sha256.Sum256(seed)
		t[i] = binary.BigEndian.Uint64(s[:8])
	}
	return t
}

// spreadMask returns a mask of n one-bits spread evenly from bit 63
// downwards. The gear fingerprint's bit k depends on the last k+1 bytes, so
// high bits make the cut depend on a window of up to 64 bytes.
func spreadMask(n int) uint64 {
	var m uint64
	for i := range n {
		m |= 1 << (63 - i*64/n)
	}
	return m
}

// masks returns the stricter mask used before the average size and the
// looser one after it.
func (p ChunkerParams) masks() (small, large uint64) {
	b := bits.TrailingZeros(uint(p.Avg))
	return spreadMask(b + normalizationLevel), spreadMask(b - normalizationLevel)
}

// cutter finds chunk boundaries in memory; Chunker feeds it a stream.
type cutter struct {
	min, avg, max int
	maskS, maskL  uint64
}

func newCutter(p ChunkerParams) cutter {
	s, l := p.masks()
	return cutter{min: p.Min, avg: p.Avg, max: p.Max, maskS: s, maskL: l}
}

// cut returns the length of the chunk at the start of src. src holds at
// least max bytes, or all that remain of the stream. The fingerprint
// starts at zero at min (FastCDC skips the first min bytes), is tested
// against maskS up to avg and maskL after it, and the byte whose
// fingerprint matches is the chunk's last. cutReference in the tests is
// the same rule one byte at a time, as the paper writes it.
func (c *cutter) cut(src []byte) int {
	n := len(src)
	if n <= c.min {
		return n
	}
	if n > c.max {
		n = c.max
	}
	normal := min(c.avg, n)
	if k, fp := scan(src[c.min:normal], 0, c.maskS); k > 0 {
		return c.min + k
	} else if k, _ := scan(src[normal:n], fp, c.maskL); k > 0 {
		return normal + k
	}
	return n
}

// scan feeds s to the gear fingerprint fp and returns the length of s up
// to and including the first byte whose fingerprint has no bit of mask
// set (0 if none does), and the fingerprint after s.
//
// It steps two bytes at a time, the trick of FastCDC's 2020 paper: the
// fingerprint two bytes on is fp<<2 + (g[a]<<1 + g[b]), which depends on
// fp through one shift-and-add instead of two, so the loop is not bound by
// the latency of that chain. The fingerprint after the first byte is
// still computed and tested; the cut points are exactly those of the
// byte-at-a-time rule.
func scan(s []byte, fp, mask uint64) (int, uint64) {
	g := &gear
	i := 0
	for ; i+1 < len(s); i += 2 {
		a, b := g[s[i]], g[s[i+1]]
		f1 := fp<<1 + a
		fp = fp<<2 + (a<<1 + b)
		if f1&mask == 0 {
			return i + 1, f1
		}
		if fp&mask == 0 {
			return i + 2, fp
		}
	}
	if i < len(s) {
		fp = fp<<1 + g[s[i]]
		if fp&mask == 0 {
			return i + 1, fp
		}
	}
	return 0, fp
}

// Chunk is one content-defined chunk of a stream.
type Chunk struct {
	// Offset is where the chunk starts in the stream.
	Offset int64
	// Data is the chunk's bytes. It aliases the chunker's buffer and is
	// valid only until the next call to Next.
	Data []byte
}

// Len is the chunk's length in bytes.
func (c Chunk) Len() int { return len(c.Data) }

// Chunker cuts a stream into content-defined chunks. It holds at most two
// maximum-size chunks of the stream in memory, whatever its length. A
// Chunker is not safe for concurrent use.
type Chunker struct {
	r      io.Reader
	cut    cutter
	buf    []byte
	start  int   // buf[start:end] is read but not yet returned
	end    int   //
	offset int64 // stream offset of buf[start]
	eof    bool
	err    error // a read error, returned from then on
}

// NewChunker returns a chunker over r.
func NewChunker(r io.Reader, p ChunkerParams) (*Chunker, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &Chunker{r: r, cut: newCutter(p), buf: make([]byte, 2*p.Max)}, nil
}

// Reset makes the chunker start over on r, keeping its buffer, so one
// chunker can cut many files without allocating for each.
func (c *Chunker) Reset(r io.Reader) {
	*c = Chunker{r: r, cut: c.cut, buf: c.buf}
}

// Next returns the next chunk, or io.EOF after the last one. An empty
// stream has no chunks. A read error is returned as it is, wrapped, and
// again by every later call.
func (c *Chunker) Next() (Chunk, error) {
	if c.err != nil {
		return Chunk{}, c.err
	}
	if c.end-c.start < c.cut.max && !c.eof {
		if err := c.fill(); err != nil {
			c.err = fmt.Errorf("chunk: %w", err)
			return Chunk{}, c.err
		}
	}
	if c.start == c.end {
		return Chunk{}, io.EOF
	}
	n := c.cut.cut(c.buf[c.start:c.end])
	ch := Chunk{Offset: c.offset, Data: c.buf[c.start : c.start+n : c.start+n]}
	c.start += n
	c.offset += int64(n)
	return ch, nil
}

// fill reads until a maximum-size chunk is buffered or the stream ends.
func (c *Chunker) fill() error {
	if len(c.buf)-c.start < c.cut.max {
		c.end = copy(c.buf, c.buf[c.start:c.end])
		c.start = 0
	}
	// io.Reader allows (0, nil), but a reader that keeps returning it
	// would spin here forever; bufio gives up after 100 in a row too.
	empty := 0
	for c.end-c.start < c.cut.max {
		n, err := c.r.Read(c.buf[c.end:])
		c.end += n
		if err == io.EOF {
			c.eof = true
			return nil
		}
		if err != nil {
			return err
		}
		if n > 0 {
			empty = 0
		} else if empty++; empty >= 100 {
			return io.ErrNoProgress
		}
	}
	return nil
}
