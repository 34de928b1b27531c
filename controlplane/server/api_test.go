package server_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go/http3"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

// callers invokes every procedure that needs a token, with a harmless
// request, and returns its error. Streams return the error of the call as
// a whole.
var callers = map[string]func(ctx context.Context, cl *cluster.Clients) error{
	droverv1connect.ModelServiceCreateModelProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Models.CreateModel(ctx, connect.NewRequest(&droverv1.CreateModelRequest{Name: "m"}))
		return err
	},
	droverv1connect.ModelServiceDeleteModelProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Models.DeleteModel(ctx, connect.NewRequest(&droverv1.DeleteModelRequest{Name: "m"}))
		return err
	},
	droverv1connect.ModelServiceCreateVersionProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Models.CreateVersion(ctx, connect.NewRequest(&droverv1.CreateVersionRequest{Model: "m"}))
		return err
	},
	droverv1connect.ModelServiceSetAliasProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Models.SetAlias(ctx, connect.NewRequest(&droverv1.SetAliasRequest{Model: "m", Alias: "prod", Version: 1}))
		return err
	},
	droverv1connect.ModelServiceDeleteAliasProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Models.DeleteAlias(ctx, connect.NewRequest(&droverv1.DeleteAliasRequest{Model: "m", Alias: "prod"}))
		return err
	},
	droverv1connect.ModelServiceListModelsProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Models.ListModels(ctx, connect.NewRequest(&droverv1.ListModelsRequest{}))
		return err
	},
	droverv1connect.ModelServiceGetModelProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Models.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: "m"}))
		return err
	},
	droverv1connect.ModelServiceListVersionsProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Models.ListVersions(ctx, connect.NewRequest(&droverv1.ListVersionsRequest{Model: "m"}))
		return err
	},
	droverv1connect.ModelServiceGetVersionProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Models.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{Model: "m", Ref: "latest"}))
		return err
	},
	droverv1connect.AuditServiceListEventsProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Audit.ListEvents(ctx, connect.NewRequest(&droverv1.ListAuditEventsRequest{}))
		return err
	},
	droverv1connect.ClusterServiceListPeersProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Cluster.ListPeers(ctx, connect.NewRequest(&droverv1.ListPeersRequest{}))
		return err
	},
	droverv1connect.ClusterServiceRemovePeerProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Cluster.RemovePeer(ctx, connect.NewRequest(&droverv1.RemovePeerRequest{Peer: "no-such-peer"}))
		return err
	},
	droverv1connect.ClusterServiceSaveSnapshotProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := saveSnapshot(ctx, cl)
		return err
	},
	droverv1connect.ClusterServiceRestoreSnapshotProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := restoreSnapshot(ctx, cl, []byte("not a snapshot"))
		return err
	},
	droverv1connect.ClusterServiceLeaveProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.Cluster.Leave(ctx, connect.NewRequest(&droverv1.LeaveRequest{}))
		return err
	},
	droverv1connect.ACLServiceCreateTokenProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.ACL.CreateToken(ctx, connect.NewRequest(&droverv1.CreateACLTokenRequest{Name: "t", Policies: []string{"read-only"}}))
		return err
	},
	droverv1connect.ACLServiceListTokensProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.ACL.ListTokens(ctx, connect.NewRequest(&droverv1.ListACLTokensRequest{}))
		return err
	},
	droverv1connect.ACLServiceGetTokenProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.ACL.GetToken(ctx, connect.NewRequest(&droverv1.GetACLTokenRequest{Id: "no-such-token"}))
		return err
	},
	droverv1connect.ACLServiceGetTokenSelfProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.ACL.GetTokenSelf(ctx, connect.NewRequest(&droverv1.GetACLTokenSelfRequest{}))
		return err
	},
	droverv1connect.ACLServiceRevokeTokenProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.ACL.RevokeToken(ctx, connect.NewRequest(&droverv1.RevokeACLTokenRequest{Id: "no-such-token"}))
		return err
	},
	droverv1connect.ACLServiceRotateTokenProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.ACL.RotateToken(ctx, connect.NewRequest(&droverv1.RotateACLTokenRequest{Id: "no-such-token"}))
		return err
	},
	droverv1connect.ACLServiceApplyPolicyProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.ACL.ApplyPolicy(ctx, connect.NewRequest(&droverv1.ApplyACLPolicyRequest{Policy: &droverv1.ACLPolicy{Name: "p"}}))
		return err
	},
	droverv1connect.ACLServiceListPoliciesProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.ACL.ListPolicies(ctx, connect.NewRequest(&droverv1.ListACLPoliciesRequest{}))
		return err
	},
	droverv1connect.ACLServiceGetPolicyProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.ACL.GetPolicy(ctx, connect.NewRequest(&droverv1.GetACLPolicyRequest{Name: "p"}))
		return err
	},
	droverv1connect.ACLServiceDeletePolicyProcedure: func(ctx context.Context, cl *cluster.Clients) error {
		_, err := cl.ACL.DeletePolicy(ctx, connect.NewRequest(&droverv1.DeleteACLPolicyRequest{Name: "p"}))
		return err
	},
}

