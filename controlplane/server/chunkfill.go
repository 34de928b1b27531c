package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/droverhq/drover/controlplane/blobstore"
)

// A push leaves a version's chunks on a quorum of the servers; the others,
// and a server that comes back, is added, or is rebuilt with an empty
// store, copy them from their peers in the background (the filler), so
// that in the end every server holds every chunk of every version and
// losing any minority of servers loses no version.
const (
	// fillStreams bounds the GetChunks streams one server runs at once
	// while filling: the rest of the cluster keeps serving pushes and
	// agents meanwhile.
	fillStreams = 4
	// fillBatchBytes bounds the bytes one GetChunks stream asks for, so
	// that what is in flight at once is at most fillStreams of them, and
	// a failed stream repeats little.
	fillBatchBytes = 64 << 20
	// fillBatchChunks bounds the digests in one GetChunks request (32
	// bytes each), well under the smallest MaxRequestBytes.
	fillBatchChunks = 4096
	// fillBatchTime and fillMinRate bound how long one GetChunks stream
	// may take: a fixed allowance plus its bytes at a slow rate, so that
	// a peer that stalls does not hold a stream forever.
	fillBatchTime = 30 * time.Second
	fillMinRate   = 1 << 20 // bytes per second
	// fillRetryMin is the first delay before a round that left chunks
	// missing is tried again; it doubles up to the fill interval.
	fillRetryMin = time.Second
	// fillStartDelay lets a starting server find its peers in gossip
	// before its first round.
	fillStartDelay = 500 * time.Millisecond
	// fillKickDelay is how long after a kick (a new version, a joined
	// server) the round runs: a burst of versions, from a script or a
	// restore, makes one round rather than one each, since a round reads
	// every live version's manifest.
	fillKickDelay = 500 * time.Millisecond
	// fillAskTimeout bounds how long a round waits for a peer to say
	// which chunks it holds, so that a peer that does not answer (gossip
	// may call it alive for a while after it died) cannot stall it.
	fillAskTimeout = 30 * time.Second
)

// fillResult is what one fill round did.
type fillResult struct {
	wanted  int   // chunks live versions list that the store lacked
	fetched int   // of those, copied in this round
	bytes   int64 // bytes of the chunks copied
	missing int   // still missing when the round ended
	errors  int   // peers that did not answer, streams that failed
}

// kickFill asks for a fill round soon. It never blocks: a round already
// asked for covers this one.
func (s *Server) kickFill() {
	select {
	case s.fillKick <- struct{}{}:
	default:
	}
}

// chunkFillLoop runs fill rounds until ctx ends: soon after start, every
// ChunkFillInterval, fillKickDelay after kickFill asks (a new version
// applied, a server joined), and, while chunks stay missing, again after a delay that
// doubles from fillRetryMin up to the interval.
func (s *Server) chunkFillLoop(ctx context.Context) {
	interval := time.Duration(s.cfg.ChunkFillInterval)
	retry := min(fillRetryMin, interval)
	t := time.NewTimer(min(fillStartDelay, interval))
	defer t.Stop()
	kicked := false // a round is due fillKickDelay after the first kick
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.fillKick:
			if !kicked {
				kicked = true
				t.Reset(fillKickDelay)
			}
			continue
		}
		kicked = false
		res, err := s.fillChunks(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.logger.Warn("chunk fill round skipped", "err", err)
		} else if res.wanted > 0 {
			s.logger.Info("chunk fill round done", "missing_before", res.wanted, "fetched", res.fetched,
				"bytes", res.bytes, "missing", res.missing, "errors", res.errors)
		}
		next := interval
		if err != nil || res.missing > 0 {
			next, retry = retry, min(retry*2, interval)
		} else {
			retry = min(fillRetryMin, interval)
		}
		t.Reset(next)
	}
}

// watchVersions kicks the filler whenever the set of versions may have
// grown: the state's (model, latest version) pairs changed. It wakes on
// every state change, but only reads the models, which is cheap beside a
// fill round.
func (s *Server) watchVersions(ctx context.Context) {
	var idx uint64
	mark := ""
	for {
		next, err := s.state.WaitForIndex(ctx, idx)
		if err != nil {
			return // ctx ended
		}
		if next == idx {
			continue // only on a deadline, and ctx has none
		}
		idx = next
		if m := s.versionsMark(); m != mark {
			mark = m
			s.kickFill()
		}
	}
}

