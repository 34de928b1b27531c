package server

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"connectrpc.com/connect"
)

// ChunkStreamPath is where an agent reads a chunk's bytes as they are,
// streamed: GET ChunkStreamPath + MODEL/VERSION/HEX-DIGEST, over its
// HTTP/3 connection with its node certificate. It serves what
// AgentService.GetChunk serves, under the same rules (an enrolled node,
// only chunks the version's manifest lists), but as a plain body: a
// unary answer holds the whole chunk in one message on both ends and
// copies it several times, while this is copied from the store's file to
// the connection and from the connection into the agent's cache as it
// arrives, so an agent can keep more chunks in flight for the same
// memory. It is not a Connect procedure, so it is not in the capability
// table; docs/access.md lists it beside /metrics.
const ChunkStreamPath = "/v1/agent/chunks/"

// serveChunkStream answers GET ChunkStreamPath requests.
func (h *artifactHandler) serveChunkStream(w http.ResponseWriter, r *http.Request) {
	// Refusals are written as any API error is (Connect's error writer:
	// the HTTP status its code maps to, and the message).
	refuse := func(err error) { _ = h.s.forwarder.errWriter.Write(w, r, err) }
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		refuse(connect.NewError(connect.CodeUnimplemented, errors.New("chunks are read with GET")))
		return
	}
	ctx, err := h.s.authenticateAgent(r.Context())
	if err != nil {
		refuse(err)
		return
	}
	model, version, digest, err := parseChunkPath(strings.TrimPrefix(r.URL.Path, ChunkStreamPath))
	if err != nil {
		refuse(connect.NewError(connect.CodeInvalidArgument, err))
		return
	}
	rc, size, err := h.openChunk(ctx, model, version, digest)
	if err != nil {
		refuse(err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	n, err := io.Copy(w, rc)
	h.s.metrics.servedToAgents.Add(float64(n))
	if err != nil {
		// The status is sent; the agent sees a short body and checks
		// the chunk's digest anyway.
		h.s.logger.Debug("chunk stream cut short", "model", model, "version", version, "sent", n, "size", size, "err", err)
	}
}

// parseChunkPath splits MODEL/VERSION/HEX-DIGEST.
func parseChunkPath(p string) (model string, version uint64, digest []byte, err error) {
	parts := strings.Split(p, "/")
	if len(parts) != 3 || parts[0] == "" {
		return "", 0, nil, fmt.Errorf("want %sMODEL/VERSION/HEX-DIGEST, got %q", ChunkStreamPath, p)
	}
	if version, err = strconv.ParseUint(parts[1], 10, 64); err != nil || version == 0 {
		return "", 0, nil, fmt.Errorf("version %q is not a version number", parts[1])
	}
	if digest, err = hex.DecodeString(parts[2]); err != nil || len(digest) != 32 {
		return "", 0, nil, fmt.Errorf("digest %q is not 64 hex digits of SHA-256", parts[2])
	}
	return parts[0], version, digest, nil
}
