package fetch

import (
	"context"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"path"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/artifact"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// chunkServer answers GetChunk from a store, or, when silent, never: like
// a server killed while it answers, whose connection stays open on the
// agent's side.
type chunkServer struct {
	droverv1connect.UnimplementedAgentServiceHandler
	store  store
	silent bool
}

func (s *chunkServer) GetChunk(ctx context.Context, req *connect.Request[droverv1.AgentGetChunkRequest]) (*connect.Response[droverv1.AgentGetChunkResponse], error) {
	if s.silent {
		<-ctx.Done()
		return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
	}
	d, err := artifact.DigestFromBytes(req.Msg.GetDigest())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	b, ok := s.store[d]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, nil)
	}
	return connect.NewResponse(&droverv1.AgentGetChunkResponse{Data: b}), nil
}

func startChunkServer(t *testing.T, s *chunkServer) droverv1connect.AgentServiceClient {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(droverv1connect.NewAgentServiceHandler(s))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return droverv1connect.NewAgentServiceClient(srv.Client(), srv.URL)
}

// TestPullMovesOnFromSilentServer has one of two servers never answer
// GetChunk: each call to it ends at its time bound, and the pull gets
// every chunk from the other server instead of waiting on the silent one
// for as long as the connection stays open.
func TestPullMovesOnFromSilentServer(t *testing.T) {
	s := store{}
	files := sampleFiles(2)
	m := buildVersion(t, s, files)
	silent := NewServerSource("silent", startChunkServer(t, &chunkServer{store: s, silent: true}), "m", 1)
	good := NewServerSource("good", startChunkServer(t, &chunkServer{store: s}), "m", 1)
	// Only the silent server's calls are cut short this soon: a loaded
	// machine may take longer than that to answer from the good one.
	const bound = 200 * time.Millisecond
	silent.timeout = func(int64) time.Duration { return bound }
	if got := serverChunkTimeout(1 << 20); got < serverChunkBase || got > 2*time.Minute {
		t.Errorf("a 1 MiB chunk may take %s from a server; want between %s and 2m", got, serverChunkBase)
	}

	dst := filepath.Join(t.TempDir(), "v1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	st, err := Pull(ctx, m, dst, []Source{silent, good}, Options{Cache: openCache(t, t.TempDir(), 0)})
	if err != nil {
		t.Fatalf("pull with one silent server: %v", err)
	}
	took := time.Since(start)
	checkTree(t, dst, files)
	if st.BytesBySource["good"] != st.BytesFetched || st.BytesBySource["silent"] != 0 {
		t.Errorf("bytes by source %v; want all %d from good", st.BytesBySource, st.BytesFetched)
	}
	// The silent server is dropped after a few calls cut short, each
	// bounded; the pull must not wait on it beyond that.
	if limit := 10 * bound * sourceFailLimit; took > limit {
		t.Errorf("pull took %s with one silent server, more than %s", took, limit)
	}
	t.Logf("pulled %d chunks in %s; stats %+v", st.ChunksFetched, took, st)
}

// TestStreamMovesOnFromServerDeadMidBody has one of two servers stream half
// of every chunk and then fall silent, as a server killed mid-answer does:
// each body ends at its time bound, and the pull gets every chunk from the
// other server.
func TestStreamMovesOnFromServerDeadMidBody(t *testing.T) {
	s := store{}
	files := sampleFiles(2)
	m := buildVersion(t, s, files)
	serve := func(half bool) (*http.Client, string) {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var d artifact.Digest
			if _, err := hex.Decode(d[:], []byte(path.Base(r.URL.Path))); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			b, ok := s[d]
			if !ok {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			if !half {
				_, _ = w.Write(b)
				return
			}
			_, _ = w.Write(b[:len(b)/2])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}))
		srv.EnableHTTP2 = true
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv.Client(), srv.Listener.Addr().String()
	}
	hc, addr := serve(true)
	dead := NewStreamSource(addr, hc, "m", 1)
	hc, addr = serve(false)
	good := NewStreamSource(addr, hc, "m", 1)
	// Only the dead server's bodies are cut short this soon, as above.
	dead.timeout = func(int64) time.Duration { return 200 * time.Millisecond }

	dst := filepath.Join(t.TempDir(), "v1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := Pull(ctx, m, dst, []Source{dead, good}, Options{Cache: openCache(t, t.TempDir(), 0)})
	if err != nil {
		t.Fatalf("pull with a server dead mid-body: %v", err)
	}
	checkTree(t, dst, files)
	if st.BytesBySource[good.Name()] != st.BytesFetched {
		t.Errorf("bytes by source %v; want all %d from %s", st.BytesBySource, st.BytesFetched, good.Name())
	}
}
