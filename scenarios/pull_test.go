package scenarios

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/controlplane/server"
	"github.com/droverhq/drover/internal/linkemu"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// TestPullResumesAfterKill kills an agent half way through a pull (1 GiB;
// 32 MiB in the short tier) and starts it again: it completes the pull,
// keeps every chunk it had cached, and fetches again at most the chunks
// that were in flight when it died, so a crash costs a few chunks, not
// the half already pulled.
func TestPullResumesAfterKill(t *testing.T) {
	// The race detector slows the pull well below the cap on a small
	// machine: 1 GiB takes minutes there.
	size, bandwidth, limit := 1<<30, int64(64<<20), 30*time.Minute
	if testing.Short() {
		size, bandwidth, limit = 32<<20, 16<<20, 5*time.Minute
	}
	c := cluster.Make(t, 1, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	a := startPuller(ctx, t, c, "resume", func(cfg *agent.Config) {
		// The cap makes the pull last (4 s short, 16 s long) however
		// fast the machine, so the kill lands near the middle.
		cfg.PullBandwidth = bandwidth
		cfg.PeerAddr = ""
	})
	cl := c.Client(c.Leader(), false)
	createModel(t, cl, "big")
	tree := writeTree(t, size)
	setCLIEnv(t, c)
	if _, errOut, code := drover(ctx, c.Nodes()[0].APIAddr(), "model", "push", tree, "--model", "big"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, errOut)
	}
	chunks := manifestChunks(ctx, t, cl, "big", "1")
	before := servedToAgents(ctx, t, c)

	p := requestPull(ctx, t, c, a, "big", "1")
	start := time.Now()
	for {
		r := a.Status().Pull
		if r.RequestIndex == p.GetRequestIndex() && r.Phase == fetch.PhaseFetching && r.BytesTotal > 0 && r.BytesDone >= r.BytesTotal/2 {
			break
		}
		if r.RequestIndex == p.GetRequestIndex() && (r.Phase == fetch.PhaseDone || r.Phase == fetch.PhaseFailed) {
			t.Fatalf("pull ended before the agent could be killed: %+v", r)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pull did not reach half way: %+v", r)
		case <-time.After(5 * time.Millisecond):
		}
	}
	a.Kill()
	atKill := a.Status().Pull
	cached := cachedChunks(t, a)
	var cachedBytes int64
	for d := range cached {
		if _, ok := chunks[d]; !ok {
			t.Fatalf("the cache holds chunk %s, which the version does not list", d)
		}
		cachedBytes += chunks[d]
	}
	t.Logf("killed after %v at %d of %d bytes; %d of %d chunks (%d bytes) cached",
		time.Since(start).Round(time.Millisecond), atKill.BytesDone, atKill.BytesTotal, len(cached), len(chunks), cachedBytes)
	if len(cached) == 0 || len(cached) == len(chunks) || cachedBytes < atKill.BytesDone {
		t.Fatalf("after the kill %d of %d chunks (%d bytes) are cached, the agent reported %d bytes done; want the part it reported done",
			len(cached), len(chunks), cachedBytes, atKill.BytesDone)
	}

	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	restart := time.Now()
	st := waitPull(ctx, t, c, a, p)
	if st.GetPhase() != droverv1.PullPhase_PULL_PHASE_DONE {
		t.Fatalf("pull after the restart: %v", st)
	}
	r := a.Status().Pull
	t.Logf("after the restart: %d chunks from the cache, %d fetched, in %v", r.ChunksFromCache, r.ChunksFetched, time.Since(restart).Round(time.Millisecond))
	if r.ChunksFromCache != len(cached) || r.ChunksFetched != len(chunks)-len(cached) {
		t.Errorf("after the restart the pull found %d chunks cached and fetched %d; want the %d cached at the kill and the other %d",
			r.ChunksFromCache, r.ChunksFetched, len(cached), len(chunks)-len(cached))
	}
	checkPulled(t, []*cluster.Agent{a}, "big", 1, tree)

	// What the server sent beyond one copy is what the kill wasted: the
	// chunks in flight then, at most fetch.DefaultInFlight (the agent's
	// limit) of those it had not cached.
	var missing []int64
	for d, n := range chunks {
		if !cached[d] {
			missing = append(missing, n)
		}
	}
	slices.Sort(missing)
	var bound int64
	for _, n := range missing[max(0, len(missing)-fetch.DefaultInFlight):] {
		bound += n
	}
	var total int64
	for _, n := range chunks {
		total += n
	}
	wasted := int64(servedToAgents(ctx, t, c)-before) - total
	t.Logf("the server sent %d bytes beyond one copy; the %d largest chunks not cached at the kill hold %d", wasted, fetch.DefaultInFlight, bound)
	if wasted > bound {
		t.Errorf("the server sent %d bytes beyond one copy of the version, more than the %d of %d chunks in flight at most", wasted, bound, fetch.DefaultInFlight)
	}
}

