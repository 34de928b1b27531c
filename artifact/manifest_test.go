package artifact

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// testParams makes small chunks: minimum 64, maximum 1024 bytes.
var testParams = ChunkerParamsForAverage(256)

func testChunk(seed string, size int) *droverv1.ManifestChunk {
	d := Sum([]byte(seed))
	return &droverv1.ManifestChunk{Digest: d[:], Size: uint32(size)}
}

// validManifest is a small manifest that passes validation; each case of
// the validation table breaks one thing about it.
func validManifest() *droverv1.Manifest {
	return &droverv1.Manifest{
		FormatVersion: FormatVersion,
		Chunker:       testParams.Proto(),
		Files: []*droverv1.ManifestFile{
			{Path: "config.json", Mode: ModeRegular, Size: 100, Chunks: []*droverv1.ManifestChunk{testChunk("c", 100)}},
			{Path: "run.sh", Mode: ModeExecutable, Size: 0},
			{Path: "weights/layer0.bin", Mode: ModeRegular, Size: 1534, Chunks: []*droverv1.ManifestChunk{
				testChunk("w0", 1024), testChunk("w1", 500), testChunk("w2", 10),
			}},
		},
		TotalSize:    1634,
		CreateTime:   timestamppb.New(timestamppb.Now().AsTime()),
		Model:        "resnet-50",
		VersionLabel: "v1.2 (fine-tuned)",
	}
}

