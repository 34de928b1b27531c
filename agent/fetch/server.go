package fetch

import (
	"bytes"
	"context"
	"fmt"
	"io"

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
