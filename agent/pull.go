package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/agent/peer"
	"github.com/droverhq/drover/artifact"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

const (
	// artifactCallTimeout bounds one GetManifest or GetClusterInfo call
	// of a pull; chunk reads are bounded by fetch's sources.
	artifactCallTimeout = 30 * time.Second
	// pullRetryMin and pullRetryMax bound the wait before a pull that
	// failed for a reason that may pass (no server answered, a chunk no
	// source could serve) is tried again.
	pullRetryMin = time.Second
	pullRetryMax = time.Minute
)

// PullReport is what the agent last did about the version it was asked to
// pull, as Status shows it.
type PullReport struct {
	Model   string
	Version uint64
	// RequestIndex is the Raft index of the request this is about.
	RequestIndex uint64
	Phase        fetch.Phase
	BytesDone    int64
	BytesTotal   int64
	// BytesFromServers and BytesFromPeers are what the current (or last)
	// attempt fetched.
	BytesFromServers, BytesFromPeers int64
	// ChunksFetched and ChunksFromCache count the last finished
	// attempt's chunks: fetched from a source, and found in the cache.
	ChunksFetched, ChunksFromCache int
	// Err is why the pull failed; nil unless Phase is fetch.PhaseFailed.
	Err error
}

// openStore opens the chunk cache and the version store under the data
// directory (the cache where --cache-dir says).
func (a *Agent) openStore() (*fetch.Store, error) {
	dir := a.cfg.CacheDir
	if dir == "" {
		dir = filepath.Join(a.cfg.DataDir, "cache")
	}
	cache, err := fetch.OpenCache(dir, a.cfg.CacheBudget)
	if err != nil {
		return nil, withHint(err, "make %s writable for the agent's user, or choose another directory with --cache-dir", dir)
	}
	store, err := fetch.OpenStore(a.cfg.DataDir, cache, fetch.StoreOptions{
		MaxManifestBytes: a.cfg.MaxManifestBytes,
		BytesPerSecond:   a.cfg.PullBandwidth,
	})
	if err != nil {
		return nil, withHint(err, "the records of pulled versions under %s are damaged: remove %s to start over (versions are pulled again)",
			a.cfg.DataDir, filepath.Join(a.cfg.DataDir, "models"))
	}
	return store, nil
}

// puller carries out the control plane's request that the node pull a
// version: one goroutine at a time runs the pull, and a new request
// cancels the one before. The session tells it the request and the
// servers in each heartbeat answer, and sends its status in the next
// heartbeat. It lives as long as the session, whose transport it uses;
// close stops it.
type puller struct {
	a     *Agent
	log   *slog.Logger
	store *fetch.Store
	tr    *http3.Transport

	mu      sync.Mutex // guards the fields below
	site    *peer.Node // serves and fetches chunks within the site; nil for none
	servers []string
	clients map[string]droverv1connect.AgentServiceClient
	keys    map[artifact.KeyID]ed25519.PublicKey // nil until asked for
	req     *droverv1.NodePull                   // the request being carried out, or the last one
	report  PullReport
	cancel  context.CancelFunc // stops the running pull; nil when none runs
	done    chan struct{}      // closed when the running pull's goroutine returns
}

func newPuller(a *Agent, log *slog.Logger, store *fetch.Store, tr *http3.Transport) *puller {
	return &puller{a: a, log: log, store: store, tr: tr, clients: make(map[string]droverv1connect.AgentServiceClient)}
}

// setSite has pulls ask the site's peers through n before the servers.
func (p *puller) setSite(n *peer.Node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.site = n
}

// setServers sets the servers pulls ask, in the order to ask them.
func (p *puller) setServers(servers []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.servers = slices.Clone(servers)
}