// publicProcedures need no token; serverProcedures take a server's
// certificate and are tested where servers make them.
var (
	publicProcedures = []string{
		droverv1connect.ACLServiceBootstrapProcedure,
		droverv1connect.ClusterServiceGetStatusProcedure,
		droverv1connect.ClusterServiceGetServerInfoProcedure,
	}
	serverProcedures = []string{
		droverv1connect.ClusterServiceRecordDenialsProcedure,
	}
)

// TestCallersCoverEveryProcedure keeps the auth tests honest: a new
// method must be added to callers (or declared public) to be tested.
func TestCallersCoverEveryProcedure(t *testing.T) {
	for _, fd := range []protoreflect.FileDescriptor{
		droverv1.File_drover_v1_registry_proto,
		droverv1.File_drover_v1_acl_proto,
		droverv1.File_drover_v1_audit_proto,
		droverv1.File_drover_v1_cluster_proto,
	} {
		for i := range fd.Services().Len() {
			svc := fd.Services().Get(i)
			for j := range svc.Methods().Len() {
				proc := "/" + string(svc.FullName()) + "/" + string(svc.Methods().Get(j).Name())
				if _, ok := callers[proc]; !ok && !slices.Contains(publicProcedures, proc) && !slices.Contains(serverProcedures, proc) {
					t.Errorf("%s is neither in callers nor public: add it to the auth tests", proc)
				}
			}
		}
	}
}

func saveSnapshot(ctx context.Context, cl *cluster.Clients) ([]byte, error) {
	stream, err := cl.Cluster.SaveSnapshot(ctx, connect.NewRequest(&droverv1.SaveSnapshotRequest{}))
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	var out []byte
	for stream.Receive() {
		out = append(out, stream.Msg().GetData()...)
	}
	return out, stream.Err()
}

func restoreSnapshot(ctx context.Context, cl *cluster.Clients, data []byte) (*droverv1.RestoreSnapshotResponse, error) {
	return restoreSnapshotForce(ctx, cl, data, false)
}

