package server

import (
	"context"
	"crypto/x509"
	"net/http"

	"github.com/droverhq/drover/controlplane/blobstore"
	"github.com/droverhq/drover/controlplane/telemetry"
)

// AuthorizeForBenchmark runs the authorization of one call as the API's
// interceptor does, for benchmarks that compare it with the whole call.
func (s *Server) AuthorizeForBenchmark(ctx context.Context, procedure string, h http.Header, req any) error {
	_, err := s.authorize(ctx, procedure, h, req)
	return err
}

// WithAgentCert returns ctx as identify leaves it for a call made with an
// agent's verified client certificate.
func WithAgentCert(ctx context.Context, cert *x509.Certificate) context.Context {
	return context.WithValue(ctx, agentCertKey{}, cert)
}

// ChunkStore exposes the server's chunk store, so tests can see which
// server holds which chunk.
func (s *Server) ChunkStore() *blobstore.Store { return s.chunks }

// CollectChunks runs one garbage collection of the server's chunk store.
func (s *Server) CollectChunks(ctx context.Context) (removed int, freed int64, err error) {
	return s.collectChunks(ctx)
}

// TelemetryStats says what the server's telemetry store holds.
func (s *Server) TelemetryStats() (telemetry.Stats, error) { return s.telemetry.Stats() }
