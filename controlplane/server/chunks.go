package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/controlplane/blobstore"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// ChunkStoreDir is where a server with data directory dataDir keeps its
// chunk store (controlplane/blobstore), for tools that inspect a stopped
// server's chunks.
func ChunkStoreDir(dataDir string) string { return filepath.Join(dataDir, chunksDirName) }

const (
	// maxManifestChunk is the largest chunk the chunker can cut, and so
	// the largest a valid manifest lists.
	maxManifestChunk = 64 << 20
	// chunksDirName is the chunk store's directory inside the data dir.
	chunksDirName = "chunks"
	// maxPieceBytes bounds one streamed piece of a chunk, as the schema
	// says, so that no message comes near MaxRequestBytes.
	maxPieceBytes = 1 << 20
	// pushIdleTimeout is how long a push keeps its chunks pinned after
	// its last StartPush or upload: long enough for a slow link to
	// resume, short enough that an abandoned push frees its pins.
	pushIdleTimeout = time.Hour
	// pushSweepInterval is how often expired pushes are dropped.
	pushSweepInterval = time.Minute
	// missingBatch bounds the digests in one MissingChunks call: 32 bytes
	// each keeps a call near 2 MiB, under the smallest MaxRequestBytes.
	missingBatch = 60_000
	// signingKeyPurpose names the cluster's manifest signing key among
	// the keys derived from the CA. Changing it changes the key, and every
	// agent would distrust the versions signed before.
	signingKeyPurpose = "drover manifest signing key v1"
)

// setupChunks opens the chunk store and derives the cluster's manifest
// signing key. It runs after setupTLS, which loads the CA.
func (s *Server) setupChunks() error {
	opts := blobstore.DefaultOptions()
	opts.Hash = artifact.NewHasher
	opts.ReserveBytes = s.cfg.ChunkReserveBytes
	opts.GCGrace = time.Duration(s.cfg.ChunkGCGrace)
	// The largest chunk a valid manifest may list (the chunker's bound).
	opts.MaxChunkSize = maxManifestChunk
	opts.Logger = s.logger.With("component", "chunks")
	store, err := blobstore.Open(filepath.Join(s.cfg.DataDir, chunksDirName), opts)
	if err != nil {
		return fmt.Errorf("open chunk store: %w", err)
	}
	key, err := artifact.SigningKeyFromSeed(pki.DeriveKey(s.ca, signingKeyPurpose, 32))
	if err != nil {
		_ = store.Close()
		return fmt.Errorf("derive manifest signing key: %w", err)
	}
	s.chunks = store
	s.signingKey = key
	s.pushes = newPushRegistry(store)
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.pushes.sweepLoop(s.ctx)
	}()
	go func() {
		defer s.wg.Done()
		s.chunkGCLoop(s.ctx)
	}()
	return nil
}

// manifestKeyBytes is manifestTrust as GetClusterInfo sends it.
func (s *Server) manifestKeyBytes() (map[string][]byte, []string) {
	trusted, revoked := s.manifestTrust()
	out := make(map[string][]byte, len(trusted))
	for id, pub := range trusted {
		out[string(id)] = pub
	}
	return out, revoked
}

// artifactLimits are the bounds a pushed manifest must keep.
func (s *Server) artifactLimits() artifact.Limits {
	l := artifact.DefaultLimits()
	l.MaxTotalSize = s.cfg.MaxVersionBytes
	return l
}

// push is one StartPush's state on the server that received it.
type push struct {
	models   map[string]bool // models pushed with this manifest here
	sizes    map[blobstore.Key]int64
	release  func()
	lastUsed time.Time
}

// pushRegistry holds the active pushes of one server, by artifact digest.
// Each pins its manifest's chunks in the store until it expires.
type pushRegistry struct {
	store *blobstore.Store
	now   func() time.Time

	mu     sync.Mutex // guards pushes
	pushes map[string]*push
}

func newPushRegistry(store *blobstore.Store) *pushRegistry {
	return &pushRegistry{store: store, now: time.Now, pushes: make(map[string]*push)}
}

// start registers (or refreshes) the push of a manifest for model.
func (r *pushRegistry) start(id, model string, sizes map[blobstore.Key]int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.pushes[id]
	if !ok {
		keys := make([]blobstore.Key, 0, len(sizes))
		for k := range sizes {
			keys = append(keys, k)
		}
		p = &push{models: make(map[string]bool), sizes: sizes, release: r.store.Pin(keys...)}
		r.pushes[id] = p
	}
	p.models[model] = true
	p.lastUsed = r.now()
}

