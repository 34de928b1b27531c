package fetch

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/artifact"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// ServerSource reads one version's chunks from a control-plane server
// with AgentService.GetChunk, over the agent's authenticated connection.
// It is safe for concurrent use, as the client is.
type ServerSource struct {
	addr    string
	client  droverv1connect.AgentServiceClient
	model   string
	version uint64
	// timeout bounds one GetChunk call for a chunk of the given size.
	timeout func(size int64) time.Duration
}

// A server killed or cut off while it answers sends nothing more, and the
// agent's QUIC connection notices only when its idle timeout (minutes)
// runs out; until then a call waits, and so does the chunk. So each call
// is bounded: serverChunkBase for the request, plus the chunk's bytes at
// serverChunkMinRate, slow enough for a congested edge link that shares
// its bandwidth among a pull's requests in flight. A call cut short is a
// failure of the source, and Pull asks another for the chunk.
const (
	serverChunkBase    = 30 * time.Second
	serverChunkMinRate = 64 << 10 // bytes per second
)

// serverChunkTimeout is how long a GetChunk call for size bytes may take.
func serverChunkTimeout(size int64) time.Duration {
	return serverChunkBase + time.Duration(max(size, 0))*time.Second/serverChunkMinRate
}

// callBound bounds a chunk call by a timer that cancels it, not by a
// context deadline: a deadline would travel to the server as the call's
// timeout and change how it serves the call, and the bound is the agent's
// own business.
type callBound struct {
	limit  time.Duration
	timer  *time.Timer
	cancel context.CancelFunc
}

// bindCall returns ctx under a bound of limit and the bound.
func bindCall(ctx context.Context, limit time.Duration) (context.Context, *callBound) {
	ctx, cancel := context.WithCancel(ctx)
	return ctx, &callBound{limit: limit, timer: time.AfterFunc(limit, cancel), cancel: cancel}
}

// stop ends the bound and the call's context; it reports whether the
// bound had run out first.
func (b *callBound) stop() (ranOut bool) {
	ranOut = !b.timer.Stop()
	b.cancel()
	return ranOut
}

// wrap adds to err, the call's failure, that the bound ran out if it did.
func (b *callBound) wrap(d artifact.Digest, addr string, err error) error {
	if b.stop() {
		return fmt.Errorf("get chunk %s from %s: no answer within %s: %w", d, addr, b.limit, err)
	}
	return fmt.Errorf("get chunk %s from %s: %w", d, addr, err)
}

var _ Source = (*ServerSource)(nil)

// NewServerSource returns a source for the chunks of version of model, served
// by the server at addr through client.
func NewServerSource(addr string, client droverv1connect.AgentServiceClient, model string, version uint64) *ServerSource {
	return &ServerSource{addr: addr, client: client, model: model, version: version, timeout: serverChunkTimeout}
}

// Name is the server's address.
func (s *ServerSource) Name() string { return s.addr }

// Chunk fetches the chunk whole, within a time that grows with size
// (callBound); Pull checks its size and digest.
func (s *ServerSource) Chunk(ctx context.Context, d artifact.Digest, size int64) (io.ReadCloser, error) {
	ctx, bound := bindCall(ctx, s.timeout(size))
	resp, err := s.client.GetChunk(ctx, connect.NewRequest(&droverv1.AgentGetChunkRequest{
		Model: s.model, Version: s.version, Digest: d[:],
	}))
	if err != nil {
		return nil, bound.wrap(d, s.addr, err)
	}
	bound.stop()
	return io.NopCloser(bytes.NewReader(resp.Msg.GetData())), nil
}

// chunkStreamPath is where a server streams a chunk's raw bytes to an
// agent; the server names it ChunkStreamPath (controlplane/server), whose
// tests pull through StreamSource, so the two cannot drift apart.
const chunkStreamPath = "/v1/agent/chunks/"

// maxErrorBody bounds what is read of a refusal's body for its message.
const maxErrorBody = 1 << 10

// StreamSource reads one version's chunks from a control-plane server as
// plain streamed bodies (GET chunkStreamPath…), over the agent's
// authenticated HTTP/3 connection: Pull writes each into the cache as it
// arrives instead of after the whole chunk is in memory, which is what
// ServerSource's unary call needs. It is safe for concurrent use, as the
// client is.
type StreamSource struct {
	addr    string
	client  *http.Client
	model   string
	version uint64
	// timeout bounds one chunk's request and body, by its size.
	timeout func(size int64) time.Duration
}

var _ Source = (*StreamSource)(nil)

// NewStreamSource returns a source for the chunks of version of model,
// streamed by the server at addr (HOST:PORT) through client, whose
// transport presents the node's certificate.
func NewStreamSource(addr string, client *http.Client, model string, version uint64) *StreamSource {
	return &StreamSource{addr: addr, client: client, model: model, version: version, timeout: serverChunkTimeout}
}

// Name is the server's address.
func (s *StreamSource) Name() string { return s.addr }

// Chunk starts the chunk's body; Pull checks its size and digest as it
// reads. The request and the whole body are bounded as ServerSource's call
// is (callBound): a server that dies mid-body would otherwise hold the
// read until the connection's idle timeout.
func (s *StreamSource) Chunk(ctx context.Context, d artifact.Digest, size int64) (io.ReadCloser, error) {
	ctx, bound := bindCall(ctx, s.timeout(size))
	u := "https://" + s.addr + chunkStreamPath + url.PathEscape(s.model) + "/" + strconv.FormatUint(s.version, 10) + "/" + hex.EncodeToString(d[:])
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, bound.wrap(d, s.addr, err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, bound.wrap(d, s.addr, err)
	}
	switch {
	case resp.StatusCode != http.StatusOK:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
	case resp.ContentLength >= 0 && resp.ContentLength != size:
		err = fmt.Errorf("%d bytes offered, the manifest says %d: %w", resp.ContentLength, size, artifact.ErrChunkCorrupt)
	default:
		return &boundedBody{ReadCloser: resp.Body, bound: bound}, nil
	}
	resp.Body.Close()
	return nil, bound.wrap(d, s.addr, err)
}

// boundedBody is a chunk's body whose time bound ends when it is closed.
type boundedBody struct {
	io.ReadCloser
	bound *callBound
}

func (b *boundedBody) Close() error {
	err := b.ReadCloser.Close()
	b.bound.stop()
	return err
}
