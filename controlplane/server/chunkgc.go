package server

import (
	"context"
	"fmt"
	"time"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/controlplane/blobstore"
)

// chunkGCLoop removes, every ChunkGCInterval, the chunks no version
// references, until ctx ends. Every server collects its own store: what is
// referenced is the replicated state, the same on all of them.
func (s *Server) chunkGCLoop(ctx context.Context) {
	t := time.NewTicker(time.Duration(s.cfg.ChunkGCInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		removed, freed, err := s.collectChunks(ctx)
		switch {
		case err != nil:
			s.logger.Warn("chunk garbage collection skipped", "err", err)
		case removed > 0:
			s.logger.Info("removed chunks no version references", "chunks", removed, "bytes", freed)
		}
	}
}

// collectChunks runs one garbage collection of the chunk store. Chunks of
// pushes in progress are pinned, and every chunk is kept for ChunkGCGrace
// after it was written, so a chunk copied here for a version another
// server is committing survives until this server has applied it.
func (s *Server) collectChunks(ctx context.Context) (removed int, freed int64, err error) {
	if applied, committed := s.state.Index(), s.raft.CommitIndex(); applied < committed {
		// A server still replaying its log has not seen every version
		// yet; what it takes for unreferenced may not be.
		return 0, 0, fmt.Errorf("state at index %d is behind the commit index %d", applied, committed)
	}
	live, err := s.liveChunks()
	if err != nil {
		return 0, 0, err
	}
	return s.chunks.GC(ctx, func(k blobstore.Key) bool { _, ok := live[k]; return ok })
}

// liveChunks is every chunk a version of any model lists, with its size as
// the manifest gives it. A manifest that does not decode stops the caller
// (a collection, a fill round) rather than have its chunks taken for
// garbage or left unfilled unnoticed.
func (s *Server) liveChunks() (map[blobstore.Key]int64, error) {
	live := make(map[blobstore.Key]int64)
	for _, m := range s.state.Models() {
		versions, err := s.state.Versions(m.GetName())
		if err != nil {
			continue // deleted since Models was read
		}
		for _, v := range versions {
			signed := v.GetArtifact().GetSigned()
			if signed == nil {
				continue
			}
			man, err := artifact.DecodeManifest(signed.GetManifest(), artifact.Limits{})
			if err != nil {
				return nil, fmt.Errorf("manifest of %s@%d: %w", v.GetModel(), v.GetVersion(), err)
			}
			for _, f := range man.GetFiles() {
				for _, c := range f.GetChunks() {
					live[blobstore.Key(c.GetDigest())] = int64(c.GetSize())
				}
			}
		}
	}
	return live, nil
}