// versionsMark summarizes which versions exist: each model's name and
// latest version number. Versions are immutable and numbers never reused,
// so a new version always changes it.
func (s *Server) versionsMark() string {
	var b []byte
	for _, m := range s.state.Models() {
		b = fmt.Appendf(b, "%s@%d;", m.GetName(), m.GetLatestVersion())
	}
	return string(b)
}

// fillChunks runs one fill round: it copies from peers the chunks that
// live versions list and the local store lacks. The chunks it wants are
// pinned for the round, so that this server's GC cannot take one it has
// just copied, whatever happens to its version meanwhile.
//
// Every chunk goes through the store's Put, which hashes the bytes as they
// arrive, refuses them unless they match the digest, and syncs the file
// before the chunk is visible: a peer cannot plant a bad chunk.
func (s *Server) fillChunks(ctx context.Context) (fillResult, error) {
	var res fillResult
	live, err := s.liveChunks()
	if err != nil {
		return res, err
	}
	keys := make([]blobstore.Key, 0, len(live))
	for k := range live {
		keys = append(keys, k)
	}
	want := s.chunks.Missing(keys)
	res.wanted = len(want)
	s.metrics.chunksMissing.Set(float64(len(want)))
	if len(want) == 0 {
		return res, nil
	}
	release := s.chunks.Pin(want...)
	defer release()

	peers := s.fillPeers()
	// holders[k] lists the peers that said they hold k, by name.
	holders := make(map[blobstore.Key][]voter, len(want))
	var mu sync.Mutex // guards holders and res.errors while peers answer
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			actx, cancel := context.WithTimeout(ctx, fillAskTimeout)
			defer cancel()
			missing, err := s.missingOn(actx, p, want)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.errors++
				s.metrics.fillErrors.Inc()
				s.logger.Warn("chunk fill: cannot ask a server which chunks it holds", "peer", p.name, "err", err)
				return
			}
			for _, k := range want {
				if !missing[k] {
					holders[k] = append(holders[k], p)
				}
			}
		}()
	}
	wg.Wait()
	for _, hs := range holders {
		// Answers came in any order; sort them so that the spreading
		// below does not depend on it.
		slices.SortFunc(hs, func(a, b voter) int { return strings.Compare(a.name, b.name) })
	}

	// Each pass gives every chunk still missing to the holder with the
	// fewest bytes so far, skipping holders that failed it before; a
	// chunk runs out of passes when every holder failed it.
	failed := make(map[blobstore.Key]map[string]bool)
	todo := want
	for pass := 0; pass < len(peers) && len(todo) > 0 && ctx.Err() == nil; pass++ {
		load := make(map[string]int64)
		byPeer := make(map[string][]blobstore.Key)
		addr := make(map[string]string)
		from := make(map[blobstore.Key]string, len(todo))
		for _, k := range todo {
			var best *voter
			for i, h := range holders[k] {
				if failed[k][h.name] {
					continue
				}
				if best == nil || load[h.name] < load[best.name] {
					best = &holders[k][i]
				}
			}
			if best == nil {
				continue
			}
			load[best.name] += live[k]
			from[k] = best.name
			byPeer[best.name] = append(byPeer[best.name], k)
			addr[best.name] = best.apiAddr
		}
		if len(byPeer) == 0 {
			break
		}
		s.runFillBatches(ctx, fillBatches(byPeer, addr, live), live, &res)
		todo = s.chunks.Missing(todo)
		for _, k := range todo {
			if p, ok := from[k]; ok {
				if failed[k] == nil {
					failed[k] = make(map[string]bool)
				}
				failed[k][p] = true
			}
		}
	}
	res.missing = len(s.chunks.Missing(want))
	s.metrics.chunksMissing.Set(float64(res.missing))
	return res, nil
}

