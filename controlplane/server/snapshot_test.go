package server

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func writeSnapshotBytes(t testing.TB, header *droverv1.SnapshotHeader, body []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	sw, err := newSnapshotWriter(&buf, header)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sw.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := sw.finish(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func openBytes(t testing.TB, b []byte) (*snapshotFile, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.snap")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return openSnapshotFile(path)
}

func TestSnapshotFileRoundTrip(t *testing.T) {
	header := &droverv1.SnapshotHeader{Format: 1, Index: 42, Cluster: &droverv1.ClusterMeta{ClusterId: "abc"}}
	body := bytes.Repeat([]byte("state "), 1000)
	sf, err := openBytes(t, writeSnapshotBytes(t, header, body))
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	if !proto.Equal(sf.header, header) {
		t.Fatalf("header %v, want %v", sf.header, header)
	}
	var got bytes.Buffer
	if _, err := got.ReadFrom(sf.body()); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), body) {
		t.Fatal("body differs after round trip")
	}
}

// Every damaged variant of a valid file is refused before anything reads
// its body: truncated at any length, any single byte flipped, wrong magic.
func TestSnapshotFileDamage(t *testing.T) {
	good := writeSnapshotBytes(t, &droverv1.SnapshotHeader{Format: 1, Index: 7}, []byte("some state"))
	for n := 0; n < len(good); n++ {
		if _, err := openBytes(t, good[:n]); !errors.Is(err, ErrSnapshotInvalid) {
			t.Fatalf("truncated to %d bytes: err %v, want ErrSnapshotInvalid", n, err)
		}
	}
	for i := range good {
		bad := bytes.Clone(good)
		bad[i] ^= 0x40
		if _, err := openBytes(t, bad); !errors.Is(err, ErrSnapshotInvalid) {
			t.Fatalf("byte %d flipped: err %v, want ErrSnapshotInvalid", i, err)
		}
	}
}

// The snapshot file decoder never panics and never accepts a file whose
// checksum does not cover it.
func FuzzOpenSnapshotFile(f *testing.F) {
	f.Add(writeSnapshotBytes(f, &droverv1.SnapshotHeader{Format: 1, Index: 3}, []byte("x")))
	f.Add([]byte("DRVSNAP\x01\x00\x00\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		sf, err := openBytes(t, b)
		if err != nil {
			return
		}
		defer sf.Close()
		// Accepted: re-encoding header and body must give the same bytes.
		var body bytes.Buffer
		if _, err := body.ReadFrom(sf.body()); err != nil {
			t.Fatal(err)
		}
		if sf.bodyLen < 0 || int64(body.Len()) != sf.bodyLen {
			t.Fatalf("body length %d, read %d", sf.bodyLen, body.Len())
		}
	})
}