// handle takes the request a heartbeat answer carried. A request already
// being carried out (the same request index) changes nothing; a new one
// stops the running pull, if any, and starts its own. It returns once the
// old pull has stopped.
func (p *puller) handle(req *droverv1.NodePull) {
	if req == nil || req.GetModel() == "" || req.GetVersion() == 0 {
		return
	}
	p.mu.Lock()
	if p.req != nil && p.req.GetRequestIndex() == req.GetRequestIndex() {
		p.mu.Unlock()
		return
	}
	cancel, done := p.cancel, p.done
	p.mu.Unlock()
	if cancel != nil {
		select {
		case <-done:
		default:
			p.log.Info("a new pull request supersedes the running pull", "model", req.GetModel(), "version", req.GetVersion())
		}
		cancel()
		<-done
	}
	ctx, cancel := context.WithCancel(context.Background())
	done = make(chan struct{})
	p.mu.Lock()
	p.req, p.cancel, p.done = req, cancel, done
	p.report = PullReport{Model: req.GetModel(), Version: req.GetVersion(), RequestIndex: req.GetRequestIndex(), Phase: fetch.PhaseVerifying}
	p.mu.Unlock()
	p.publish()
	go func() {
		defer close(done)
		p.run(ctx, req)
	}()
}

// close stops the running pull, if any, and waits for it. Chunks fetched
// so far stay in the cache, so the next run fetches only the rest.
func (p *puller) close() {
	p.mu.Lock()
	cancel, done := p.cancel, p.done
	p.cancel = nil
	p.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// status is the pull status the next heartbeat reports, nil when there
// has been no request since the agent started.
func (p *puller) status() *droverv1.NodePullStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.req == nil {
		return nil
	}
	r := p.report
	st := &droverv1.NodePullStatus{
		Model:            r.Model,
		Version:          r.Version,
		Phase:            pullPhaseProto(r.Phase),
		BytesDone:        uint64(max(r.BytesDone, 0)),
		BytesTotal:       uint64(max(r.BytesTotal, 0)),
		BytesFromServers: uint64(r.BytesFromServers),
		BytesFromPeers:   uint64(r.BytesFromPeers),
		RequestIndex:     r.RequestIndex,
	}
	if r.Err != nil {
		st.Error = r.Err.Error()
	}
	return st
}

func pullPhaseProto(ph fetch.Phase) droverv1.PullPhase {
	switch ph {
	case fetch.PhaseVerifying:
		return droverv1.PullPhase_PULL_PHASE_VERIFYING
	case fetch.PhaseFetching:
		return droverv1.PullPhase_PULL_PHASE_FETCHING
	case fetch.PhaseAssembling:
		return droverv1.PullPhase_PULL_PHASE_ASSEMBLING
	case fetch.PhaseDone:
		return droverv1.PullPhase_PULL_PHASE_DONE
	case fetch.PhaseFailed:
		return droverv1.PullPhase_PULL_PHASE_FAILED
	}
	return droverv1.PullPhase_PULL_PHASE_UNSPECIFIED
}

// publish copies the report into the agent's Status.
func (p *puller) publish() {
	p.mu.Lock()
	r := p.report
	p.mu.Unlock()
	p.a.update(func(st *Status) { st.Pull = r })
}

// setReport changes the report of request req, unless another request
// took its place.
func (p *puller) setReport(req *droverv1.NodePull, f func(*PullReport)) {
	p.mu.Lock()
	if p.req != req {
		p.mu.Unlock()
		return
	}
	f(&p.report)
	p.mu.Unlock()
	p.publish()
}

// run carries out req until it is done, fails for good, or ctx ends. A
// failure that may pass is tried again after a growing wait; the status
// shows it as failed meanwhile.
func (p *puller) run(ctx context.Context, req *droverv1.NodePull) {
	log := p.log.With("model", req.GetModel(), "version", req.GetVersion())
	wait := pullRetryMin
	for {
		start := time.Now()
		pr := p.request(req.GetModel(), req.GetVersion())
		pr.ArtifactDigest = req.GetArtifactDigest()
		pr.Progress = func(pr fetch.Progress) {
			p.setReport(req, func(r *PullReport) {
				r.Phase, r.BytesDone, r.BytesTotal = pr.Phase, pr.BytesDone, pr.BytesTotal
				r.BytesFromServers, r.BytesFromPeers = pr.BytesFromServers, pr.BytesFromPeers
				r.Err = nil
			})
		}
		res, err := p.store.Pull(ctx, pr)
		p.setReport(req, func(r *PullReport) {
			r.ChunksFetched, r.ChunksFromCache = res.Stats.ChunksFetched, res.Stats.ChunksFromCache
			if err != nil && ctx.Err() == nil {
				r.Phase, r.Err = fetch.PhaseFailed, err
			}
		})
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			if res.AlreadyCurrent {
				log.Debug("the requested version is current already")
			} else {
				log.Info("pulled version", "dir", res.Dir, "digest", res.Installed.Digest,
					"chunks_fetched", res.Stats.ChunksFetched, "chunks_cached", res.Stats.ChunksFromCache,
					"bytes_fetched", res.Stats.BytesFetched, "took", time.Since(start).Round(time.Millisecond))
			}
			return
		case !retryable(err):
			log.Error("pull refused; it is not tried again until the version is asked for again", "err", err)
			return
		}
		log.Warn("pull failed; trying again", "err", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, pullRetryMax)
	}
}