// get returns an active push and marks it used, or nil.
func (r *pushRegistry) get(id string) *push {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.pushes[id]
	if !ok || r.now().Sub(p.lastUsed) > pushIdleTimeout {
		return nil
	}
	p.lastUsed = r.now()
	return p
}

// touch keeps a push alive while its chunks arrive.
func (r *pushRegistry) touch(p *push) {
	r.mu.Lock()
	p.lastUsed = r.now()
	r.mu.Unlock()
}

// finish ends a push whose version exists, releasing its pins.
func (r *pushRegistry) finish(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.pushes[id]; ok {
		p.release()
		delete(r.pushes, id)
	}
}

// sweep drops the pushes idle longer than pushIdleTimeout, or all of them
// when all is set, releasing their pins.
func (r *pushRegistry) sweep(all bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, p := range r.pushes {
		if all || r.now().Sub(p.lastUsed) > pushIdleTimeout {
			p.release()
			delete(r.pushes, id)
		}
	}
}

func (r *pushRegistry) sweepLoop(ctx context.Context) {
	t := time.NewTicker(pushSweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			r.sweep(true)
			return
		case <-t.C:
			r.sweep(false)
		}
	}
}

// piece is one message of a chunk stream: UploadChunks, PutChunks and
// GetChunks all carry chunks this way.
type piece struct {
	digest []byte
	size   uint64
	data   []byte
}

// errProtocol marks a chunk stream whose pieces do not add up.
var errProtocol = errors.New("chunk stream out of order")

// receiveChunks stores the chunks of a stream of pieces, one at a time:
// no more than one piece is held in memory. accept may refuse a chunk
// before its bytes are read. It returns how many chunks and bytes were
// stored (chunks already present included).
func receiveChunks(ctx context.Context, store *blobstore.Store, next func() (piece, error), accept func(blobstore.Key, int64) error) (chunks uint32, bytes uint64, err error) {
	for {
		p, err := next()
		if errors.Is(err, io.EOF) {
			return chunks, bytes, nil
		}
		if err != nil {
			return chunks, bytes, err
		}
		if len(p.digest) == 0 {
			return chunks, bytes, fmt.Errorf("%w: a piece names no chunk; the first piece of each chunk must carry its digest and size", errProtocol)
		}
		d, err := artifact.DigestFromBytes(p.digest)
		if err != nil {
			return chunks, bytes, fmt.Errorf("%w: %w", errProtocol, err)
		}
		k := blobstore.Key(d)
		if p.size == 0 || uint64(len(p.data)) > p.size {
			return chunks, bytes, fmt.Errorf("%w: chunk %s says it has %d bytes but its first piece has %d", errProtocol, d, p.size, len(p.data))
		}
		if err := accept(k, int64(p.size)); err != nil {
			return chunks, bytes, err
		}
		r := &pieceReader{d: d, buf: p.data, left: p.size - uint64(len(p.data)), next: next}
		err = store.Put(ctx, k, r, int64(p.size))
		if r.err != nil {
			return chunks, bytes, r.err
		}
		if err != nil {
			return chunks, bytes, err
		}
		// Put does not read a chunk it already holds; its pieces are
		// still on the stream.
		if err := r.drain(); err != nil {
			return chunks, bytes, err
		}
		chunks++
		bytes += p.size
	}
}

// pieceReader reads one chunk's bytes from the pieces that carry it.
type pieceReader struct {
	d    artifact.Digest
	buf  []byte // received, not yet read
	left uint64 // still to receive
	next func() (piece, error)
	err  error // why the stream broke, as opposed to why Put refused
}

func (r *pieceReader) Read(b []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.left == 0 {
			return 0, io.EOF
		}
		p, err := r.next()
		switch {
		case errors.Is(err, io.EOF):
			r.err = fmt.Errorf("%w: the stream ended %d bytes before the end of chunk %s", errProtocol, r.left, r.d)
		case err != nil:
			r.err = err
		case len(p.digest) > 0:
			r.err = fmt.Errorf("%w: a new chunk started %d bytes before the end of chunk %s", errProtocol, r.left, r.d)
		case uint64(len(p.data)) > r.left:
			r.err = fmt.Errorf("%w: a piece runs %d bytes past the end of chunk %s", errProtocol, uint64(len(p.data))-r.left, r.d)
		}
		if r.err != nil {
			return 0, r.err
		}
		r.buf, r.left = p.data, r.left-uint64(len(p.data))
	}
	n := copy(b, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *pieceReader) drain() error {
	for {
		r.buf = nil
		if r.left == 0 {
			return nil
		}
		if _, err := r.Read(nil); err != nil {
			return err
		}
	}
}

