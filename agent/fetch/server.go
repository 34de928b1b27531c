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
}

var _ Source = (*ServerSource)(nil)

// NewServerSource returns a source for the chunks of version of model, served
// by the server at addr through client.
func NewServerSource(addr string, client droverv1connect.AgentServiceClient, model string, version uint64) *ServerSource {
	return &ServerSource{addr: addr, client: client, model: model, version: version}
}

// Name is the server's address.
func (s *ServerSource) Name() string { return s.addr }

// Chunk fetches the chunk whole; Pull checks its size and digest.
func (s *ServerSource) Chunk(ctx context.Context, d artifact.Digest, _ int64) (io.ReadCloser, error) {
	resp, err := s.client.GetChunk(ctx, connect.NewRequest(&droverv1.AgentGetChunkRequest{
		Model: s.model, Version: s.version, Digest: d[:],
	}))
	if err != nil {
		return nil, fmt.Errorf("get chunk %s from %s: %w", d, s.addr, err)
	}
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
}

var _ Source = (*StreamSource)(nil)

// NewStreamSource returns a source for the chunks of version of model,
// streamed by the server at addr (HOST:PORT) through client, whose
// transport presents the node's certificate.
func NewStreamSource(addr string, client *http.Client, model string, version uint64) *StreamSource {
	return &StreamSource{addr: addr, client: client, model: model, version: version}
}

// Name is the server's address.
func (s *StreamSource) Name() string { return s.addr }

// Chunk starts the chunk's body; Pull checks its size and digest as it
// reads.
func (s *StreamSource) Chunk(ctx context.Context, d artifact.Digest, size int64) (io.ReadCloser, error) {
	u := "https://" + s.addr + chunkStreamPath + url.PathEscape(s.model) + "/" + strconv.FormatUint(s.version, 10) + "/" + hex.EncodeToString(d[:])
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("get chunk %s from %s: %w", d, s.addr, err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get chunk %s from %s: %w", d, s.addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		return nil, fmt.Errorf("get chunk %s from %s: %s: %s", d, s.addr, resp.Status, strings.TrimSpace(string(msg)))
	}
	if resp.ContentLength >= 0 && resp.ContentLength != size {
		resp.Body.Close()
		return nil, fmt.Errorf("get chunk %s from %s: %d bytes offered, the manifest says %d: %w", d, s.addr, resp.ContentLength, size, artifact.ErrChunkCorrupt)
	}
	return resp.Body, nil
}
