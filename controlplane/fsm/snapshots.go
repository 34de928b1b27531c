package fsm

import (
	"io"

	"github.com/hashicorp/raft"
)

// NewSnapshotStore wraps the Raft snapshot store a server gives Raft, so
// that FSM.Restore learns the Raft index of the snapshot it restores.
// raft.FSM.Restore receives only a reader; without the index, a restored
// state would take the index written inside the snapshot, which for an
// operator's snapshot is older than what clients have seen since (see
// state.Store.RestoreAt).
//
// Raft opens a snapshot and hands the reader to FSM.Restore, wrapped in
// readers that implement raft.ReadCloserWrapper, on every restore path: at
// start-up, after a snapshot installed from the leader and after an
// operator's restore. Readers opened to send a snapshot to a follower are
// only read; the tag is inert there.
func NewSnapshotStore(inner raft.SnapshotStore) raft.SnapshotStore {
	return &snapshotStore{SnapshotStore: inner}
}

type snapshotStore struct {
	raft.SnapshotStore
}

var _ raft.SnapshotStore = (*snapshotStore)(nil)

// Open opens a snapshot and tags its reader with the snapshot's Raft index.
func (s *snapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.SnapshotStore.Open(id)
	if err != nil {
		return nil, nil, err
	}
	return meta, &indexedReader{ReadCloser: rc, index: meta.Index}, nil
}

// indexedReader is a snapshot's contents tagged with its Raft index.
type indexedReader struct {
	io.ReadCloser
	index uint64
}

// raftIndexOf returns the Raft index a snapshot reader was tagged with by
// a store from NewSnapshotStore, looking through Raft's wrappers, or 0 for
// a reader without one.
func raftIndexOf(rc io.ReadCloser) uint64 {
	for {
		switch r := rc.(type) {
		case *indexedReader:
			return r.index
		case raft.ReadCloserWrapper:
			rc = r.WrappedReadCloser()
		default:
			return 0
		}
	}
}