// restoreSnapshotForce restores data, with force_foreign_cluster set as
// given on the first message.
func restoreSnapshotForce(ctx context.Context, cl *cluster.Clients, data []byte, force bool) (*droverv1.RestoreSnapshotResponse, error) {
	stream := cl.Cluster.RestoreSnapshot(ctx)
	const chunk = 64 << 10
	for len(data) > 0 {
		n := min(chunk, len(data))
		if err := stream.Send(&droverv1.RestoreSnapshotRequest{Data: data[:n], ForceForeignCluster: force}); err != nil {
			if errors.Is(err, io.EOF) {
				break // the server answered early; CloseAndReceive has why
			}
			return nil, err
		}
		data = data[n:]
	}
	res, err := stream.CloseAndReceive()
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// Every call that needs a token is refused with a stable reason the CLI
// can act on: before bootstrap, without a token and with a wrong one. A
// second bootstrap is refused and leaves the first token working.
func TestAuthentication(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{NoBootstrapACL: true})
	node := c.Nodes()[0]
	ctx := testCtx(t, 60*time.Second)

	procs := slices.Sorted(func(yield func(string) bool) {
		for p := range callers {
			if !yield(p) {
				return
			}
		}
	})
	check := func(t *testing.T, cl *cluster.Clients, code connect.Code, reason droverv1.ErrorReason) {
		t.Helper()
		for _, p := range procs {
			wantErr(t, p, callers[p](ctx, cl), code, reason)
		}
	}

	// Status works before ACLs exist: it is how an operator finds out.
	for _, p := range []string{"GetStatus", "GetServerInfo"} {
		cl := clientsWith(t, c, node, "", false)
		var err error
		if p == "GetStatus" {
			_, err = cl.Cluster.GetStatus(ctx, connect.NewRequest(&droverv1.GetStatusRequest{}))
		} else {
			_, err = cl.Cluster.GetServerInfo(ctx, connect.NewRequest(&droverv1.GetServerInfoRequest{}))
		}
		if err != nil {
			t.Fatalf("%s without a token before bootstrap: %v", p, err)
		}
	}

	t.Run("before bootstrap", func(t *testing.T) {
		check(t, clientsWith(t, c, node, "", false), connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_ACL_NOT_BOOTSTRAPPED)
		check(t, clientsWith(t, c, node, "some-token", false), connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_ACL_NOT_BOOTSTRAPPED)
	})

	token, _ := bootstrapACL(t, c, node)

	t.Run("no token", func(t *testing.T) {
		check(t, clientsWith(t, c, node, "", false), connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING)
	})
	t.Run("wrong token", func(t *testing.T) {
		check(t, clientsWith(t, c, node, token+"x", false), connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID)
	})
	t.Run("second bootstrap", func(t *testing.T) {
		for _, tok := range []string{"", token} {
			_, err := clientsWith(t, c, node, tok, false).ACL.Bootstrap(ctx, connect.NewRequest(&droverv1.BootstrapRequest{}))
			wantErr(t, "second bootstrap", err, connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_ACL_ALREADY_BOOTSTRAPPED)
		}
		good := clientsWith(t, c, node, token, false)
		mustCreateModel(t, good, "after-second-bootstrap")
		if _, err := good.Models.ListModels(ctx, connect.NewRequest(&droverv1.ListModelsRequest{})); err != nil {
			t.Fatalf("first token stopped working after a second bootstrap: %v", err)
		}
	})
	// Nothing refused above reached the registry.
	models, err := clientsWith(t, c, node, token, false).Models.ListModels(ctx, connect.NewRequest(&droverv1.ListModelsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if got := models.Msg.GetModels(); len(got) != 1 || got[0].GetName() != "after-second-bootstrap" {
		t.Fatalf("models after refused calls: %v", got)
	}
}

// The registry as the CLI and agents see it: version numbers, alias moves,
// references, refusals that change nothing, and an audit trail of it all.
func TestRegistry(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{NoBootstrapACL: true})
	node := c.Nodes()[0]
	token, accessor := bootstrapACL(t, c, node)
	cl := clientsWith(t, c, node, token, false)
	ctx := testCtx(t, 60*time.Second)

	created := mustCreateModel(t, cl, "resnet")
	if created.GetCreatedBy() != accessor {
		t.Errorf("created_by = %q, want the token's accessor %q", created.GetCreatedBy(), accessor)
	}
	_, err := cl.Models.CreateModel(ctx, connect.NewRequest(&droverv1.CreateModelRequest{Name: "resnet"}))
	wantErr(t, "create existing model", err, connect.CodeAlreadyExists, droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS)

	// Versions are numbered 1..n in order.
	const n = 3
	for i := 1; i <= n; i++ {
		v, err := createVersion(ctx, cl, "resnet", i)
		if err != nil {
			t.Fatalf("create version %d: %v", i, err)
		}
		if v.GetVersion() != uint64(i) {
			t.Fatalf("version %d got number %d", i, v.GetVersion())
		}
	}
	vs, err := cl.Models.ListVersions(ctx, connect.NewRequest(&droverv1.ListVersionsRequest{Model: "resnet"}))
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vs.Msg.GetVersions() {
		if v.GetVersion() != uint64(i+1) || v.GetArtifact().GetDigest() != digest(i+1) {
			t.Fatalf("ListVersions[%d] = v%d %s", i, v.GetVersion(), v.GetArtifact().GetDigest())
		}
	}
	if len(vs.Msg.GetVersions()) != n {
		t.Fatalf("ListVersions returned %d versions, want %d", len(vs.Msg.GetVersions()), n)
	}

	// An alias is created, then moved; each answer says where it was.
	setAlias := func(alias string, v uint64) (*droverv1.SetAliasResponse, error) {
		res, err := cl.Models.SetAlias(ctx, connect.NewRequest(&droverv1.SetAliasRequest{Model: "resnet", Alias: alias, Version: v}))
		if err != nil {
			return nil, err
		}
		return res.Msg, nil
	}
	for _, step := range []struct{ to, prev uint64 }{{1, 0}, {2, 1}} {
		res, err := setAlias("prod", step.to)
		if err != nil {
			t.Fatalf("set prod -> %d: %v", step.to, err)
		}
		if res.GetPreviousVersion() != step.prev || res.GetModel().GetAliases()["prod"] != step.to {
			t.Fatalf("set prod -> %d: previous %d, aliases %v; want previous %d",
				step.to, res.GetPreviousVersion(), res.GetModel().GetAliases(), step.prev)
		}
	}

	// References: a number, an alias, "latest", and nothing (= latest).
	for ref, want := range map[string]uint64{"1": 1, "2": 2, "3": 3, "prod": 2, "latest": n, "": n} {
		res, err := cl.Models.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{Model: "resnet", Ref: ref}))
		if err != nil {
			t.Fatalf("GetVersion(resnet@%s): %v", ref, err)
		}
		if got := res.Msg.GetVersion().GetVersion(); got != want {
			t.Errorf("GetVersion(resnet@%s) = v%d, want v%d", ref, got, want)
		}
	}
	for _, ref := range []string{"4", "0", "canary"} {
		_, err := cl.Models.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{Model: "resnet", Ref: ref}))
		wantErr(t, "GetVersion(resnet@"+ref+")", err, connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND)
	}

	// Invalid names are refused with the rule, before reaching the log.
	for _, bad := range []string{"ResNet", "-x", "a b", strings.Repeat("a", 64), ""} {
		_, err := cl.Models.CreateModel(ctx, connect.NewRequest(&droverv1.CreateModelRequest{Name: bad}))
		wantErr(t, fmt.Sprintf("create model %q", bad), err, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)
		if !strings.Contains(err.Error(), "lowercase letters") || !strings.Contains(err.Error(), "1-63") {
			t.Errorf("create model %q: message does not state the rule: %v", bad, err)
		}
	}
	_, err = setAlias("Prod!", 1)
	wantErr(t, "invalid alias", err, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)

	// An alias to a version that does not exist changes nothing but is
	// audited as refused.
	before := mustGetModel(t, cl, "resnet")
	_, err = setAlias("prod", 99)
	wantErr(t, "alias to missing version", err, connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND)
	after := mustGetModel(t, cl, "resnet")
	if after.GetModel().GetModifyIndex() != before.GetModel().GetModifyIndex() || after.GetModel().GetAliases()["prod"] != 2 {
		t.Fatalf("a refused alias changed the model: modify_index %d -> %d, aliases %v",
			before.GetModel().GetModifyIndex(), after.GetModel().GetModifyIndex(), after.GetModel().GetAliases())
	}

	// A model an alias points into cannot be deleted.
	_, err = cl.Models.DeleteModel(ctx, connect.NewRequest(&droverv1.DeleteModelRequest{Name: "resnet"}))
	wantErr(t, "delete aliased model", err, connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_IN_USE)
	if !strings.Contains(err.Error(), "prod") {
		t.Errorf("IN_USE does not name the alias: %v", err)
	}
	if got := mustGetModel(t, cl, "resnet"); got.GetModel().GetLatestVersion() != n {
		t.Fatalf("model changed after a refused delete: %v", got.GetModel())
	}

	// The audit log says who did what to which object, and how it ended,
	// for every write that reached the log, in order.
	ev, err := cl.Audit.ListEvents(ctx, connect.NewRequest(&droverv1.ListAuditEventsRequest{TargetPrefix: "model/resnet"}))
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ action, target, result string }
	want := []row{
		{"model.create", "model/resnet", "ok"},
		{"model.create", "model/resnet", "already exists"},
		{"version.create", "model/resnet/v1", "ok"},
		{"version.create", "model/resnet/v2", "ok"},
		{"version.create", "model/resnet/v3", "ok"},
		{"alias.set", "model/resnet@prod", "ok"},
		{"alias.set", "model/resnet@prod", "ok"},
		{"alias.set", "model/resnet@prod", "version 99 not found"},
		{"model.delete", "model/resnet", "referenced by alias"},
	}
	events := ev.Msg.GetEvents()
	if len(events) != len(want) {
		for _, e := range events {
			t.Logf("event %d %s %s %s: %s", e.GetIndex(), e.GetActor(), e.GetAction(), e.GetTarget(), e.GetResult())
		}
		t.Fatalf("%d audit events, want %d", len(events), len(want))
	}
	var last uint64
	for i, e := range events {
		w := want[i]
		if e.GetActor() != accessor || e.GetAction() != w.action || e.GetTarget() != w.target ||
			(w.result == "ok") != (e.GetResult() == "ok") || !strings.Contains(e.GetResult(), w.result) {
			t.Errorf("event %d = {%s %s %s %q}, want {%s %s %s %q}", i,
				e.GetActor(), e.GetAction(), e.GetTarget(), e.GetResult(), accessor, w.action, w.target, w.result)
		}
		if e.GetIndex() <= last || e.GetTime() == nil {
			t.Errorf("event %d: index %d after %d, time %v", i, e.GetIndex(), last, e.GetTime())
		}
		last = e.GetIndex()
	}
	if d := events[6].GetDetails(); d["version"] != "2" || d["previous"] != "1" {
		t.Errorf("alias move details = %v, want version 2 previous 1", d)
	}
}