// sendChunks streams the stored chunks named by keys in pieces.
func sendChunks(store *blobstore.Store, keys []blobstore.Key, send func(piece) error) error {
	buf := make([]byte, maxPieceBytes)
	for _, k := range keys {
		rc, size, err := store.Open(k)
		if err != nil {
			return err
		}
		first := true
		for sent := int64(0); first || sent < size; {
			n, err := io.ReadFull(rc, buf[:min(int64(len(buf)), size-sent)])
			if err != nil && n == 0 && size-sent > 0 {
				_ = rc.Close()
				return fmt.Errorf("read chunk %s: %w", k, err)
			}
			p := piece{data: buf[:n]}
			if first {
				p.digest, p.size = k[:], uint64(size)
				first = false
			}
			if err := send(p); err != nil {
				_ = rc.Close()
				return err
			}
			sent += int64(n)
		}
		_ = rc.Close()
	}
	return nil
}

// chunkError turns a chunk store or stream error into an API error that
// names the problem and the fix.
func (s *Server) chunkError(err error) error {
	var ce *connect.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce):
		return ce
	case errors.Is(err, errProtocol):
		return apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error(),
			"send each chunk as a first piece with its digest and size, then its remaining bytes in order")
	case errors.Is(err, blobstore.ErrDigestMismatch):
		return apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error(),
			"the bytes sent are not the chunk the manifest names: the file changed since the manifest was built; build it again and push again")
	case errors.Is(err, blobstore.ErrTooLarge):
		return apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error(),
			"chunk with the default chunker parameters")
	case errors.Is(err, blobstore.ErrNoSpace):
		return apiErr(connect.CodeResourceExhausted, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED,
			fmt.Sprintf("server %s: %v (the reserve is chunk_reserve_bytes in its config)", s.cfg.Name, err),
			"free disk space on the server, or push through another server")
	case errors.Is(err, blobstore.ErrClosed), errors.Is(err, context.Canceled):
		return apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED,
			fmt.Sprintf("server %s is stopping: %v", s.cfg.Name, err), "push again; chunks already stored are not sent again")
	}
	return apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, err.Error(), "")
}

// chunkHandler serves ChunkService: how servers copy chunks to one
// another. The auth interceptor admits only server certificates.
type chunkHandler struct{ s *Server }

var _ droverv1connect.ChunkServiceHandler = (*chunkHandler)(nil)

func (h *chunkHandler) MissingChunks(_ context.Context, req *connect.Request[droverv1.MissingChunksRequest]) (*connect.Response[droverv1.MissingChunksResponse], error) {
	keys, err := keysOf(req.Msg.GetDigests())
	if err != nil {
		return nil, err
	}
	out := &droverv1.MissingChunksResponse{}
	for _, k := range h.s.chunks.Missing(keys) {
		out.Missing = append(out.Missing, k[:])
	}
	return connect.NewResponse(out), nil
}

func (h *chunkHandler) PutChunks(ctx context.Context, stream *connect.ClientStream[droverv1.PutChunksRequest]) (*connect.Response[droverv1.PutChunksResponse], error) {
	next := func() (piece, error) {
		if !stream.Receive() {
			if err := stream.Err(); err != nil {
				return piece{}, err
			}
			return piece{}, io.EOF
		}
		m := stream.Msg()
		return piece{digest: m.GetDigest(), size: m.GetSize(), data: m.GetData()}, nil
	}
	n, _, err := receiveChunks(ctx, h.s.chunks, next, func(blobstore.Key, int64) error { return nil })
	if err != nil {
		return nil, h.s.chunkError(err)
	}
	return connect.NewResponse(&droverv1.PutChunksResponse{Stored: n}), nil
}

func (h *chunkHandler) GetChunks(_ context.Context, req *connect.Request[droverv1.GetChunksRequest], stream *connect.ServerStream[droverv1.GetChunksResponse]) error {
	keys, err := keysOf(req.Msg.GetDigests())
	if err != nil {
		return err
	}
	err = sendChunks(h.s.chunks, keys, func(p piece) error {
		return stream.Send(&droverv1.GetChunksResponse{Digest: p.digest, Size: p.size, Data: p.data})
	})
	if errors.Is(err, blobstore.ErrNotFound) {
		return apiErr(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND, err.Error(), "ask another server")
	}
	return h.s.chunkError(err)
}

// keysOf converts digests from a request.
func keysOf(digests [][]byte) ([]blobstore.Key, error) {
	keys := make([]blobstore.Key, 0, len(digests))
	for i, b := range digests {
		d, err := artifact.DigestFromBytes(b)
		if err != nil {
			return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
				fmt.Sprintf("digest %d: %v", i, err), "send 32-byte SHA-256 digests")
		}
		keys = append(keys, blobstore.Key(d))
	}
	return keys, nil
}

