package server_test

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/artifact"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// at returns the tree with its manifest built again with create time ts,
// as a publisher stamps it; the chunks are the same.
func (tr *modelTree) at(t *testing.T, ts time.Time) *modelTree {
	t.Helper()
	m, _, err := artifact.BuildManifest(context.Background(), tr.root, artifact.BuildOptions{
		Chunker: artifact.ChunkerParamsForAverage(64 << 10), CreateTime: ts,
	})
	if err != nil {
		t.Fatalf("build manifest: %v", err)
	}
	b, err := artifact.MarshalManifest(m)
	if err != nil {
		t.Fatalf("marshal manifest: %v", err)
	}
	out := *tr
	out.signed = &droverv1.SignedManifest{Manifest: b}
	return &out
}

// pullCluster is a cluster of n servers with one agent, heartbeating
// every third of a second.
type pullCluster struct {
	c      *cluster.Cluster
	leader *cluster.Node
	agent  *cluster.Agent
	nodeID string
	nodes  *cluster.Clients
}

func newPullCluster(t *testing.T, n int, configure func(*agent.Config)) *pullCluster {
	t.Helper()
	c := cluster.Make(t, n, cluster.Options{Configure: shortTTLs})
	leader := c.Leader()
	ctx := testCtx(t, time.Minute)
	agents, err := c.StartAgents(ctx, 1, cluster.AgentOptions{Prefix: "edge", Configure: configure})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := cluster.WaitAgentsEnrolled(ctx, agents)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitNodes(ctx, droverv1.NodeStatus_NODE_STATUS_READY, ids...); err != nil {
		t.Fatal(err)
	}
	return &pullCluster{c: c, leader: leader, agent: agents[0], nodeID: ids[0], nodes: c.Client(leader, false)}
}

// dataDir is the agent's data directory.
func (pc *pullCluster) dataDir() string {
	return pc.c.AgentConfig(pc.agent.Name, "").DataDir
}

func (pc *pullCluster) pullVersion(ctx context.Context, t *testing.T, model, ref string) *droverv1.NodePull {
	t.Helper()
	req := &droverv1.PullVersionRequest{Node: pc.agent.Name, Model: model, Ref: ref}
	res, err := pc.nodes.Nodes.PullVersion(ctx, connect.NewRequest(req))
	for try := 0; connect.CodeOf(err) == connect.CodeUnavailable && try < 20; try++ {
		// An election on a loaded machine; asking again only replaces
		// the request.
		t.Logf("PullVersion: %v", err)
		time.Sleep(250 * time.Millisecond)
		res, err = pc.nodes.Nodes.PullVersion(ctx, connect.NewRequest(req))
	}
	if err != nil {
		t.Fatalf("PullVersion %s@%s: %v", model, ref, err)
	}
	return res.Msg.GetPull()
}