// A read with min_index waits for the next change (a blocking query), and
// answers with the current data once max_wait passes.
func TestBlockingQuery(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	node := c.Nodes()[0]
	cl := c.Client(node, false)
	// The new leader writes the cluster identity on its own; wait for it
	// so that no write but the test's wakes the blocked read.
	eventually(t, 10*time.Second, "cluster identity written", func() error {
		if node.Server().State().Cluster() == nil {
			return errors.New("no cluster identity yet")
		}
		return nil
	})
	mustCreateModel(t, cl, "bert")
	cur := mustGetModel(t, cl, "bert")
	idx := cur.GetMeta().GetIndex()
	if idx == 0 {
		t.Fatal("read meta has index 0")
	}

	t.Run("wakes on a write", func(t *testing.T) {
		type result struct {
			res *connect.Response[droverv1.GetModelResponse]
			err error
		}
		done := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			res, err := cl.Models.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{
				Name:    "bert",
				Options: &droverv1.QueryOptions{MinIndex: idx, MaxWait: durationpb.New(5 * time.Second)},
			}))
			done <- result{res, err}
		}()
		// Nothing changes, so the read must not answer yet. (A slow
		// machine can only make this pass more easily, never fail.)
		select {
		case r := <-done:
			t.Fatalf("blocking read answered before any write: %v %v", r.res, r.err)
		case <-time.After(300 * time.Millisecond):
		}
		start := time.Now()
		if _, err := createVersion(testCtx(t, 10*time.Second), cl, "bert", 1); err != nil {
			t.Fatal(err)
		}
		var r result
		select {
		case r = <-done:
		case <-time.After(15 * time.Second):
			t.Fatal("blocking read did not answer after a write")
		}
		if r.err != nil {
			t.Fatal(r.err)
		}
		t.Logf("blocking read answered %v after the write started", time.Since(start))
		if got := r.res.Msg.GetMeta().GetIndex(); got <= idx {
			t.Fatalf("answer index %d, want > %d", got, idx)
		}
		if r.res.Msg.GetModel().GetLatestVersion() != 1 {
			t.Fatalf("answer does not have the new version: %v", r.res.Msg.GetModel())
		}
		idx = r.res.Msg.GetMeta().GetIndex()
	})

	t.Run("times out with current data", func(t *testing.T) {
		start := time.Now()
		res, err := cl.Models.GetModel(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.GetModelRequest{
			Name:    "bert",
			Options: &droverv1.QueryOptions{MinIndex: idx, MaxWait: durationpb.New(200 * time.Millisecond)},
		}))
		waited := time.Since(start)
		if err != nil {
			t.Fatalf("blocking read that timed out: %v", err)
		}
		if waited < 200*time.Millisecond {
			t.Fatalf("answered after %v, before max_wait", waited)
		}
		if got := res.Msg.GetMeta().GetIndex(); got != idx {
			t.Fatalf("answer index %d, want the current %d", got, idx)
		}
		if res.Msg.GetModel().GetLatestVersion() != 1 {
			t.Fatalf("answer = %v, want the current model", res.Msg.GetModel())
		}
	})
}

