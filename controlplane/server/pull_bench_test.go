package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/internal/linkemu"
	"github.com/droverhq/drover/internal/pki"
	"github.com/droverhq/drover/internal/quicflow"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

var (
	pullMiB      = flag.Int("pull.mib", 0, "BenchmarkPull: the version's size in MiB (0: 256, or 32 with -short)")
	pullLinkMbit = flag.Int64("pull.mbit", 500, "BenchmarkPull link/...: the emulated link's cap in Mbit/s")
	pullInFlight = flag.Int("pull.inflight", 0, "BenchmarkPull: fetch.Options.InFlight (0: its default)")
	pullLinkRTT  = flag.Duration("pull.rtt", 100*time.Millisecond, "BenchmarkPull link/...: the emulated link's round trip")
)

// BenchmarkPull measures an agent's pull of a pushed version from a real
// single-server cluster over HTTP/3 with the agent's certificate: fetch,
// check, cache and assemble (fetch.Pull with a ServerSource). In the same
// run, the same number of bytes moved by bare quic-go (one stream, no
// RPC, no disk) and by HTTPS over TCP (net/http, TLS 1.3), both in memory
// on loopback, and by GetChunk alone (rpc: the pull's calls with the
// bytes dropped, no cache, no disk). It reports each path's MB/s and the
// process's CPU seconds (user and system, both ends in this process) per
// GiB, and the pull's ratios to bare QUIC.
//
// link pulls the same version, and moves the bare QUIC and rpc bytes,
// through internal/linkemu with a -pull.rtt round trip, a -pull.mbit cap
// on the way to the agent and a queue of one bandwidth-delay product, and
// reports the share of the cap each reached; relay-unshaped is bare
// quic-go through the relay without shaping, the emulator's own ceiling.
//
//	go test -run=NONE -bench=Pull -benchtime=1x ./controlplane/server/
func BenchmarkPull(b *testing.B) {
	size := *pullMiB << 20
	if size == 0 {
		size = 256 << 20
		if testing.Short() {
			size = 32 << 20
		}
	}
	env := newPullEnv(b, size)
	b.Run("loopback", func(b *testing.B) {
		for b.Loop() {
			q := measure(b, size, func() { quicStream(b, env, size, env.rawAddr) })
			h := measure(b, size, func() { httpsTCP(b, size) })
			r := measure(b, size, func() { env.getChunks(b, env.addr) })
			p := measure(b, size, func() { env.pull(b, env.addr, false) })
			sp := measure(b, size, func() { env.pull(b, env.addr, true) })
			b.ReportMetric(sp.mbps, "stream-pull-MB/s")
			b.ReportMetric(sp.cpuPerGiB, "stream-pull-cpu-s/GiB")
			b.ReportMetric(sp.mbps/q.mbps, "stream-pull/quic-speed")
			b.ReportMetric(sp.cpuPerGiB/q.cpuPerGiB, "stream-pull/quic-cpu")
			b.ReportMetric(r.mbps, "rpc-MB/s")
			b.ReportMetric(r.cpuPerGiB, "rpc-cpu-s/GiB")
			b.ReportMetric(q.mbps, "quic-MB/s")
			b.ReportMetric(h.mbps, "tcp-MB/s")
			b.ReportMetric(p.mbps, "pull-MB/s")
			b.ReportMetric(q.cpuPerGiB, "quic-cpu-s/GiB")
			b.ReportMetric(h.cpuPerGiB, "tcp-cpu-s/GiB")
			b.ReportMetric(p.cpuPerGiB, "pull-cpu-s/GiB")
			b.ReportMetric(p.mbps/q.mbps, "pull/quic-speed")
			b.ReportMetric(p.cpuPerGiB/q.cpuPerGiB, "pull/quic-cpu")
		}
	})
	capBytes := *pullLinkMbit * 1_000_000 / 8
	oneWay := *pullLinkRTT / 2
	bdp := int(float64(capBytes) * pullLinkRTT.Seconds())
	down := linkemu.Shape{Delay: oneWay, Rate: capBytes, QueueBytes: bdp}
	up := linkemu.Shape{Delay: oneWay}
	b.Run("relay-unshaped", func(b *testing.B) {
		for b.Loop() {
			r := env.relay(b, linkemu.Shape{}, linkemu.Shape{})
			q := measure(b, size, func() { quicStream(b, env, size, r.raw) })
			b.ReportMetric(q.mbps, "quic-MB/s")
			b.ReportMetric(q.mbps*1e6/float64(capBytes), "cap-share")
		}
	})
	b.Run("link", func(b *testing.B) {
		for b.Loop() {
			r := env.relay(b, up, down)
			q := measure(b, size, func() { quicStream(b, env, size, r.raw) })
			r = env.relay(b, up, down)
			rpc := measure(b, size, func() { env.getChunks(b, r.server) })
			r = env.relay(b, up, down)
			p := measure(b, size, func() { env.pull(b, r.server, false) })
			r = env.relay(b, up, down)
			sp := measure(b, size, func() { env.pull(b, r.server, true) })
			b.ReportMetric(sp.mbps*1e6/float64(capBytes), "stream-pull-cap-share")
			b.ReportMetric(rpc.mbps*1e6/float64(capBytes), "rpc-cap-share")
			b.ReportMetric(q.mbps, "quic-MB/s")
			b.ReportMetric(p.mbps, "pull-MB/s")
			b.ReportMetric(q.mbps*1e6/float64(capBytes), "quic-cap-share")
			b.ReportMetric(p.mbps*1e6/float64(capBytes), "pull-cap-share")
		}
	})
}