// TestPullOverLossyLink pulls a version (2 MiB; 16 MiB in the long tier)
// onto an agent whose path to the server has a 100 ms round trip and
// loses 1% of the datagrams each way: the pull completes, over that path,
// with the pushed bytes.
func TestPullOverLossyLink(t *testing.T) {
	size := 16 << 20
	if testing.Short() {
		size = 2 << 20
	}
	c := cluster.Make(t, 1, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	shape := linkemu.Shape{Delay: 50 * time.Millisecond, Loss: 0.01}
	a := startReady(ctx, t, c, 1, cluster.AgentOptions{
		Prefix:    "far",
		Link:      &cluster.Link{Up: shape, Down: shape, Seed: 7},
		Configure: func(cfg *agent.Config) { cfg.PeerAddr = "" },
	})[0]
	cl := c.Client(c.Leader(), false)
	createModel(t, cl, "remote")
	tree := writeTree(t, size)
	setCLIEnv(t, c)
	if _, errOut, code := drover(ctx, c.Nodes()[0].APIAddr(), "model", "push", tree, "--model", "remote"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, errOut)
	}
	_, downBefore := a.LinkStats()
	start := time.Now()
	st := waitPull(ctx, t, c, a, requestPull(ctx, t, c, a, "remote", "1"))
	took := time.Since(start)
	if st.GetPhase() != droverv1.PullPhase_PULL_PHASE_DONE {
		t.Fatalf("pull over the lossy link: %v", st)
	}
	checkPulled(t, []*cluster.Agent{a}, "remote", 1, tree)
	up, down := a.LinkStats()
	carried := down.Bytes - downBefore.Bytes
	t.Logf("pulled %d MiB over 100 ms RTT, 1%% loss in %v (%.0f KB/s); link down: %d datagrams sent, %d lost; up: %d sent, %d lost",
		size>>20, took.Round(time.Millisecond), float64(size)/took.Seconds()/1e3, down.Sent, down.Lost, up.Sent, up.Lost)
	if carried < int64(size) || down.Lost == 0 || up.Lost == 0 {
		t.Errorf("the link carried %d bytes to the agent during the pull and lost %d/%d datagrams down/up; want the %d-byte version across a lossy link",
			carried, down.Lost, up.Lost, size)
	}
	if st.GetBytesFromServers() < uint64(size) {
		t.Errorf("the node reports %d bytes from servers, want the %d of the version", st.GetBytesFromServers(), size)
	}
}

