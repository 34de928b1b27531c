package artifact

import (
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/internal/names"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// FormatVersion is the manifest format this package writes and the only
// one it reads: SHA-256 digests and the ChunkerAlgorithm chunking.
const FormatVersion = 1

// The two file modes a manifest may hold: only the executable bit of a
// published file survives, as in git.
const (
	ModeRegular    = 0o644
	ModeExecutable = 0o755
)

// Bounds on paths that hold on every file system Drover writes to.
const (
	maxPathLength   = 4096
	maxNameLength   = 255
	maxVersionLabel = 128
)

// Limits bound what a manifest may ask of the machine that reads it. A zero
// field is no bound: DefaultLimits gives bounds for a server or GPU node,
// and a small device should lower them.
type Limits struct {
	// MaxTotalSize bounds the bytes of all files together.
	MaxTotalSize int64
	// MaxFiles bounds the number of files.
	MaxFiles int
	// MaxChunks bounds the number of chunks, counting repeats.
	MaxChunks int
	// MaxManifestBytes bounds the encoded manifest. Decoding holds about
	// three times this in memory.
	MaxManifestBytes int
}

// DefaultLimits returns bounds that fit the largest models published
// today (a 1 TiB artifact is about 850,000 chunks of the default size) and
// keep a decoded manifest to about 150 MB of memory.
func DefaultLimits() Limits {
	return Limits{
		MaxTotalSize:     1 << 40,
		MaxFiles:         100_000,
		MaxChunks:        1 << 20,
		MaxManifestBytes: 48 << 20,
	}
}

// MarshalManifest validates m and encodes it deterministically. The
// returned bytes are the manifest from then on: sign them, store them and
// send them as they are, and take the artifact's digest with Sum over
// them. Decoding and encoding again may give other bytes (another
// library, or this one in a later version), so nothing may re-encode a
// manifest and expect its digest to hold.
func MarshalManifest(m *droverv1.Manifest) ([]byte, error) {
	if err := ValidateManifest(m, Limits{}); err != nil {
		return nil, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal manifest: %w", err)
	}
	return b, nil
}

// DecodeManifest decodes received manifest bytes and validates them
// against limits. It never panics, whatever the bytes.
func DecodeManifest(b []byte, limits Limits) (*droverv1.Manifest, error) {
	if limits.MaxManifestBytes > 0 && len(b) > limits.MaxManifestBytes {
		return nil, fmt.Errorf("decode manifest: %d bytes, over the limit of %d: %w", len(b), limits.MaxManifestBytes, errors.Join(ErrInvalidManifest, ErrTooLarge))
	}
	m := new(droverv1.Manifest)
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w: %v", ErrInvalidManifest, err)
	}
	if err := ValidateManifest(m, limits); err != nil {
		return nil, err
	}
	return m, nil
}

// ValidateManifest checks everything about m that can be checked without
// its chunks' bytes, so an agent can refuse a manifest before it fetches
// anything:
//
//   - the format version, the chunker parameters, the model name, the
//     version label and the creation time are ones this build knows;
//   - there is at least one file; files are sorted by path, each path is
//     relative, clean, printable UTF-8, has no "..", is unique even
//     ignoring case, and is no other file's directory;
//   - each mode is 0644 or 0755;
//   - each chunk has a 32-byte digest and a size the chunker can produce,
//     and a file's chunks add up to its size; the sizes add up to the
//     total;
//   - no field is unknown to this build, since it could carry meaning a
//     verifier would silently skip;
//   - the counts and sizes are within limits.
//
// Every error wraps ErrInvalidManifest, and ErrTooLarge, ErrBadPath,
// ErrEscapesRoot or ErrEmptyTree where one of those is the reason.
func ValidateManifest(m *droverv1.Manifest, limits Limits) error {
	if err := validateManifest(m, limits); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidManifest, err)
	}
	return nil
}