// HTTP/3 on the API port (UDP) serves the same Connect API as HTTPS.
func TestHTTP3(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	node := c.Nodes()[0]
	mustCreateModel(t, c.Client(node, false), "whisper")

	tr := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: c.CA.Pool()}}
	t.Cleanup(func() { _ = tr.Close() })
	hdr := http.Header{"Authorization": {"Bearer " + c.Token()}}
	cl := connectClients(&http.Client{Transport: headerTransport{base: tr, hdr: hdr}}, "https://"+node.APIAddr())
	ctx := testCtx(t, 20*time.Second)

	list, err := cl.Models.ListModels(ctx, connect.NewRequest(&droverv1.ListModelsRequest{}))
	if err != nil {
		t.Fatalf("ListModels over HTTP/3: %v", err)
	}
	if m := list.Msg.GetModels(); len(m) != 1 || m[0].GetName() != "whisper" {
		t.Fatalf("ListModels over HTTP/3 = %v", m)
	}
	get, err := cl.Models.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: "whisper"}))
	if err != nil {
		t.Fatalf("GetModel over HTTP/3: %v", err)
	}
	if get.Msg.GetModel().GetName() != "whisper" || get.Msg.GetMeta().GetServedBy() != node.Name {
		t.Fatalf("GetModel over HTTP/3 = %v", get.Msg)
	}
	// Writes and errors travel the same way.
	if _, err := createVersion(ctx, cl, "whisper", 1); err != nil {
		t.Fatalf("CreateVersion over HTTP/3: %v", err)
	}
	_, err = cl.Models.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: "nope"}))
	wantErr(t, "GetModel(nope) over HTTP/3", err, connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND)

	// The same transport really spoke HTTP/3.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+node.APIAddr()+server.LivePath, nil)
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.ProtoMajor != 3 {
		t.Fatalf("response protocol %s, want HTTP/3", res.Proto)
	}
}

