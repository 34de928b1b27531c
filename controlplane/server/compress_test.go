package server

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// Chunk answers reach the handler with no compression accepted, so
// weights are never gzipped; every other call keeps what its client
// asked for.
func TestChunkAnswersAreNotCompressed(t *testing.T) {
	var seen http.Header
	h := uncompressedChunks(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { seen = r.Header.Clone() }))
	for path, want := range map[string]string{
		droverv1connect.AgentServiceGetChunkProcedure:    "",
		droverv1connect.ArtifactServiceGetChunkProcedure: "",
		droverv1connect.ChunkServiceGetChunksProcedure:   "",
		droverv1connect.AgentServiceGetManifestProcedure: "gzip",
	} {
		r := httptest.NewRequest(http.MethodPost, path, nil)
		for _, k := range []string{"Accept-Encoding", "Connect-Accept-Encoding", "Grpc-Accept-Encoding"} {
			r.Header.Set(k, "gzip")
		}
		h.ServeHTTP(httptest.NewRecorder(), r)
		for _, k := range []string{"Accept-Encoding", "Connect-Accept-Encoding", "Grpc-Accept-Encoding"} {
			if got := seen.Get(k); got != want {
				t.Errorf("%s: the handler saw %s %q, want %q", path, k, got, want)
			}
		}
	}
}
