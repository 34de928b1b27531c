package server

import (
	"testing"

	"github.com/droverhq/drover/controlplane/blobstore"
)

// fillBatches asks each peer only for its own chunks, every chunk once,
// keeps a stream within fillBatchBytes unless one chunk alone is larger,
// and alternates the peers so that the streams running at once draw on
// all of them.
func TestFillBatches(t *testing.T) {
	size := map[blobstore.Key]int64{}
	byPeer := map[string][]blobstore.Key{}
	key := func(i int) blobstore.Key { return blobstore.Key{byte(i), byte(i >> 8)} }
	for i := range 40 {
		k := key(i)
		size[k] = 8 << 20
		if i == 3 {
			size[k] = fillBatchBytes + 1 // a chunk over the bound goes alone
		}
		p := "s2"
		if i%4 == 0 {
			p = "s3"
		}
		byPeer[p] = append(byPeer[p], k)
	}
	addr := map[string]string{"s2": "s2:7400", "s3": "s3:7400"}
	batches := fillBatches(byPeer, addr, size)

	seen := map[blobstore.Key]bool{}
	for i, b := range batches {
		if b.addr != addr[b.peer] {
			t.Errorf("batch %d for %s goes to %s", i, b.peer, b.addr)
		}
		var bytes int64
		for _, k := range b.keys {
			if seen[k] {
				t.Errorf("chunk %x asked for twice", k[:2])
			}
			seen[k] = true
			found := false
			for _, pk := range byPeer[b.peer] {
				found = found || pk == k
			}
			if !found {
				t.Errorf("chunk %x asked of %s, which was not given it", k[:2], b.peer)
			}
			bytes += size[k]
		}
		if bytes != b.bytes {
			t.Errorf("batch %d says %d bytes, holds %d", i, b.bytes, bytes)
		}
		if bytes > fillBatchBytes && len(b.keys) > 1 {
			t.Errorf("batch %d holds %d bytes in %d chunks, over %d", i, bytes, len(b.keys), fillBatchBytes)
		}
	}
	if len(seen) != len(size) {
		t.Errorf("batches hold %d chunks, want %d", len(seen), len(size))
	}
	// s3 has 10 chunks (2 batches) and s2 30 (more): the first four
	// alternate.
	if len(batches) < 4 || batches[0].peer == batches[1].peer || batches[2].peer == batches[3].peer {
		var order []string
		for _, b := range batches {
			order = append(order, b.peer)
		}
		t.Errorf("batches go to %v, want the peers alternating while both have some", order)
	}
}
