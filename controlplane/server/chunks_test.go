package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/controlplane/blobstore"
)

func openTestStore(t *testing.T) *blobstore.Store {
	t.Helper()
	opts := blobstore.DefaultOptions()
	opts.ReserveBytes = 0
	s, err := blobstore.Open(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// pieces returns a next function over fixed pieces.
func pieces(ps ...piece) func() (piece, error) {
	return func() (piece, error) {
		if len(ps) == 0 {
			return piece{}, io.EOF
		}
		p := ps[0]
		ps = ps[1:]
		return p, nil
	}
}

func TestReceiveChunks(t *testing.T) {
	a, b := []byte("first chunk's bytes"), []byte("second")
	da, db := artifact.Sum(a), artifact.Sum(b)
	all := func(blobstore.Key, int64) error { return nil }
	tests := []struct {
		name    string
		ps      []piece
		chunks  uint32
		wantErr error
	}{
		{"one piece each", []piece{{digest: da[:], size: uint64(len(a)), data: a}, {digest: db[:], size: uint64(len(b)), data: b}}, 2, nil},
		{"split pieces", []piece{{digest: da[:], size: uint64(len(a)), data: a[:3]}, {data: nil}, {data: a[3:10]}, {data: a[10:]}}, 1, nil},
		{"no first piece", []piece{{data: a}}, 0, errProtocol},
		{"stream ends inside a chunk", []piece{{digest: da[:], size: uint64(len(a)), data: a[:3]}}, 0, errProtocol},
		{"next chunk starts early", []piece{{digest: da[:], size: uint64(len(a)), data: a[:3]}, {digest: db[:], size: uint64(len(b)), data: b}}, 0, errProtocol},
		{"piece runs past the chunk", []piece{{digest: da[:], size: uint64(len(a)), data: a[:3]}, {data: append(append([]byte(nil), a[3:]...), 'x')}}, 0, errProtocol},
		{"first piece longer than the size", []piece{{digest: da[:], size: 2, data: a}}, 0, errProtocol},
		{"wrong bytes", []piece{{digest: da[:], size: uint64(len(b)), data: b}}, 0, blobstore.ErrDigestMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := openTestStore(t)
			n, _, err := receiveChunks(context.Background(), store, pieces(tt.ps...), all)
			if !errors.Is(err, tt.wantErr) || n != tt.chunks {
				t.Fatalf("stored %d chunks, err %v; want %d, %v", n, err, tt.chunks, tt.wantErr)
			}
			if tt.wantErr != nil && store.Count() != 0 {
				t.Errorf("a refused stream left %d chunks", store.Count())
			}
		})
	}

	// A chunk already present is not written again, and its pieces are
	// skipped so that the next chunk is read from the right place.
	store := openTestStore(t)
	if err := store.Put(context.Background(), blobstore.Key(da), bytes.NewReader(a), int64(len(a))); err != nil {
		t.Fatal(err)
	}
	n, size, err := receiveChunks(context.Background(), store, pieces(
		piece{digest: da[:], size: uint64(len(a)), data: a[:5]}, piece{data: a[5:]},
		piece{digest: db[:], size: uint64(len(b)), data: b}), all)
	if err != nil || n != 2 || size != uint64(len(a)+len(b)) || !store.Has(blobstore.Key(db)) {
		t.Fatalf("stored %d chunks of %d bytes, err %v; want both", n, size, err)
	}
}

// sendChunks and receiveChunks agree, with chunks over one piece.
func TestSendChunksRoundTrip(t *testing.T) {
	src, dst := openTestStore(t), openTestStore(t)
	big := make([]byte, 2*maxPieceBytes+17)
	for i := range big {
		big[i] = byte(i * 7)
	}
	small := []byte("small")
	var keys []blobstore.Key
	for _, b := range [][]byte{big, small} {
		k := blobstore.Key(artifact.Sum(b))
		if err := src.Put(context.Background(), k, bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	var sent []piece
	if err := sendChunks(src, keys, func(p piece) error {
		p.data = append([]byte(nil), p.data...) // the buffer is reused
		sent = append(sent, p)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(sent) != 4 {
		t.Errorf("sent %d pieces, want 3 for the big chunk and 1 for the small", len(sent))
	}
	n, _, err := receiveChunks(context.Background(), dst, pieces(sent...), func(blobstore.Key, int64) error { return nil })
	if err != nil || n != 2 || len(dst.Missing(keys)) != 0 {
		t.Fatalf("received %d chunks, err %v", n, err)
	}
}

// A push pins its chunks until it has been idle for pushIdleTimeout.
func TestPushRegistryExpiry(t *testing.T) {
	store := openTestStore(t)
	r := newPushRegistry(store)
	now := time.Unix(1_700_000_000, 0)
	r.now = func() time.Time { return now }
	k := blobstore.Key(artifact.Sum([]byte("chunk")))
	if err := store.Put(context.Background(), k, bytes.NewReader([]byte("chunk")), 5); err != nil {
		t.Fatal(err)
	}
	r.start("push", "llama", map[blobstore.Key]int64{k: 5})
	pinned := func() bool {
		info, err := store.Stat(k)
		if err != nil {
			t.Fatal(err)
		}
		return info.Pinned
	}
	if !pinned() {
		t.Fatal("a started push does not pin its chunks")
	}
	now = now.Add(pushIdleTimeout / 2)
	if r.get("push") == nil {
		t.Fatal("a push used half its idle time ago is gone")
	}
	now = now.Add(pushIdleTimeout / 2)
	r.sweep(false)
	if r.get("push") == nil || !pinned() {
		t.Fatal("get did not keep the push alive")
	}
	now = now.Add(pushIdleTimeout + time.Second)
	if r.get("push") != nil {
		t.Error("an idle push is still served")
	}
	r.sweep(false)
	if pinned() {
		t.Error("an expired push still pins its chunks")
	}
}