// pullEnv is a cluster holding one pushed version, an enrolled agent's
// certificate, and the bare QUIC server the baseline reads from.
type pullEnv struct {
	addr    string // the server's API address
	pool    *x509.CertPool
	cert    tls.Certificate
	m       *droverv1.Manifest
	version uint64
	rawAddr string // the bare quic-go server
	rawConf *tls.Config
}

// route is where a transfer connects: the cluster's server and the bare
// QUIC server, directly or each through a relay of its own.
type route struct{ server, raw string }

func newPullEnv(b *testing.B, size int) *pullEnv {
	c := cluster.Make(b, 1, cluster.Options{})
	node := c.Nodes()[0]
	ctx := testCtx(b, 10*time.Minute)
	mustCreateModel(b, c.Client(node, false), "bench")

	// Random bytes, as model weights are to a compressor.
	root := b.TempDir()
	data := make([]byte, size)
	rng := mrand.NewChaCha8([32]byte{1})
	_, _ = rng.Read(data)
	if err := os.WriteFile(filepath.Join(root, "model.safetensors"), data, 0o644); err != nil {
		b.Fatal(err)
	}
	m, refs, err := artifact.BuildManifest(ctx, root, artifact.BuildOptions{})
	if err != nil {
		b.Fatal(err)
	}
	mb, err := artifact.MarshalManifest(m)
	if err != nil {
		b.Fatal(err)
	}
	tr := &modelTree{root: root, signed: &droverv1.SignedManifest{Manifest: mb}, refs: make(map[artifact.Digest]artifact.ChunkRef)}
	for _, r := range refs {
		if _, ok := tr.refs[r.Digest]; !ok {
			tr.refs[r.Digest] = r
			tr.keys = append(tr.keys, r.Digest)
		}
	}
	_, fin := push(ctx, b, artifactClient(b, c, node), tr, "bench")

	tokens, _ := operator(b, c, node)
	tok, _ := createToken(b, tokens, &droverv1.CreateTokenRequest{})
	a := newFakeAgent(b, c.CA.Pool())
	a.mustEnrollRegister(b, node.APIAddr(), tok, "bench-agent")

	env := &pullEnv{addr: node.APIAddr(), pool: c.CA.Pool(), cert: a.cert, m: m, version: fin.GetVersion().GetVersion()}
	env.startRawServer(b, size)
	return env
}

// startRawServer runs a bare quic-go server that sends size bytes on each
// stream a client opens, with the product's windows.
func (e *pullEnv) startRawServer(b *testing.B, size int) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, NextProtos: []string{"bench"},
	}, quicflow.Apply(&quic.Config{}))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	b.Cleanup(func() { cancel(); _ = ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			go func() {
				s, err := conn.AcceptStream(ctx)
				if err != nil {
					return
				}
				buf := make([]byte, 1<<20)
				_, _ = rand.Read(buf)
				for sent := 0; sent < size; sent += len(buf) {
					if _, err := s.Write(buf); err != nil {
						return
					}
				}
				_ = s.Close()
			}()
		}
	}()
	e.rawAddr = ln.Addr().String()
	e.rawConf = &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"bench"}}
}

// relay starts a relay to the cluster's server and one to the bare QUIC
// server, both shaped alike and stopped with the benchmark.
func (e *pullEnv) relay(b *testing.B, up, down linkemu.Shape) route {
	r, err := linkemu.New(e.addr, up, down, 1)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = r.Close() })
	raw, err := linkemu.New(e.rawAddr, up, down, 1)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = raw.Close() })
	return route{server: r.Addr(), raw: raw.Addr()}
}