// TestPullRefusesTampering offers a node that runs a version four
// versions it must not install, each refused with its own reason in the
// node's pull status while the version it runs stays current and no
// directory appears for the bad one: a manifest signed by a key the
// cluster does not know, an older manifest replayed as a newer version,
// chunks whose bytes do not match their digests (every server's copy
// altered on disk), and a manifest, signed by a registered operator key,
// that lists a file outside the version directory.
func TestPullRefusesTampering(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{Configure: func(cfg *server.Config) {
		// Each refusal waits for a heartbeat to carry the request and
		// another to report the failure: the shortest TTL keeps that quick.
		cfg.HeartbeatMinTTL = server.Duration(time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	a := startPuller(ctx, t, c, "guard", func(cfg *agent.Config) { cfg.PeerAddr = "" })
	cl := c.Client(c.Leader(), false)
	createModel(t, cl, "vision")
	setCLIEnv(t, c)
	push := func(tree string) {
		t.Helper()
		if _, errOut, code := drover(ctx, c.Nodes()[0].APIAddr(), "model", "push", tree, "--model", "vision"); code != 0 {
			t.Fatalf("push: exit %d\n%s", code, errOut)
		}
	}
	// Versions 3 and 4 carry versions 1's and 2's files under manifests
	// stamped with their create times, as a release pipeline signs them
	// with its registered key; the node runs version 4. (Manifests the
	// command line pushes carry no create time, so the node cannot order
	// them.)
	op, err := artifact.GenerateSigningKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Keys.RegisterKey(ctx, connect.NewRequest(&droverv1.RegisterKeyRequest{Name: "release", PublicKey: op.Public()})); err != nil {
		t.Fatalf("register an operator key: %v", err)
	}
	tree1, tree2 := writeTree(t, 2<<20), writeTree(t, 2<<20)
	push(tree1)
	push(tree2)
	v1, v2 := getVersion(ctx, t, cl, "vision", "1"), getVersion(ctx, t, cl, "vision", "2")
	t0 := time.Now().UTC().Truncate(time.Second)
	signed3 := resign(t, v1, t0, nil, op)
	v3 := createSignedVersion(ctx, t, cl, "vision", signed3, v1)
	v4 := createSignedVersion(ctx, t, cl, "vision", resign(t, v2, t0.Add(time.Hour), nil, op), v2)
	for _, v := range []uint64{v3, v4} {
		if st := waitPull(ctx, t, c, a, requestPull(ctx, t, c, a, "vision", strconv.FormatUint(v, 10))); st.GetPhase() != droverv1.PullPhase_PULL_PHASE_DONE {
			t.Fatalf("pull of version %d: %v", v, st)
		}
	}
	checkPulled(t, []*cluster.Agent{a}, "vision", v4, tree2)

	refused := func(what string, v uint64, want ...string) {
		t.Helper()
		st := waitPull(ctx, t, c, a, requestPull(ctx, t, c, a, "vision", strconv.FormatUint(v, 10)))
		t.Logf("%s: %s", what, st.GetError())
		if st.GetPhase() != droverv1.PullPhase_PULL_PHASE_FAILED {
			t.Errorf("pull of %s: %v, want it refused", what, st)
		}
		for _, w := range want {
			if !strings.Contains(st.GetError(), w) {
				t.Errorf("pull of %s failed with %q, which does not say %q", what, st.GetError(), w)
			}
		}
		dir := filepath.Join(a.DataDir(), "versions", "vision", strconv.FormatUint(v, 10))
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("pull of %s: its version directory exists (%v)", what, err)
		}
		if cur := currentVersion(t, a, "vision"); cur != v4 {
			t.Errorf("after the pull of %s version %d is current, want %d", what, cur, v4)
		}
		checkPulled(t, []*cluster.Agent{a}, "vision", v4, tree2)
	}

	// Version 2's files under a newer manifest, signed by a key outside
	// the cluster.
	foreign, err := artifact.GenerateSigningKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forged := resign(t, v2, t0.Add(2*time.Hour), nil, foreign)
	refused("a manifest signed by an unknown key", createSignedVersion(ctx, t, cl, "vision", forged, v2), artifact.ErrUnknownKey.Error())

	// Version 3's manifest as the pipeline signed it, offered as a newer
	// version: created before version 4's, which the node trusts.
	refused("version 3's manifest replayed", createSignedVersion(ctx, t, cl, "vision", signed3, v1),
		fetch.ErrManifestReplay.Error())

	// A properly pushed version whose chunks every server then serves
	// altered.
	push(writeTree(t, 2<<20))
	bad := getVersion(ctx, t, cl, "vision", "latest")
	altered := corruptServerChunks(t, c, bad)
	t.Logf("altered %d chunk files of version %d on the servers", altered, bad.GetVersion())
	refused("chunks that do not match their digests", bad.GetVersion(), artifact.ErrChunkCorrupt.Error(), "served corrupt bytes")

	// A manifest whose signer the cluster trusts, listing a path that
	// leaves the version directory.
	escape := resign(t, v2, t0.Add(3*time.Hour), func(m *droverv1.Manifest) { m.Files[0].Path = "../escape" }, op)
	refused("a manifest listing ../escape", createSignedVersion(ctx, t, cl, "vision", escape, v2),
		artifact.ErrInvalidManifest.Error(), `"../escape"`, artifact.ErrEscapesRoot.Error())
	if _, err := os.Stat(filepath.Join(a.DataDir(), "versions", "vision", "escape")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the refused manifest left a file outside its version directory (%v)", err)
	}

	// Refusals are not the node's end: it goes back to version 3 when
	// asked, from its cache.
	if st := waitPull(ctx, t, c, a, requestPull(ctx, t, c, a, "vision", strconv.FormatUint(v3, 10))); st.GetPhase() != droverv1.PullPhase_PULL_PHASE_DONE {
		t.Errorf("pull of version %d after the refusals: %v", v3, st)
	}
	checkPulled(t, []*cluster.Agent{a}, "vision", v3, tree1)
}

// startPuller starts one agent, named prefix-01, in site-a and waits until
// its node is ready.
func startPuller(ctx context.Context, t *testing.T, c *cluster.Cluster, prefix string, configure func(*agent.Config)) *cluster.Agent {
	t.Helper()
	return startReady(ctx, t, c, 1, cluster.AgentOptions{Prefix: prefix, Configure: configure})[0]
}

// startReady starts n agents as opts say and waits until their nodes are
// ready.
func startReady(ctx context.Context, t testing.TB, c *cluster.Cluster, n int, opts cluster.AgentOptions) []*cluster.Agent {
	t.Helper()
	fleet, err := c.StartAgents(ctx, n, opts)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := cluster.WaitAgentsEnrolled(ctx, fleet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitNodes(ctx, droverv1.NodeStatus_NODE_STATUS_READY, ids...); err != nil {
		t.Fatal(err)
	}
	return fleet
}

// requestPull asks the node of a to pull model@ref, as `drover node pull`
// does, and returns the recorded request.
func requestPull(ctx context.Context, t testing.TB, c *cluster.Cluster, a *cluster.Agent, model, ref string) *droverv1.NodePull {
	t.Helper()
	req := &droverv1.PullVersionRequest{Node: a.NodeID(), Model: model, Ref: ref}
	for {
		l, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		res, err := c.Client(l, false).Nodes.PullVersion(ctx, connect.NewRequest(req))
		if err == nil {
			return res.Msg.GetPull()
		}
		// An election on a loaded machine: asking again only replaces
		// the request.
		if connect.CodeOf(err) != connect.CodeUnavailable || ctx.Err() != nil {
			t.Fatalf("pull %s@%s onto %s: %v", model, ref, a.Name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitPull polls GetNode, as `drover node pull --wait` does, until the
// node reports request p done or failed, and returns that report.
func waitPull(ctx context.Context, t *testing.T, c *cluster.Cluster, a *cluster.Agent, p *droverv1.NodePull) *droverv1.NodePullStatus {
	t.Helper()
	var st *droverv1.NodePullStatus
	for {
		l, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// A restarted agent has no node id until it has read its
		// identity again.
		var res *connect.Response[droverv1.GetNodeResponse]
		if id := a.NodeID(); id != "" {
			res, err = c.Client(l, false).Nodes.GetNode(ctx, connect.NewRequest(&droverv1.GetNodeRequest{Node: id}))
		} else {
			err = connect.NewError(connect.CodeUnavailable, errors.New("agent not running"))
		}
		switch {
		case err == nil:
			st = res.Msg.GetNode().GetPullStatus()
			if st.GetRequestIndex() == p.GetRequestIndex() {
				switch st.GetPhase() {
				case droverv1.PullPhase_PULL_PHASE_DONE, droverv1.PullPhase_PULL_PHASE_FAILED:
					return st
				}
			}
		case connect.CodeOf(err) != connect.CodeUnavailable:
			t.Fatalf("get node %s: %v", a.Name, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s did not finish pulling %s@%d: last status %v; agent %+v", a.Name, p.GetModel(), p.GetVersion(), st, a.Status().Pull)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func getVersion(ctx context.Context, t *testing.T, cl *cluster.Clients, model, ref string) *droverv1.ModelVersion {
	t.Helper()
	res, err := cl.Models.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{Model: model, Ref: ref}))
	if err != nil {
		t.Fatalf("get %s@%s: %v", model, ref, err)
	}
	return res.Msg.GetVersion()
}

// manifestChunks returns the size of each distinct chunk of model@ref's
// manifest, by digest.
func manifestChunks(ctx context.Context, t *testing.T, cl *cluster.Clients, model, ref string) map[artifact.Digest]int64 {
	t.Helper()
	m, err := artifact.DecodeManifest(getVersion(ctx, t, cl, model, ref).GetArtifact().GetSigned().GetManifest(), artifact.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	out := map[artifact.Digest]int64{}
	for _, f := range m.GetFiles() {
		for _, ch := range f.GetChunks() {
			d, err := artifact.DigestFromBytes(ch.GetDigest())
			if err != nil {
				t.Fatal(err)
			}
			out[d] = int64(ch.GetSize())
		}
	}
	return out
}

// cachedChunks lists the chunks in the agent's cache, by the names of
// their files (<cache>/chunks/ab/<hex>).
func cachedChunks(t *testing.T, a *cluster.Agent) map[artifact.Digest]bool {
	t.Helper()
	out := map[artifact.Digest]bool{}
	root := filepath.Join(a.DataDir(), "cache", "chunks")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		dg, err := artifact.ParseDigest("sha256:" + d.Name())
		if err != nil {
			return err
		}
		out[dg] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// currentVersion is the version of model the agent's store records as
// current (<data-dir>/models/<model>/state.json); 0 for none.
func currentVersion(t *testing.T, a *cluster.Agent, model string) uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(a.DataDir(), "models", model, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Current *fetch.Installed `json:"current"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("state of %s: %v", model, err)
	}
	if st.Current == nil {
		return 0
	}
	return st.Current.Version
}

// resign returns v's manifest with create time at, changed by edit if
// given, and signed by key alone. It is encoded without the validation
// MarshalManifest does, so that edit can make it invalid, as a hostile
// signer could.
func resign(t *testing.T, v *droverv1.ModelVersion, at time.Time, edit func(*droverv1.Manifest), key artifact.SigningKey) *droverv1.SignedManifest {
	t.Helper()
	m, err := artifact.DecodeManifest(v.GetArtifact().GetSigned().GetManifest(), artifact.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	m.CreateTime = timestamppb.New(at)
	if edit != nil {
		edit(m)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := artifact.Sign(b, key)
	if err != nil {
		t.Fatal(err)
	}
	return &droverv1.SignedManifest{Manifest: b, Signatures: []*droverv1.ManifestSignature{sig}}
}

// createSignedVersion registers a version whose artifact is the signed
// manifest given, as a registry client may, with the size of like; it
// returns the version's number.
func createSignedVersion(ctx context.Context, t *testing.T, cl *cluster.Clients, model string, signed *droverv1.SignedManifest, like *droverv1.ModelVersion) uint64 {
	t.Helper()
	res, err := cl.Models.CreateVersion(ctx, connect.NewRequest(&droverv1.CreateVersionRequest{Model: model, Artifact: &droverv1.ArtifactManifest{
		Digest: artifact.Sum(signed.GetManifest()).String(), SizeBytes: like.GetArtifact().GetSizeBytes(), Signed: signed,
	}}))
	if err != nil {
		t.Fatalf("create a version with a signed manifest: %v", err)
	}
	return res.Msg.GetVersion().GetVersion()
}

// corruptServerChunks flips a byte of every chunk of version v in every
// server's chunk store, on disk and in place, so the servers serve bytes
// that do not match the digests; it returns how many files it changed.
func corruptServerChunks(t *testing.T, c *cluster.Cluster, v *droverv1.ModelVersion) int {
	t.Helper()
	m, err := artifact.DecodeManifest(v.GetArtifact().GetSigned().GetManifest(), artifact.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, node := range c.Nodes() {
		dir := server.ChunkStoreDir(node.DataDir())
		for _, f := range m.GetFiles() {
			for _, ch := range f.GetChunks() {
				d, err := artifact.DigestFromBytes(ch.GetDigest())
				if err != nil {
					t.Fatal(err)
				}
				hex := strings.TrimPrefix(d.String(), "sha256:")
				path := filepath.Join(dir, "chunks", hex[:2], hex)
				f, err := os.OpenFile(path, os.O_RDWR, 0)
				if err != nil {
					t.Fatalf("chunk %s on %s: %v", d, node.Name, err)
				}
				b := make([]byte, 1)
				if _, err := f.ReadAt(b, 0); err != nil {
					t.Fatal(err)
				}
				b[0] ^= 0xff
				if _, err := f.WriteAt(b, 0); err != nil {
					t.Fatal(err)
				}
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
				n++
			}
		}
	}
	if n == 0 {
		t.Fatalf("version %d has no chunks on any server", v.GetVersion())
	}
	return n
}