func withUnknownField(m proto.Message) {
	b := protowire.AppendTag(nil, 999, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	m.ProtoReflect().SetUnknown(b)
}

func TestValidateManifest(t *testing.T) {
	if err := ValidateManifest(validManifest(), DefaultLimits()); err != nil {
		t.Fatalf("the valid manifest: %v", err)
	}
	file := func(m *droverv1.Manifest, i int) *droverv1.ManifestFile { return m.Files[i] }
	// setPaths replaces the paths of the first files, keeping sizes valid.
	setPaths := func(paths ...string) func(m *droverv1.Manifest) {
		return func(m *droverv1.Manifest) {
			for i, p := range paths {
				m.Files[i].Path = p
			}
		}
	}
	for _, tt := range []struct {
		name    string
		limits  Limits
		edit    func(m *droverv1.Manifest)
		wantErr error
		wantMsg string
	}{
		{"format version", Limits{}, func(m *droverv1.Manifest) { m.FormatVersion = 2 }, nil, "format version 2 is not supported"},
		{"no chunker", Limits{}, func(m *droverv1.Manifest) { m.Chunker = nil }, nil, "parameters missing"},
		{"chunker algorithm", Limits{}, func(m *droverv1.Manifest) { m.Chunker.Algorithm = "rabin" }, nil, `algorithm "rabin" is not supported`},
		{"chunker sizes", Limits{}, func(m *droverv1.Manifest) { m.Chunker.AvgSize = 300 }, nil, "power of two"},
		{"create time", Limits{}, func(m *droverv1.Manifest) { m.CreateTime.Nanos = -1 }, nil, "create time"},
		{"model name", Limits{}, func(m *droverv1.Manifest) { m.Model = "Bad Name" }, nil, "model name"},
		{"version label", Limits{}, func(m *droverv1.Manifest) { m.VersionLabel = "v1\x1b[31m" }, nil, "version label"},
		{"no files", Limits{}, func(m *droverv1.Manifest) { m.Files = nil; m.TotalSize = 0 }, ErrEmptyTree, ""},
		{"empty path", Limits{}, setPaths(""), ErrBadPath, "empty path"},
		{"absolute path", Limits{}, setPaths("/etc/passwd"), ErrEscapesRoot, "absolute"},
		{"dot-dot", Limits{}, setPaths("../../.ssh/authorized_keys"), ErrEscapesRoot, `".."`},
		{"dot-dot inside", Limits{}, setPaths("a/../../b"), ErrEscapesRoot, `".."`},
		{"double slash", Limits{}, setPaths("a//b"), ErrBadPath, "empty"},
		{"trailing slash", Limits{}, setPaths("a/"), ErrBadPath, "empty"},
		{"dot component", Limits{}, setPaths("./a"), ErrBadPath, `"."`},
		{"backslash", Limits{}, setPaths(`a\b`), ErrBadPath, "backslash"},
		{"NUL", Limits{}, setPaths("a\x00b"), ErrBadPath, "U+0000"},
		{"newline", Limits{}, setPaths("a\nb"), ErrBadPath, "U+000A"},
		{"right-to-left override", Limits{}, setPaths("\u202egnp.exe"), ErrBadPath, "U+202E"},
		{"not UTF-8", Limits{}, setPaths("caf\xe9"), ErrBadPath, "UTF-8"},
		{"long name", Limits{}, setPaths(strings.Repeat("n", 256)), ErrBadPath, "name of 256 bytes"},
		{"long path", Limits{}, setPaths(strings.Repeat("d/", 2048) + "f"), ErrBadPath, "path of 4097 bytes"},
		{"duplicate", Limits{}, setPaths("a", "a"), ErrBadPath, "listed twice"},
		{"unsorted", Limits{}, setPaths("b", "a"), nil, "sorted"},
		{"case collision", Limits{}, setPaths("Config.json", "config.json"), ErrBadPath, "differ only in case"},
		{"file inside a file", Limits{}, setPaths("model", "model/weights"), ErrBadPath, `"model" is a file`},
		{"file deep inside a file", Limits{}, setPaths("a", "a-b", "a/b/c"), ErrBadPath, `"a" is a file`},
		{"mode 0777", Limits{}, func(m *droverv1.Manifest) { file(m, 0).Mode = 0o777 }, nil, "mode 0777"},
		{"mode 0", Limits{}, func(m *droverv1.Manifest) { file(m, 0).Mode = 0 }, nil, "mode 0"},
		{"setuid", Limits{}, func(m *droverv1.Manifest) { file(m, 1).Mode = 0o4755 }, nil, "mode 04755"},
		{"short digest", Limits{}, func(m *droverv1.Manifest) { file(m, 0).Chunks[0].Digest = make([]byte, 31) }, nil, "digest of 31 bytes"},
		{"empty chunk", Limits{}, func(m *droverv1.Manifest) {
			file(m, 1).Chunks = []*droverv1.ManifestChunk{testChunk("e", 0)}
		}, nil, "size 0"},
		{"chunk over max", Limits{}, func(m *droverv1.Manifest) {
			f := file(m, 2)
			f.Chunks = []*droverv1.ManifestChunk{testChunk("big", 1534)}
		}, nil, "size 1534 is not one the chunker makes"},
		{"last chunk of 2 GiB", Limits{}, func(m *droverv1.Manifest) {
			// On a 32-bit device this size is negative as an int.
			f := file(m, 0)
			d := Sum([]byte("huge"))
			f.Chunks = []*droverv1.ManifestChunk{{Digest: d[:], Size: 1 << 31}}
			f.Size = 1 << 31
			m.TotalSize = 1<<31 + 1534
		}, nil, "size 2147483648 is not one the chunker makes"},
		{"inner chunk under min", Limits{}, func(m *droverv1.Manifest) {
			f := file(m, 2)
			f.Chunks = []*droverv1.ManifestChunk{testChunk("a", 1024), testChunk("b", 10), testChunk("c", 500)}
		}, nil, "size 10 is not one the chunker makes"},
		{"chunks short of file", Limits{}, func(m *droverv1.Manifest) { file(m, 0).Size = 101; m.TotalSize++ }, nil, "chunks add up to 100 bytes, the file has 101"},
		{"empty file with chunks", Limits{}, func(m *droverv1.Manifest) {
			file(m, 1).Chunks = []*droverv1.ManifestChunk{testChunk("x", 5)}
		}, nil, "chunks add up to 5 bytes, the file has 0"},
		{"total", Limits{}, func(m *droverv1.Manifest) { m.TotalSize = 1 }, nil, "the total says 1"},
		{"unknown field", Limits{}, func(m *droverv1.Manifest) { withUnknownField(m) }, nil, "does not know"},
		{"unknown field in a chunk", Limits{}, func(m *droverv1.Manifest) { withUnknownField(file(m, 2).Chunks[1]) }, nil, `a chunk of file "weights/layer0.bin"`},
		{"too many files", Limits{MaxFiles: 2}, func(*droverv1.Manifest) {}, ErrTooLarge, "3 files"},
		{"too many chunks", Limits{MaxChunks: 3}, func(*droverv1.Manifest) {}, ErrTooLarge, "4 chunks"},
		{"too many bytes", Limits{MaxTotalSize: 1000}, func(*droverv1.Manifest) {}, ErrTooLarge, "1634 bytes"},
		{"manifest too large", Limits{MaxManifestBytes: 100}, func(*droverv1.Manifest) {}, ErrTooLarge, "bytes encoded"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := validManifest()
			tt.edit(m)
			err := ValidateManifest(m, tt.limits)
			if !errors.Is(err, ErrInvalidManifest) {
				t.Fatalf("ValidateManifest = %v, want ErrInvalidManifest", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want it to wrap %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not say %q", err, tt.wantMsg)
			}
		})
	}
	if err := ValidateManifest(nil, Limits{}); !errors.Is(err, ErrInvalidManifest) {
		t.Errorf("nil manifest: %v", err)
	}
}

func TestMarshalAndDecodeManifest(t *testing.T) {
	m := validManifest()
	b1, err := MarshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := MarshalManifest(proto.Clone(m).(*droverv1.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b1, b2) {
		t.Fatal("two encodings of one manifest differ")
	}
	got, err := DecodeManifest(b1, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, m) {
		t.Fatal("decoded manifest differs")
	}

	bad := validManifest()
	bad.TotalSize = 7
	if _, err := MarshalManifest(bad); !errors.Is(err, ErrInvalidManifest) {
		t.Errorf("marshal of an invalid manifest: %v", err)
	}
	if _, err := DecodeManifest([]byte("\xff\xff\xff"), DefaultLimits()); !errors.Is(err, ErrInvalidManifest) {
		t.Errorf("garbage: %v", err)
	}
	if _, err := DecodeManifest(b1, Limits{MaxManifestBytes: len(b1) - 1}); !errors.Is(err, ErrTooLarge) || !errors.Is(err, ErrInvalidManifest) {
		t.Errorf("over the byte limit: %v", err)
	}
}

// Agents decode manifests from the network before anything else: no input
// may panic, every refusal is ErrInvalidManifest, and what is accepted is
// a manifest that holds together.
func FuzzDecodeManifest(f *testing.F) {
	good, err := MarshalManifest(validManifest())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{})
	f.Add(good[:len(good)/2])
	for _, edit := range []func(m *droverv1.Manifest){
		func(m *droverv1.Manifest) { m.Files[0].Path = "../x" },
		func(m *droverv1.Manifest) { m.Files[1].Path = "config.json/x" },
		func(m *droverv1.Manifest) { m.Files[2].Chunks[0].Size = 5 },
	} {
		m := validManifest()
		edit(m)
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b, DefaultLimits())
		if err != nil {
			if !errors.Is(err, ErrInvalidManifest) {
				t.Fatalf("refusal %v is not ErrInvalidManifest", err)
			}
			return
		}
		var total uint64
		for _, f := range m.GetFiles() {
			if err := checkPath(f.GetPath()); err != nil {
				t.Fatalf("accepted path %q: %v", f.GetPath(), err)
			}
			var sum uint64
			for _, c := range f.GetChunks() {
				sum += uint64(c.GetSize())
			}
			if sum != f.GetSize() {
				t.Fatalf("accepted file %q whose chunks do not add up", f.GetPath())
			}
			total += f.GetSize()
		}
		if total != m.GetTotalSize() {
			t.Fatal("accepted a wrong total")
		}
		if _, err := MarshalManifest(m); err != nil {
			t.Fatalf("accepted manifest does not marshal: %v", err)
		}
	})
}
