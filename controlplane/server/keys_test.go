package server_test

import (
	"crypto/ed25519"
	crand "crypto/rand"
	"crypto/tls"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/controlplane/acl"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

// clusterTrust asks n's GetClusterInfo, with no credential, as an agent
// does, which keys manifests may be signed with and which were revoked.
func clusterTrust(t *testing.T, c *cluster.Cluster, n *cluster.Node) (map[artifact.KeyID]ed25519.PublicKey, []string) {
	t.Helper()
	info, err := droverv1connect.NewAgentServiceClient(&http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: c.CA.Pool(), MinVersion: tls.VersionTLS13}}}, "https://"+n.APIAddr()).
		GetClusterInfo(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.GetClusterInfoRequest{}))
	if err != nil {
		t.Fatalf("GetClusterInfo: %v", err)
	}
	trusted := make(map[artifact.KeyID]ed25519.PublicKey)
	for id, pub := range info.Msg.GetManifestKeys() {
		trusted[artifact.KeyID(id)] = pub
	}
	return trusted, info.Msg.GetRevokedManifestKeys()
}

// awaitTrust polls clusterTrust until n, which may lag behind the
// leader, trusts want keys.
func awaitTrust(t *testing.T, c *cluster.Cluster, n *cluster.Node, want int) (map[artifact.KeyID]ed25519.PublicKey, []string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		trusted, revoked := clusterTrust(t, c, n)
		if len(trusted) == want || time.Now().After(deadline) {
			return trusted, revoked
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// signedBy returns tr's manifest with a signature by each key.
func signedBy(t *testing.T, tr *modelTree, keys ...artifact.SigningKey) *droverv1.SignedManifest {
	t.Helper()
	out := &droverv1.SignedManifest{Manifest: tr.signed.GetManifest()}
	for _, k := range keys {
		sig, err := artifact.Sign(out.GetManifest(), k)
		if err != nil {
			t.Fatal(err)
		}
		out.Signatures = append(out.Signatures, sig)
	}
	return out
}

// An operator's registered key signs a push: the server checks the
// signature, keeps it beside its own, and agents trust the key until it is
// revoked. Unknown and revoked keys and bad signatures are refused, each
// saying which.
func TestPushSignedByOperatorKey(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	follower := followerOf(t, c, c.Leader())
	ctx := testCtx(t, 2*time.Minute)
	cl := c.Client(follower, false)
	mustCreateModel(t, cl, "llama")
	ac := artifactClient(t, c, follower)

	before, _ := clusterTrust(t, c, follower)
	if len(before) != 1 {
		t.Fatalf("a new cluster trusts %d keys, want its own only", len(before))
	}
	var clusterKey ed25519.PublicKey
	for _, pub := range before {
		clusterKey = pub
	}
	_, err := cl.Keys.RegisterKey(ctx, connect.NewRequest(&droverv1.RegisterKeyRequest{Name: "own", PublicKey: clusterKey}))
	wantErr(t, "registering the cluster's own key", err, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)

	ci, err := artifact.GenerateSigningKey(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := cl.Keys.RegisterKey(ctx, connect.NewRequest(&droverv1.RegisterKeyRequest{Name: "ci", PublicKey: ci.Public(), Description: "release pipeline"}))
	if err != nil {
		t.Fatalf("RegisterKey: %v", err)
	}
	if k := reg.Msg.GetKey(); k.GetKeyId() != string(ci.ID()) || k.GetName() != "ci" || k.GetCreatedByName() == "" || k.GetCreateTime() == nil {
		t.Errorf("registered key %v", k)
	}
	_, err = cl.Keys.RegisterKey(ctx, connect.NewRequest(&droverv1.RegisterKeyRequest{Name: "ci-2", PublicKey: ci.Public()}))
	wantErr(t, "registering a key twice", err, connect.CodeAlreadyExists, droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS)

	// Every server, the follower answering agents included, trusts it.
	trusted, revoked := awaitTrust(t, c, follower, 2)
	if len(trusted) != 2 || !ci.Public().Equal(trusted[ci.ID()]) || len(revoked) != 0 {
		t.Fatalf("GetClusterInfo trusts %v, revoked %v; want the cluster's key and ci's", trusted, revoked)
	}

	tr := makeTree(t, 11)
	tr.signed = signedBy(t, tr, ci)
	_, fin := push(ctx, t, ac, tr, "llama")
	served := fin.GetVersion().GetArtifact().GetSigned()
	var ids []string
	for _, s := range served.GetSignatures() {
		ids = append(ids, s.GetKeyId())
	}
	if len(ids) != 2 || ids[0] != string(ci.ID()) {
		t.Fatalf("the version's manifest is signed by %v, want ci's key (%s) and the cluster's", ids, ci.ID())
	}
	if _, _, err := artifact.Verify(served, trusted, artifact.DefaultLimits()); err != nil {
		t.Errorf("the pushed version does not verify with the cluster's trusted keys: %v", err)
	}
	onlyCI := &droverv1.SignedManifest{Manifest: served.GetManifest(), Signatures: served.GetSignatures()[:1]}
	if _, _, err := artifact.Verify(onlyCI, map[artifact.KeyID]ed25519.PublicKey{ci.ID(): ci.Public()}, artifact.DefaultLimits()); err != nil {
		t.Errorf("ci's signature kept with the version does not verify: %v", err)
	}

	// A signature that does not verify, and one by a key never registered.
	other := makeTree(t, 12)
	bad := signedBy(t, other, ci)
	bad.Signatures[0].Signature[3] ^= 1
	_, err = ac.StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{Model: "llama", Manifest: bad}))
	wantErr(t, "StartPush with a bad signature", err, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)
	if !strings.Contains(err.Error(), "does not verify") {
		t.Errorf("bad signature refused with %v", err)
	}
	stranger, err := artifact.GenerateSigningKey(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ac.StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{Model: "llama", Manifest: signedBy(t, other, stranger)}))
	wantErr(t, "StartPush signed by an unknown key", err, connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)
	if !strings.Contains(err.Error(), "not registered") || !strings.Contains(err.Error(), string(stranger.ID())) {
		t.Errorf("unknown key refused with %v", err)
	}
	// A good signature does not carry a bad one past the push.
	_, err = ac.FinishPush(ctx, connect.NewRequest(&droverv1.FinishPushRequest{Model: "llama", Manifest: signedBy(t, tr, ci, stranger)}))
	wantErr(t, "FinishPush signed by ci and an unknown key", err, connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)

	// Revoked: new pushes with the key are refused, agents are told.
	rev, err := cl.Keys.RevokeKey(ctx, connect.NewRequest(&droverv1.RevokeKeyRequest{Key: "ci"}))
	if err != nil {
		t.Fatalf("RevokeKey: %v", err)
	}
	if rev.Msg.GetKey().GetRevokeTime() == nil {
		t.Errorf("revoked key %v has no revoke time", rev.Msg.GetKey())
	}
	// StartPush is answered by the follower, from its own state.
	trusted, revoked = awaitTrust(t, c, follower, 1)
	_, err = ac.StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{Model: "llama", Manifest: signedBy(t, other, ci)}))
	wantErr(t, "StartPush signed by a revoked key", err, connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)
	if !strings.Contains(err.Error(), "revoked") || !strings.Contains(err.Error(), `"ci"`) {
		t.Errorf("revoked key refused with %v", err)
	}
	if _, ok := trusted[ci.ID()]; ok || len(trusted) != 1 || !slices.Equal(revoked, []string{string(ci.ID())}) {
		t.Fatalf("after revoking, GetClusterInfo trusts %v and lists revoked %v", trusted, revoked)
	}
	// A manifest signed only by the revoked key is refused; the version
	// pushed while the key was good keeps the cluster's countersignature.
	if _, _, err := artifact.Verify(onlyCI, trusted, artifact.DefaultLimits()); !errors.Is(err, artifact.ErrUnknownKey) {
		t.Errorf("a manifest signed only by a revoked key verifies: %v", err)
	}
	if _, _, err := artifact.Verify(served, trusted, artifact.DefaultLimits()); err != nil {
		t.Errorf("the version pushed before the key was revoked no longer verifies: %v", err)
	}

	list, err := cl.Keys.ListKeys(ctx, connect.NewRequest(&droverv1.ListKeysRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if ks := list.Msg.GetKeys(); len(ks) != 1 || ks[0].GetKeyId() != string(ci.ID()) || ks[0].GetRevokeIndex() == 0 {
		t.Errorf("ListKeys = %v", ks)
	}
}

// Registering and revoking keys needs operator:write; a read-only token
// may list them.
func TestKeyServiceACL(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	n := c.Nodes()[0]
	ctx := testCtx(t, time.Minute)
	admin := c.Client(n, false)
	created, err := admin.ACL.CreateToken(ctx, connect.NewRequest(&droverv1.CreateACLTokenRequest{Name: "viewer", Policies: []string{acl.PolicyReadOnly}}))
	if err != nil {
		t.Fatal(err)
	}
	viewer := clientsWith(t, c, n, created.Msg.GetSecretId(), false)
	k, err := artifact.GenerateSigningKey(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, err = viewer.Keys.RegisterKey(ctx, connect.NewRequest(&droverv1.RegisterKeyRequest{Name: "mine", PublicKey: k.Public()}))
	wantErr(t, "RegisterKey with a read-only token", err, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_PERMISSION_DENIED)
	if _, err := admin.Keys.RegisterKey(ctx, connect.NewRequest(&droverv1.RegisterKeyRequest{Name: "ci", PublicKey: k.Public()})); err != nil {
		t.Fatal(err)
	}
	list, err := viewer.Keys.ListKeys(ctx, connect.NewRequest(&droverv1.ListKeysRequest{}))
	if err != nil || len(list.Msg.GetKeys()) != 1 {
		t.Fatalf("ListKeys with a read-only token = %v, %v", list, err)
	}
	_, err = viewer.Keys.RevokeKey(ctx, connect.NewRequest(&droverv1.RevokeKeyRequest{Key: "ci"}))
	wantErr(t, "RevokeKey with a read-only token", err, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_PERMISSION_DENIED)
	_, err = admin.Keys.RevokeKey(ctx, connect.NewRequest(&droverv1.RevokeKeyRequest{Key: "nobody"}))
	wantErr(t, "RevokeKey of an unknown key", err, connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND)
}