func httpGet(t *testing.T, c *cluster.Cluster, n *cluster.Node, path string) (int, string) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.CA.Pool()}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(testCtx(t, 10*time.Second), http.MethodGet, "https://"+n.APIAddr()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token := c.Token(); token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(b)
}

// metricValue returns the value of the first sample of name whose labels
// include every label given ("k=\"v\"" strings), or -1.
func metricValue(text, name string, labels ...string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		ok := true
		for _, l := range labels {
			if !strings.Contains(m[1], l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return -1
		}
		return v
	}
	return -1
}

// Load balancers and Prometheus need no token: health and metrics.
func TestHealthAndMetrics(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	node := c.Nodes()[0]

	if code, body := httpGet(t, c, node, server.LivePath); code != http.StatusOK {
		t.Fatalf("live: %d %s", code, body)
	}
	if code, body := httpGet(t, c, node, server.ReadyPath); code != http.StatusOK {
		t.Fatalf("ready with a leader: %d %s", code, body)
	}

	_, before := httpGet(t, c, node, "/metrics")
	mustCreateModel(t, c.Client(node, false), "llama")
	code, text := httpGet(t, c, node, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("metrics: %d", code)
	}
	if v := metricValue(text, "drover_raft_state"); v != 2 {
		t.Errorf("drover_raft_state = %v on the leader, want 2", v)
	}
	if v := metricValue(text, "drover_raft_is_leader"); v != 1 {
		t.Errorf("drover_raft_is_leader = %v, want 1", v)
	}
	if v := metricValue(text, "drover_fsm_index"); v < 1 {
		t.Errorf("drover_fsm_index = %v, want the state's index", v)
	}
	if v := metricValue(text, "drover_api_requests_total",
		`procedure="`+droverv1connect.ModelServiceCreateModelProcedure+`"`, `code="ok"`); v < 1 {
		t.Errorf("drover_api_requests_total for CreateModel = %v, want >= 1", v)
	}
	b, a := metricValue(before, "drover_raft_apply_seconds_count"), metricValue(text, "drover_raft_apply_seconds_count")
	if a < 1 || a <= b {
		t.Errorf("drover_raft_apply_seconds_count %v -> %v across a write, want it to grow", b, a)
	}
	if !strings.Contains(text, "drover_raft_apply_seconds_bucket") {
		t.Error("drover_raft_apply_seconds has no buckets")
	}
}