func validateManifest(m *droverv1.Manifest, limits Limits) error {
	if m == nil {
		return errors.New("no manifest")
	}
	if v := m.GetFormatVersion(); v != FormatVersion {
		return fmt.Errorf("format version %d is not supported (this build reads version %d): upgrade Drover", v, FormatVersion)
	}
	if err := unknownFields(m); err != nil {
		return err
	}
	params, err := ChunkerParamsFromProto(m.GetChunker())
	if err != nil {
		return err
	}
	if ct := m.GetCreateTime(); ct != nil {
		if err := ct.CheckValid(); err != nil {
			return fmt.Errorf("create time: %v", err)
		}
	}
	if mn := m.GetModel(); mn != "" && !names.IsName(mn) {
		return fmt.Errorf("model name %q: %s", mn, names.Rule)
	}
	if l := m.GetVersionLabel(); len(l) > maxVersionLabel || !printable(l) {
		return fmt.Errorf("version label %q: use at most %d printable characters", l, maxVersionLabel)
	}

	files := m.GetFiles()
	if len(files) == 0 {
		return ErrEmptyTree
	}
	if limits.MaxFiles > 0 && len(files) > limits.MaxFiles {
		return fmt.Errorf("%d files, over the limit of %d: %w", len(files), limits.MaxFiles, ErrTooLarge)
	}
	chunks := 0
	for _, f := range files {
		chunks += len(f.GetChunks())
	}
	if limits.MaxChunks > 0 && chunks > limits.MaxChunks {
		return fmt.Errorf("%d chunks, over the limit of %d: %w", chunks, limits.MaxChunks, ErrTooLarge)
	}
	if limits.MaxManifestBytes > 0 {
		if n := proto.Size(m); n > limits.MaxManifestBytes {
			return fmt.Errorf("%d bytes encoded, over the limit of %d: %w", n, limits.MaxManifestBytes, ErrTooLarge)
		}
	}

	isFile := make(map[string]bool, len(files))
	folded := make(map[string]string, len(files))
	var total uint64
	for i, f := range files {
		p := f.GetPath()
		if err := checkPath(p); err != nil {
			return fmt.Errorf("file %q: %w", p, err)
		}
		if i > 0 {
			switch prev := files[i-1].GetPath(); {
			case p == prev:
				return fmt.Errorf("file %q is listed twice: %w", p, ErrBadPath)
			case p < prev:
				return fmt.Errorf("file %q comes after %q: files must be sorted by path", p, prev)
			}
		}
		low := strings.ToLower(p)
		if other, dup := folded[low]; dup {
			return fmt.Errorf("files %q and %q differ only in case and would overwrite each other on macOS and Windows: %w", other, p, ErrBadPath)
		}
		folded[low] = p
		isFile[p] = true
		if mode := f.GetMode(); mode != ModeRegular && mode != ModeExecutable {
			return fmt.Errorf("file %q: mode %#o, want 0644 or 0755", p, mode)
		}
		if err := checkChunks(f, params); err != nil {
			return fmt.Errorf("file %q: %w", p, err)
		}
		var carry uint64
		total, carry = bits.Add64(total, f.GetSize(), 0)
		if carry != 0 {
			return errors.New("total size overflows")
		}
	}
	for _, f := range files {
		p := f.GetPath()
		for i := strings.IndexByte(p, '/'); i >= 0; i = nextSlash(p, i) {
			if isFile[p[:i]] {
				return fmt.Errorf("%q is a file, so %q cannot be inside it: %w", p[:i], p, ErrBadPath)
			}
		}
	}
	if total != m.GetTotalSize() {
		return fmt.Errorf("files add up to %d bytes but the total says %d", total, m.GetTotalSize())
	}
	if limits.MaxTotalSize > 0 && total > uint64(limits.MaxTotalSize) {
		return fmt.Errorf("%d bytes, over the limit of %d: %w", total, limits.MaxTotalSize, ErrTooLarge)
	}
	return nil
}