// request is a pull of version of model through the servers this puller
// knows and the node's site.
func (p *puller) request(model string, version uint64) fetch.PullRequest {
	return fetch.PullRequest{
		Model:   model,
		Version: version,
		Manifest: func(ctx context.Context) (*droverv1.SignedManifest, error) {
			return p.manifest(ctx, model, version)
		},
		Keys:    p.manifestKeys,
		Sources: p.chunkSources(model, version),
	}
}

// pullForDeployment makes version of model current in the store for the
// reconciler and returns its directory. It tries once: the reconciler
// backs off between tries itself.
func (p *puller) pullForDeployment(ctx context.Context, model string, version uint64) (string, error) {
	res, err := p.store.Pull(ctx, p.request(model, version))
	if err != nil {
		return "", err
	}
	return res.Dir, nil
}

// retryable reports whether a failed pull may succeed if tried again as
// it is: not when the manifest was refused, which no retry changes, nor
// when the disk is full, nor when the control plane no longer has the
// version (its model was deleted).
func retryable(err error) bool {
	if connect.CodeOf(err) == connect.CodeNotFound {
		return false
	}
	for _, e := range []error{
		fetch.ErrManifestTooLarge, fetch.ErrManifestMismatch, fetch.ErrManifestConflict, fetch.ErrManifestReplay,
		artifact.ErrUnknownKey, artifact.ErrBadSignature, artifact.ErrUnsigned, artifact.ErrInvalidManifest,
		fetch.ErrNoSpace,
	} {
		if errors.Is(err, e) {
			return false
		}
	}
	return true
}

// chunkSources are the sources a pull of version of model fetches from,
// in order of preference: the site's peers, when this node shares chunks
// with them, then every server the agent knows, over its authenticated
// connection.
func (p *puller) chunkSources(model string, version uint64) []fetch.Source {
	p.mu.Lock()
	site := p.site
	p.mu.Unlock()
	servers := p.Sources(model, version)
	if src := p.a.siteSource(site, model, version); src != nil {
		return append([]fetch.Source{src}, servers...)
	}
	return servers
}

// Sources are the server sources for version of model (peer.Upstream):
// what a pull falls back to, and where this node fetches the chunks it
// owns for its site. They stream each chunk's bytes (fetch.StreamSource),
// so a chunk is written to the cache as it arrives.
func (p *puller) Sources(model string, version uint64) []fetch.Source {
	p.mu.Lock()
	defer p.mu.Unlock()
	hc := &http.Client{Transport: p.tr}
	out := make([]fetch.Source, 0, len(p.servers))
	for _, addr := range p.servers {
		out = append(out, fetch.NewStreamSource(addr, hc, model, version))
	}
	return out
}

// Manifest returns version of model's manifest, verified against the
// cluster's signing keys (peer.Manifests): a peer serves only chunks a
// manifest the cluster signed lists.
func (p *puller) Manifest(ctx context.Context, model string, version uint64) (*droverv1.Manifest, error) {
	signed, err := p.manifest(ctx, model, version)
	if err != nil {
		return nil, err
	}
	limits := artifact.Limits{MaxManifestBytes: p.a.cfg.MaxManifestBytes}
	keys, err := p.manifestKeys(ctx, false)
	if err != nil {
		return nil, err
	}
	m, _, err := artifact.Verify(signed, keys, limits)
	if errors.Is(err, artifact.ErrUnknownKey) {
		// Perhaps a key registered since the keys were read.
		if keys, err = p.manifestKeys(ctx, true); err != nil {
			return nil, err
		}
		m, _, err = artifact.Verify(signed, keys, limits)
	}
	return m, err
}