// chunkClient is a ChunkService client to another server, authenticated
// by this server's certificate.
func (f *forwarder) chunkClient(apiAddr string) droverv1connect.ChunkServiceClient {
	return droverv1connect.NewChunkServiceClient(&http.Client{Transport: f.transport}, "https://"+apiAddr)
}

// voter is a Raft voter and where to reach its API.
type voter struct {
	name    string
	apiAddr string // "" when gossip does not know it
	self    bool
}

// voters lists the Raft voters.
func (s *Server) voters() ([]voter, error) {
	future := s.raft.GetConfiguration()
	if err := future.Error(); err != nil {
		return nil, fmt.Errorf("read raft configuration: %w", err)
	}
	var out []voter
	for _, srv := range future.Configuration().Servers {
		if srv.Suffrage != raft.Voter {
			continue
		}
		v := voter{name: string(srv.ID), self: string(srv.ID) == s.cfg.Name}
		if m, ok := s.serverByName(v.name); ok && m.Status == memberAlive {
			v.apiAddr = m.APIAddr
		}
		out = append(out, v)
	}
	return out, nil
}

// missingOn asks a voter which of keys it lacks.
func (s *Server) missingOn(ctx context.Context, v voter, keys []blobstore.Key) (map[blobstore.Key]bool, error) {
	missing := make(map[blobstore.Key]bool)
	if v.self {
		for _, k := range s.chunks.Missing(keys) {
			missing[k] = true
		}
		return missing, nil
	}
	if v.apiAddr == "" {
		return nil, fmt.Errorf("server %s is not reachable in gossip", v.name)
	}
	client := s.forwarder.chunkClient(v.apiAddr)
	for start := 0; start < len(keys); start += missingBatch {
		batch := keys[start:min(start+missingBatch, len(keys))]
		req := &droverv1.MissingChunksRequest{Digests: make([][]byte, len(batch))}
		for i := range batch {
			req.Digests[i] = batch[i][:]
		}
		res, err := client.MissingChunks(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, fmt.Errorf("ask %s for missing chunks: %w", v.name, err)
		}
		for _, b := range res.Msg.GetMissing() {
			d, err := artifact.DigestFromBytes(b)
			if err != nil {
				return nil, fmt.Errorf("ask %s for missing chunks: %w", v.name, err)
			}
			missing[blobstore.Key(d)] = true
		}
	}
	return missing, nil
}

// fetchChunks copies keys from the server at apiAddr into the local store.
func (s *Server) fetchChunks(ctx context.Context, apiAddr string, keys []blobstore.Key) error {
	req := &droverv1.GetChunksRequest{Digests: make([][]byte, len(keys))}
	for i := range keys {
		req.Digests[i] = keys[i][:]
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := s.forwarder.chunkClient(apiAddr).GetChunks(ctx, connect.NewRequest(req))
	if err != nil {
		return err
	}
	defer stream.Close()
	want := make(map[blobstore.Key]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	next := func() (piece, error) {
		if !stream.Receive() {
			if err := stream.Err(); err != nil {
				return piece{}, err
			}
			return piece{}, io.EOF
		}
		m := stream.Msg()
		return piece{digest: m.GetDigest(), size: m.GetSize(), data: m.GetData()}, nil
	}
	n, _, err := receiveChunks(ctx, s.chunks, next, func(k blobstore.Key, _ int64) error {
		if !want[k] {
			return fmt.Errorf("%w: the peer sent chunk %s, which was not asked for", errProtocol, artifact.Digest(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	if int(n) != len(keys) {
		return fmt.Errorf("the peer sent %d of %d chunks", n, len(keys))
	}
	return nil
}

// putChunks copies keys from the local store to the server at apiAddr.
func (s *Server) putChunks(ctx context.Context, apiAddr string, keys []blobstore.Key) error {
	stream := s.forwarder.chunkClient(apiAddr).PutChunks(ctx)
	err := sendChunks(s.chunks, keys, func(p piece) error {
		return stream.Send(&droverv1.PutChunksRequest{Digest: p.digest, Size: p.size, Data: p.data})
	})
	res, cerr := stream.CloseAndReceive()
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if cerr != nil {
		return cerr
	}
	if int(res.Msg.GetStored()) != len(keys) {
		return fmt.Errorf("the peer stored %d of %d chunks", res.Msg.GetStored(), len(keys))
	}
	return nil
}