// fillPeers lists the other servers gossip sees alive: they may hold
// chunks whether or not they vote.
func (s *Server) fillPeers() []voter {
	var out []voter
	for _, m := range s.gossipServers() {
		if m.Name == s.cfg.Name || m.Status != memberAlive || m.APIAddr == "" {
			continue
		}
		out = append(out, voter{name: m.Name, apiAddr: m.APIAddr})
	}
	return out
}

// fillBatch is one GetChunks stream of a fill round.
type fillBatch struct {
	peer, addr string
	keys       []blobstore.Key
	bytes      int64
}

// fillBatches cuts each peer's chunks into streams of at most
// fillBatchBytes and fillBatchChunks (a larger chunk alone), and
// interleaves the peers, so that the streams running at once draw on all
// of them.
func fillBatches(byPeer map[string][]blobstore.Key, addr map[string]string, size map[blobstore.Key]int64) []fillBatch {
	names := make([]string, 0, len(byPeer))
	for n := range byPeer {
		names = append(names, n)
	}
	slices.Sort(names)
	perPeer := make([][]fillBatch, len(names))
	for i, n := range names {
		var cur fillBatch
		for _, k := range byPeer[n] {
			if len(cur.keys) > 0 && (cur.bytes+size[k] > fillBatchBytes || len(cur.keys) >= fillBatchChunks) {
				perPeer[i] = append(perPeer[i], cur)
				cur = fillBatch{}
			}
			cur.peer, cur.addr = n, addr[n]
			cur.keys = append(cur.keys, k)
			cur.bytes += size[k]
		}
		if len(cur.keys) > 0 {
			perPeer[i] = append(perPeer[i], cur)
		}
	}
	var out []fillBatch
	for j := 0; ; j++ {
		added := false
		for i := range perPeer {
			if j < len(perPeer[i]) {
				out = append(out, perPeer[i][j])
				added = true
			}
		}
		if !added {
			return out
		}
	}
}

// runFillBatches runs batches, at most fillStreams at a time, and adds
// what they copied to res. A stream that fails has kept the chunks it
// finished; the caller finds the rest still missing.
func (s *Server) runFillBatches(ctx context.Context, batches []fillBatch, size map[blobstore.Key]int64, res *fillResult) {
	jobs := make(chan fillBatch)
	var mu sync.Mutex // guards res
	var wg sync.WaitGroup
	for range min(fillStreams, len(batches)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range jobs {
				err := s.fillBatch(ctx, b)
				// Count what arrived, whether or not the stream ended well.
				var n int
				var bytes int64
				for _, k := range b.keys {
					if s.chunks.Has(k) {
						n++
						bytes += size[k]
					}
				}
				s.metrics.fillChunks.Add(float64(n))
				s.metrics.fillBytes.Add(float64(bytes))
				mu.Lock()
				res.fetched += n
				res.bytes += bytes
				if err != nil {
					res.errors++
				}
				mu.Unlock()
				if err != nil && ctx.Err() == nil {
					s.metrics.fillErrors.Inc()
					s.logger.Warn("chunk fill: copy from a peer failed; another holder is tried",
						"peer", b.peer, "chunks", len(b.keys), "copied", n, "err", err)
				}
			}
		}()
	}
	for _, b := range batches {
		select {
		case jobs <- b:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
}

// fillBatch copies one batch, within a time that grows with its bytes.
func (s *Server) fillBatch(ctx context.Context, b fillBatch) error {
	ctx, cancel := context.WithTimeout(ctx, fillBatchTime+time.Duration(b.bytes/fillMinRate)*time.Second)
	defer cancel()
	// A peer that answered MissingChunks a moment ago may still lack a
	// chunk now (its GC took one whose version was deleted since); the
	// chunks before it have arrived all the same.
	return s.fetchChunks(ctx, b.addr, b.keys)
}

// chunksMissingNow counts the chunks live versions list that the store
// lacks, for status. It decodes every live manifest, so it is for calls
// people make, not for hot paths.
func (s *Server) chunksMissingNow() (uint64, error) {
	live, err := s.liveChunks()
	if err != nil {
		return 0, err
	}
	keys := make([]blobstore.Key, 0, len(live))
	for k := range live {
		keys = append(keys, k)
	}
	return uint64(len(s.chunks.Missing(keys))), nil
}