func nextSlash(p string, i int) int {
	j := strings.IndexByte(p[i+1:], '/')
	if j < 0 {
		return -1
	}
	return i + 1 + j
}

// checkChunks checks one file's chunk list against its size and the
// chunker: only a file's last chunk may be shorter than the minimum.
func checkChunks(f *droverv1.ManifestFile, p ChunkerParams) error {
	chunks := f.GetChunks()
	var sum uint64
	for i, c := range chunks {
		if len(c.GetDigest()) != DigestSize {
			return fmt.Errorf("chunk %d: digest of %d bytes, want %d", i, len(c.GetDigest()), DigestSize)
		}
		// int64, not int: on a 32-bit device a uint32 size could wrap.
		size := int64(c.GetSize())
		last := i == len(chunks)-1
		if size == 0 || size > int64(p.Max) || (!last && size < int64(p.Min)) {
			return fmt.Errorf("chunk %d (%s): size %d is not one the chunker makes (min %d, max %d)", i, digestOf(c), size, p.Min, p.Max)
		}
		sum += uint64(size)
	}
	if sum != f.GetSize() {
		return fmt.Errorf("chunks add up to %d bytes, the file has %d", sum, f.GetSize())
	}
	return nil
}

func digestOf(c *droverv1.ManifestChunk) Digest {
	d, _ := DigestFromBytes(c.GetDigest())
	return d
}

// checkPath checks one path of a manifest, which is also a path the
// assembler will create under its directory.
func checkPath(p string) error {
	if p == "" {
		return fmt.Errorf("empty path: %w", ErrBadPath)
	}
	if len(p) > maxPathLength {
		return fmt.Errorf("path of %d bytes, over %d: %w", len(p), maxPathLength, ErrBadPath)
	}
	if !utf8.ValidString(p) {
		return fmt.Errorf("not valid UTF-8: rename it: %w", ErrBadPath)
	}
	if p[0] == '/' {
		return fmt.Errorf("absolute path: %w", ErrEscapesRoot)
	}
	for _, r := range p {
		if r == '\\' {
			return fmt.Errorf("backslash in a path (a separator on Windows): rename it: %w", ErrBadPath)
		}
		if !unicode.IsGraphic(r) {
			return fmt.Errorf("unprintable character %U: rename it: %w", r, ErrBadPath)
		}
	}
	for name := range strings.SplitSeq(p, "/") {
		switch {
		case name == "..":
			return fmt.Errorf("\"..\" component: %w", ErrEscapesRoot)
		case name == "" || name == ".":
			return fmt.Errorf("empty or \".\" component: %w", ErrBadPath)
		case len(name) > maxNameLength:
			return fmt.Errorf("name of %d bytes, over %d: %w", len(name), maxNameLength, ErrBadPath)
		}
	}
	return nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsGraphic(r) {
			return false
		}
	}
	return true
}

// unknownFields refuses fields this build does not know, anywhere in m.
// It names each message of the schema rather than walking it by
// reflection, which costs several times as much on a million chunks; a
// new message in the schema must be added here.
func unknownFields(m *droverv1.Manifest) error {
	what := ""
	switch {
	case unknown(m):
		what = "the manifest"
	case unknown(m.GetChunker()):
		what = "the chunker parameters"
	case unknown(m.GetCreateTime()):
		what = "the creation time"
	}
	for _, f := range m.GetFiles() {
		if what != "" {
			break
		}
		if unknown(f) {
			what = fmt.Sprintf("file %q", f.GetPath())
		}
		for _, c := range f.GetChunks() {
			if unknown(c) {
				what = fmt.Sprintf("a chunk of file %q", f.GetPath())
				break
			}
		}
	}
	if what != "" {
		return fmt.Errorf("%s has fields this build does not know: upgrade Drover", what)
	}
	return nil
}

func unknown[T interface {
	proto.Message
	comparable
}](msg T) bool {
	var zero T
	return msg != zero && len(msg.ProtoReflect().GetUnknown()) > 0
}