// clientLocked returns the client for the server at addr that pulls use
// for manifests and keys, with room for the largest manifest the agent
// accepts (chunks are streamed, not answers of this client).
func (p *puller) clientLocked(addr string) droverv1connect.AgentServiceClient {
	c, ok := p.clients[addr]
	if !ok {
		limit := max(p.a.cfg.MaxManifestBytes, fetch.DefaultMaxManifestBytes) + 1<<20
		c = droverv1connect.NewAgentServiceClient(&http.Client{Transport: p.tr}, "https://"+addr,
			connect.WithReadMaxBytes(limit))
		p.clients[addr] = c
	}
	return c
}

// each calls f with each server's client in turn until one succeeds, and
// returns the errors of all if none does.
func (p *puller) each(ctx context.Context, op string, f func(ctx context.Context, addr string, c droverv1connect.AgentServiceClient) error) error {
	p.mu.Lock()
	servers := slices.Clone(p.servers)
	clients := make([]droverv1connect.AgentServiceClient, len(servers))
	for i, addr := range servers {
		clients[i] = p.clientLocked(addr)
	}
	p.mu.Unlock()
	if len(servers) == 0 {
		return fmt.Errorf("%s: no server known", op)
	}
	var errs []error
	for i, addr := range servers {
		cctx, cancel := context.WithTimeout(ctx, artifactCallTimeout)
		err := f(cctx, addr, clients[i])
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		errs = append(errs, fmt.Errorf("%s with %s: %w", op, addr, err))
		if connect.CodeOf(err) == connect.CodeNotFound {
			// Every server answers from the same state.
			break
		}
	}
	return errors.Join(errs...)
}

// poll calls f through each (every server in turn until one answers)
// until ctx ends: again at once after an answer, after a wait that
// doubles from pullRetryMin to pullRetryMax while no server answers, and
// every pullRetryMax against servers too old to know the call, since an
// upgrade may come. It is the loop of the agent's long polls on its
// servers.
func (p *puller) poll(ctx context.Context, op string, f func(ctx context.Context, addr string, c droverv1connect.AgentServiceClient) error) {
	wait := pullRetryMin
	for ctx.Err() == nil {
		err := p.each(ctx, op, f)
		if err == nil {
			wait = pullRetryMin
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if connect.CodeOf(err) == connect.CodeUnimplemented {
			wait = pullRetryMax
		}
		p.log.Debug(op+" failed; trying again", "err", err, "in", wait)
		// On real time, not the agent's clock: tests step that clock
		// through the session's schedule, which these waits are not in.
		if sleep(ctx, realClock{}, wait) != nil {
			return
		}
		wait = min(2*wait, pullRetryMax)
	}
}

// manifest gets the signed manifest of version of model from a server.
func (p *puller) manifest(ctx context.Context, model string, version uint64) (*droverv1.SignedManifest, error) {
	var out *droverv1.SignedManifest
	err := p.each(ctx, "get manifest", func(ctx context.Context, _ string, c droverv1connect.AgentServiceClient) error {
		resp, err := c.GetManifest(ctx, connect.NewRequest(&droverv1.AgentGetManifestRequest{Model: model, Ref: strconv.FormatUint(version, 10)}))
		if err != nil {
			return err
		}
		out = resp.Msg.GetManifest()
		return nil
	})
	return out, err
}

// manifestKeys returns the cluster's manifest signing keys, asking a
// server for them the first time and whenever refresh is set.
func (p *puller) manifestKeys(ctx context.Context, refresh bool) (map[artifact.KeyID]ed25519.PublicKey, error) {
	p.mu.Lock()
	keys := p.keys
	p.mu.Unlock()
	if keys != nil && !refresh {
		return keys, nil
	}
	err := p.each(ctx, "get cluster info", func(ctx context.Context, _ string, c droverv1connect.AgentServiceClient) error {
		resp, err := c.GetClusterInfo(ctx, connect.NewRequest(&droverv1.GetClusterInfoRequest{}))
		if err != nil {
			return err
		}
		keys = make(map[artifact.KeyID]ed25519.PublicKey, len(resp.Msg.GetManifestKeys()))
		for id, pub := range resp.Msg.GetManifestKeys() {
			keys[artifact.KeyID(id)] = ed25519.PublicKey(pub)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.keys = keys
	p.mu.Unlock()
	return keys, nil
}