// getChunks calls GetChunk for every chunk of the version through addr,
// as many at a time as a pull, and drops the bytes: the RPC path of a
// pull without its cache and disk.
func (e *pullEnv) getChunks(b *testing.B, addr string) {
	b.Helper()
	client, closeClient := e.client(addr)
	defer closeClient()
	ctx := testCtx(b, 5*time.Minute)
	workers := fetch.DefaultInFlight
	if *pullInFlight > 0 {
		workers = *pullInFlight
	}
	jobs := make(chan []byte)
	errs := make(chan error, workers)
	for range workers {
		go func() {
			var err error
			for d := range jobs {
				if err != nil {
					continue
				}
				_, err = client.GetChunk(ctx, connect.NewRequest(&droverv1.AgentGetChunkRequest{Model: "bench", Version: e.version, Digest: d}))
			}
			errs <- err
		}()
	}
	for _, f := range e.m.GetFiles() {
		for _, c := range f.GetChunks() {
			jobs <- c.GetDigest()
		}
	}
	close(jobs)
	for range workers {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
}

// client returns an AgentService client for addr over HTTP/3 with the
// agent's certificate and the product's QUIC windows, and its closer.
func (e *pullEnv) client(addr string) (droverv1connect.AgentServiceClient, func()) {
	hc, closeClient := e.httpClient()
	return droverv1connect.NewAgentServiceClient(hc, "https://"+addr, connect.WithReadMaxBytes(32<<20)), closeClient
}

// httpClient returns an HTTP/3 client with the agent's certificate and the
// product's QUIC windows, and its closer.
func (e *pullEnv) httpClient() (*http.Client, func()) {
	cert := e.cert
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: e.pool, MinVersion: tls.VersionTLS13, ServerName: pki.PeerServerName,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }},
		QUICConfig: quicflow.Apply(&quic.Config{MaxIdleTimeout: time.Minute}),
	}
	return &http.Client{Transport: tr}, func() { _ = tr.Close() }
}

// pull fetches the whole version through addr into a new cache and
// directory, as an agent does, and checks the size assembled: with
// GetChunk calls, or streamed, as the agent does (ChunkStreamPath).
func (e *pullEnv) pull(b *testing.B, addr string, streamed bool) {
	b.Helper()
	client, closeClient := e.client(addr)
	defer closeClient()
	hc, closeHTTP := e.httpClient()
	defer closeHTTP()
	cache, err := fetch.OpenCache(b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	dst := filepath.Join(b.TempDir(), "bench")
	var src fetch.Source = fetch.NewServerSource(addr, client, "bench", e.version)
	if streamed {
		src = fetch.NewStreamSource(addr, hc, "bench", e.version)
	}
	ctx := testCtx(b, 5*time.Minute)
	start := time.Now()
	var fetched time.Duration
	progress := func(done, total int64) {
		if done == total {
			fetched = time.Since(start)
		}
	}
	st, err := fetch.Pull(ctx, e.m, dst, []fetch.Source{src}, fetch.Options{Cache: cache, InFlight: *pullInFlight, Progress: progress})
	b.Logf("fetched into the cache in %v, assembled in %v", fetched, time.Since(start)-fetched)
	if err != nil {
		b.Fatal(err)
	}
	if st.BytesFetched != int64(e.m.GetTotalSize()) {
		b.Fatalf("pulled %d bytes, want %d", st.BytesFetched, e.m.GetTotalSize())
	}
}

// quicStream reads size bytes from the bare QUIC server at addr.
func quicStream(b *testing.B, e *pullEnv, size int, addr string) {
	b.Helper()
	ctx := testCtx(b, 5*time.Minute)
	conn, err := quic.DialAddr(ctx, addr, e.rawConf, quicflow.Apply(&quic.Config{}))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Write([]byte("go")); err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, s)
	if err != nil || n != int64(size) {
		b.Fatalf("bare quic read %d of %d bytes: %v", n, size, err)
	}
}

// httpsTCP reads size bytes from an HTTPS server over TCP (TLS 1.3,
// HTTP/1.1) on loopback.
func httpsTCP(b *testing.B, size int) {
	b.Helper()
	buf := make([]byte, 1<<20)
	_, _ = rand.Read(buf)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		for sent := 0; sent < size; sent += len(buf) {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != int64(size) {
		b.Fatalf("https read %d of %d bytes: %v", n, size, err)
	}
}

// measured is one transfer's throughput and CPU cost.
type measured struct {
	mbps      float64 // MB/s
	cpuPerGiB float64 // CPU seconds of this process per GiB moved
}

// measure runs f, which moves size bytes, and reports its wall time and
// the CPU time (user and system) the whole process spent meanwhile.
func measure(b *testing.B, size int, f func()) measured {
	b.Helper()
	cpu0 := processCPU(b)
	start := time.Now()
	f()
	wall := time.Since(start)
	cpu := processCPU(b) - cpu0
	gib := float64(size) / (1 << 30)
	return measured{mbps: float64(size) / wall.Seconds() / 1e6, cpuPerGiB: cpu.Seconds() / gib}
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(fmt.Errorf("getrusage: %w", err))
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