// waitPull polls GetNode, as `drover node pull --wait` does, until the
// node reports request p done or failed, and returns that report.
func (pc *pullCluster) waitPull(ctx context.Context, t *testing.T, p *droverv1.NodePull) *droverv1.NodePullStatus {
	t.Helper()
	for {
		res, err := pc.nodes.Nodes.GetNode(ctx, connect.NewRequest(&droverv1.GetNodeRequest{Node: pc.nodeID}))
		if connect.CodeOf(err) == connect.CodeUnavailable {
			// An election on a loaded machine; the CLI retries too.
			t.Logf("GetNode: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatalf("GetNode: %v", err)
		}
		st := res.Msg.GetNode().GetPullStatus()
		if st.GetRequestIndex() == p.GetRequestIndex() {
			switch st.GetPhase() {
			case droverv1.PullPhase_PULL_PHASE_DONE, droverv1.PullPhase_PULL_PHASE_FAILED:
				return st
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node did not finish pulling %s@%d: last status %v; agent %+v", p.GetModel(), p.GetVersion(), st, pc.agent.Status().Pull)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// An operator pushes two versions and asks a real agent to pull each in
// turn: the node reports progress until done, the version directories hold
// the pushed trees, and the previous version stays for a rollback. Then
// versions the cluster serves but the node must not trust are refused,
// with the reason in the node's status and nothing activated: a manifest
// signed by a key the cluster does not list, and version 1's manifest
// replayed as a newer version.
func TestNodePullVersion(t *testing.T) {
	// One server: the refusals are the point here; the restart test
	// pulls from three.
	pc := newPullCluster(t, 1, nil)
	ctx := testCtx(t, 2*time.Minute)
	mustCreateModel(t, pc.nodes, "llama")
	ac := artifactClient(t, pc.c, pc.leader)
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	trA, trB := makeTree(t, 21).at(t, t0), makeTree(t, 22).at(t, t0.Add(time.Hour))
	_, finA := push(ctx, t, ac, trA, "llama")
	_, finB := push(ctx, t, ac, trB, "llama")
	vA, vB := finA.GetVersion(), finB.GetVersion()

	p := pc.pullVersion(ctx, t, "llama", strconv.FormatUint(vA.GetVersion(), 10))
	if p.GetVersion() != vA.GetVersion() || p.GetArtifactDigest() != vA.GetArtifact().GetDigest() || p.GetRequestIndex() == 0 {
		t.Fatalf("PullVersion recorded %v, want version %d with its digest", p, vA.GetVersion())
	}
	st := pc.waitPull(ctx, t, p)
	if st.GetPhase() != droverv1.PullPhase_PULL_PHASE_DONE || st.GetBytesDone() != st.GetBytesTotal() || st.GetBytesFromServers() == 0 {
		t.Fatalf("pull of version %d: %v, want done with bytes from servers", vA.GetVersion(), st)
	}
	dirA := filepath.Join(pc.dataDir(), "versions", "llama", strconv.FormatUint(vA.GetVersion(), 10))
	assertSameTree(t, trA.root, dirA)

	// "latest" resolves when asked; the new request replaces the old.
	p = pc.pullVersion(ctx, t, "llama", "latest")
	if p.GetVersion() != vB.GetVersion() {
		t.Fatalf("PullVersion latest = version %d, want %d", p.GetVersion(), vB.GetVersion())
	}
	if st := pc.waitPull(ctx, t, p); st.GetPhase() != droverv1.PullPhase_PULL_PHASE_DONE {
		t.Fatalf("pull of version %d: %v", vB.GetVersion(), st)
	}
	dirB := filepath.Join(pc.dataDir(), "versions", "llama", strconv.FormatUint(vB.GetVersion(), 10))
	assertSameTree(t, trB.root, dirB)
	assertSameTree(t, trA.root, dirA) // the previous version stays

	// Listings carry the report too.
	ls, err := pc.nodes.Nodes.ListNodes(ctx, connect.NewRequest(&droverv1.ListNodesRequest{}))
	if err != nil || len(ls.Msg.GetNodes()) != 1 || ls.Msg.GetNodes()[0].GetPullStatus().GetVersion() != vB.GetVersion() {
		t.Errorf("ListNodes = %v (%v), want the node with its pull of version %d", ls.Msg.GetNodes(), err, vB.GetVersion())
	}

	// The request is in the replicated state.
	n, err := pc.c.Client(pc.leader, true).Nodes.GetNode(ctx, connect.NewRequest(&droverv1.GetNodeRequest{Node: pc.nodeID}))
	if err != nil || n.Msg.GetNode().GetRequestedPull().GetVersion() != vB.GetVersion() {
		t.Errorf("node's requested pull = %v (%v), want version %d", n.Msg.GetNode().GetRequestedPull(), err, vB.GetVersion())
	}

	// Refusals name what is wrong.
	_, err = pc.nodes.Nodes.PullVersion(ctx, connect.NewRequest(&droverv1.PullVersionRequest{Node: "nope", Model: "llama"}))
	wantErr(t, "pull onto an unknown node", err, connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND)
	_, err = pc.nodes.Nodes.PullVersion(ctx, connect.NewRequest(&droverv1.PullVersionRequest{Node: pc.nodeID, Model: "bert"}))
	wantErr(t, "pull of an unknown model", err, connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND)
	_, err = pc.nodes.Nodes.PullVersion(ctx, connect.NewRequest(&droverv1.PullVersionRequest{Node: pc.nodeID, Model: "llama", Ref: "prod"}))
	wantErr(t, "pull of an unknown alias", err, connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND)
	bare, err := pc.nodes.Models.CreateVersion(ctx, connect.NewRequest(&droverv1.CreateVersionRequest{Model: "llama", Artifact: &droverv1.ArtifactManifest{
		Digest: "sha256:" + strings.Repeat("ab", 32), SizeBytes: 10,
	}}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = pc.nodes.Nodes.PullVersion(ctx, connect.NewRequest(&droverv1.PullVersionRequest{Node: pc.nodeID, Model: "llama", Ref: strconv.FormatUint(bare.Msg.GetVersion().GetVersion(), 10)}))
	wantErr(t, "pull of a version without bytes", err, connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)

	// A version whose manifest a key outside the cluster signed: its
	// chunks are the cluster's, its signature is not.
	foreign, err := artifact.GenerateSigningKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forged := trA.at(t, t0.Add(2*time.Hour)).signed
	sig, err := artifact.Sign(forged.GetManifest(), foreign)
	if err != nil {
		t.Fatal(err)
	}
	forged.Signatures = []*droverv1.ManifestSignature{sig}
	vForged := createSignedVersion(ctx, t, pc.nodes, "llama", forged, vA.GetArtifact().GetSizeBytes())
	refused := func(what string, v uint64, want string) {
		t.Helper()
		st := pc.waitPull(ctx, t, pc.pullVersion(ctx, t, "llama", strconv.FormatUint(v, 10)))
		if st.GetPhase() != droverv1.PullPhase_PULL_PHASE_FAILED || !strings.Contains(st.GetError(), want) {
			t.Errorf("pull of %s: %v, want failed with %q", what, st, want)
		}
		if _, err := os.Stat(filepath.Join(pc.dataDir(), "versions", "llama", strconv.FormatUint(v, 10))); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pull of %s: its version directory exists (%v)", what, err)
		}
		assertSameTree(t, trB.root, dirB)
	}
	refused("a manifest signed by an unknown key", vForged, artifact.ErrUnknownKey.Error())

	// Version A's manifest, as the cluster signed it, offered as a newer
	// version: older than version B's, which the node trusts.
	vReplay := createSignedVersion(ctx, t, pc.nodes, "llama", vA.GetArtifact().GetSigned(), vA.GetArtifact().GetSizeBytes())
	refused("version A's manifest replayed as a newer version", vReplay, "out of order")

	// Asking a node to pull takes node:write on it and model:read on the
	// model, whose bytes the node gets.
	admin := clientsWith(t, pc.c, pc.leader, pc.c.Token(), false)
	for name, rules := range map[string][]*droverv1.ACLRule{
		"fleet":        {{Resource: droverv1.ACLResource_ACL_RESOURCE_NODE, Access: droverv1.ACLAccess_ACL_ACCESS_WRITE}},
		"fleet-models": {{Resource: droverv1.ACLResource_ACL_RESOURCE_NODE, Access: droverv1.ACLAccess_ACL_ACCESS_WRITE}, modelRule(droverv1.ACLAccess_ACL_ACCESS_READ, "llama")},
		"models":       {modelRule(droverv1.ACLAccess_ACL_ACCESS_READ, "")},
	} {
		if _, err := admin.ACL.ApplyPolicy(ctx, connect.NewRequest(&droverv1.ApplyACLPolicyRequest{Policy: &droverv1.ACLPolicy{Name: name, Rules: rules}})); err != nil {
			t.Fatal(err)
		}
	}
	tokenFor := func(policy string) *cluster.Clients {
		created, err := admin.ACL.CreateToken(ctx, connect.NewRequest(&droverv1.CreateACLTokenRequest{Name: policy, Policies: []string{policy}}))
		if err != nil {
			t.Fatal(err)
		}
		return clientsWith(t, pc.c, pc.leader, created.Msg.GetSecretId(), false)
	}
	ask := &droverv1.PullVersionRequest{Node: pc.nodeID, Model: "llama", Ref: strconv.FormatUint(vB.GetVersion(), 10)}
	_, err = tokenFor("fleet").Nodes.PullVersion(ctx, connect.NewRequest(ask))
	wantErr(t, "pull with node:write but no model:read", err, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_PERMISSION_DENIED)
	if err != nil && !strings.Contains(err.Error(), "model:read on model/llama") {
		t.Errorf("refusal %q does not name model:read on model/llama", err)
	}
	_, err = tokenFor("models").Nodes.PullVersion(ctx, connect.NewRequest(ask))
	wantErr(t, "pull with model:read but no node:write", err, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_PERMISSION_DENIED)
	res, err := tokenFor("fleet-models").Nodes.PullVersion(ctx, connect.NewRequest(ask))
	if err != nil {
		t.Fatalf("pull with node:write and model:read: %v", err)
	}
	if st := pc.waitPull(ctx, t, res.Msg.GetPull()); st.GetPhase() != droverv1.PullPhase_PULL_PHASE_DONE {
		t.Errorf("pull of the current version again: %v, want done", st)
	}
}

// createSignedVersion registers a version whose artifact is the signed
// manifest given, as a registry client may, and returns its number.
func createSignedVersion(ctx context.Context, t *testing.T, cl *cluster.Clients, model string, signed *droverv1.SignedManifest, size uint64) uint64 {
	t.Helper()
	res, err := cl.Models.CreateVersion(ctx, connect.NewRequest(&droverv1.CreateVersionRequest{Model: model, Artifact: &droverv1.ArtifactManifest{
		Digest: artifact.Sum(signed.GetManifest()).String(), SizeBytes: size, Signed: signed,
	}}))
	if err != nil {
		t.Fatalf("create version with a signed manifest: %v", err)
	}
	return res.Msg.GetVersion().GetVersion()
}

// An agent killed in the middle of a pull, and started again, goes on
// with the request it finds in its first heartbeat answer and fetches only
// the chunks its cache lacks.
func TestNodePullResumesAfterRestart(t *testing.T) {
	pc := newPullCluster(t, 3, func(cfg *agent.Config) {
		// About three seconds for the tree, so the kill lands mid-pull.
		cfg.PullBandwidth = 1 << 20
	})
	ctx := testCtx(t, 2*time.Minute)
	mustCreateModel(t, pc.nodes, "llama")
	tr := makeTree(t, 31)
	_, fin := push(ctx, t, artifactClient(t, pc.c, pc.leader), tr, "llama")
	p := pc.pullVersion(ctx, t, "llama", "candidate")

	for {
		r := pc.agent.Status().Pull
		if r.RequestIndex == p.GetRequestIndex() && r.Phase == "fetching" && r.BytesDone > r.BytesTotal/4 {
			break
		}
		if r.Phase == "done" || r.Phase == "failed" {
			t.Fatalf("pull ended before the agent could be killed: %+v", r)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pull did not get under way: %+v", r)
		case <-time.After(10 * time.Millisecond):
		}
	}
	pc.agent.Kill()
	if err := pc.agent.Start(); err != nil {
		t.Fatal(err)
	}
	st := pc.waitPull(ctx, t, p)
	if st.GetPhase() != droverv1.PullPhase_PULL_PHASE_DONE {
		t.Fatalf("pull after the restart: %v", st)
	}
	r := pc.agent.Status().Pull
	if r.ChunksFromCache == 0 || r.ChunksFetched == 0 || r.ChunksFromCache+r.ChunksFetched != len(tr.keys) {
		t.Errorf("after the restart the pull fetched %d chunks and found %d cached, want some of each, %d in all",
			r.ChunksFetched, r.ChunksFromCache, len(tr.keys))
	}
	assertSameTree(t, tr.root, filepath.Join(pc.dataDir(), "versions", "llama", strconv.FormatUint(fin.GetVersion().GetVersion(), 10)))

	// A new request stops the running pull: version 2's pull is cut off
	// by a request for version 1 again, which is current and done at once.
	tr2 := makeTree(t, 32)
	_, fin2 := push(ctx, t, artifactClient(t, pc.c, pc.leader), tr2, "llama")
	p2 := pc.pullVersion(ctx, t, "llama", "latest")
	for r := pc.agent.Status().Pull; r.RequestIndex != p2.GetRequestIndex() || r.Phase != "fetching"; r = pc.agent.Status().Pull {
		if r.RequestIndex == p2.GetRequestIndex() && (r.Phase == "done" || r.Phase == "failed") {
			t.Fatalf("pull of version 2 ended before it could be superseded: %+v", r)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pull of version 2 did not get under way: %+v", r)
		case <-time.After(10 * time.Millisecond):
		}
	}
	p1 := pc.pullVersion(ctx, t, "llama", strconv.FormatUint(fin.GetVersion().GetVersion(), 10))
	if st := pc.waitPull(ctx, t, p1); st.GetPhase() != droverv1.PullPhase_PULL_PHASE_DONE || st.GetVersion() != fin.GetVersion().GetVersion() {
		t.Errorf("request for the current version after a superseded pull: %v, want done", st)
	}
	if _, err := os.Stat(filepath.Join(pc.dataDir(), "versions", "llama", strconv.FormatUint(fin2.GetVersion().GetVersion(), 10))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the superseded pull left its version directory (%v)", err)
	}

	// A second restart finds the version current: nothing is fetched.
	pc.agent.Kill()
	if err := pc.agent.Start(); err != nil {
		t.Fatal(err)
	}
	for {
		r := pc.agent.Status().Pull
		if r.Phase == "done" {
			if r.ChunksFetched != 0 {
				t.Errorf("a restart with the version current fetched %d chunks", r.ChunksFetched)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("restarted agent did not report the version: %+v", r)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
