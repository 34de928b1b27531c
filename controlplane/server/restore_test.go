package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// snapshotParts splits a snapshot file into its header bytes and body,
// after the 8-byte magic and the 4-byte header length, before the 32-byte
// checksum.
func snapshotParts(t *testing.T, file []byte) (header, body []byte) {
	t.Helper()
	if len(file) < 12+sha256.Size {
		t.Fatalf("snapshot file of %d bytes", len(file))
	}
	hlen := int(binary.BigEndian.Uint32(file[8:12]))
	return file[12 : 12+hlen], file[12+hlen : len(file)-sha256.Size]
}

// craftSnapshot builds a file with a valid magic, header and checksum
// around any body, as someone who knows the format can.
func craftSnapshot(header, body []byte) []byte {
	var b bytes.Buffer
	b.WriteString("DRVSNAP\x01")
	_ = binary.Write(&b, binary.BigEndian, uint32(len(header)))
	b.Write(header)
	b.Write(body)
	sum := sha256.Sum256(b.Bytes())
	b.Write(sum[:])
	return b.Bytes()
}

func modelNames(t *testing.T, cl *cluster.Clients) []string {
	t.Helper()
	var names []string
	for _, m := range modelsOf(t, cl).GetModels() {
		names = append(names, m.GetName())
	}
	return names
}

// A file whose checksum is right but whose body is not a state the server
// can restore is refused before Raft sees it: the leader stays up and in
// charge, and nothing changes. (Raft panics when the state machine
// refuses an operator's restore.)
func TestRestoreRefusesUndecodableBody(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	leader := c.Leader()
	cl := clientsWith(t, c, leader, c.Token(), false)
	ctx := testCtx(t, 60*time.Second)
	mustCreateModel(t, cl, "keep")
	file, err := saveSnapshot(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	header, body := snapshotParts(t, file)
	mustCreateModel(t, cl, "later")
	before := modelsOf(t, cl)

	// A record whose length prefix runs past the end of the body.
	overrun := bytes.Clone(body)
	overrun = append(overrun[:len(overrun)-1], 0x7f)
	for _, tt := range []struct{ name, body string }{
		{"garbage", "valid checksum, not a state"},
		{"half the body", string(body[:len(body)/2])},
		{"data after the end marker", string(body) + "x"},
		{"a record overrunning the body", string(overrun)},
	} {
		_, err := restoreSnapshot(ctx, cl, craftSnapshot(header, []byte(tt.body)))
		wantErr(t, tt.name, err, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID)
		t.Logf("%s: %v", tt.name, err)
		now := modelsOf(t, cl)
		if !sameModels(now.GetModels(), before.GetModels()) || now.GetMeta().GetIndex() != before.GetMeta().GetIndex() {
			t.Fatalf("%s changed the state: index %d -> %d", tt.name, before.GetMeta().GetIndex(), now.GetMeta().GetIndex())
		}
	}
	if !leader.Server().IsLeader() {
		t.Fatal("the leader lost its leadership")
	}
	mustCreateModel(t, cl, "after")
	// The genuine file still restores.
	if _, err := restoreSnapshot(ctx, cl, file); err != nil {
		t.Fatalf("restore of the genuine file: %v", err)
	}
	if got := modelNames(t, cl); fmt.Sprint(got) != "[keep]" {
		t.Fatalf("after restore: models %v, want [keep]", got)
	}
}

// Another cluster's state under this cluster's header is refused: the
// identity is checked inside the decoded state. With force_foreign_cluster
// it is restored, this cluster keeps its identity, and the audit log
// records who did it and that it was forced.
func TestRestoreForeignBody(t *testing.T) {
	ours := cluster.Make(t, 1, cluster.Options{})
	cl := clientsWith(t, ours, ours.Nodes()[0], ours.Token(), false)
	ctx := testCtx(t, 60*time.Second)
	mustCreateModel(t, cl, "ours")
	ourFile, err := saveSnapshot(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	ourID := clusterID(t, ctx, cl)

	other := cluster.Make(t, 1, cluster.Options{})
	otherCl := clientsWith(t, other, other.Nodes()[0], other.Token(), false)
	mustCreateModel(t, otherCl, "foreign")
	theirFile, err := saveSnapshot(ctx, otherCl)
	if err != nil {
		t.Fatal(err)
	}
	otherID := clusterID(t, ctx, otherCl)
	other.Shutdown()

	ourHeader, _ := snapshotParts(t, ourFile)
	_, theirBody := snapshotParts(t, theirFile)
	crafted := craftSnapshot(ourHeader, theirBody)
	before := modelsOf(t, cl)
	for name, file := range map[string][]byte{"their file": theirFile, "their state under our header": crafted} {
		_, err := restoreSnapshot(ctx, cl, file)
		wantErr(t, name, err, connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_WRONG_CLUSTER)
		t.Logf("%s: %v", name, err)
		if now := modelsOf(t, cl); !sameModels(now.GetModels(), before.GetModels()) {
			t.Fatalf("%s changed the state: %v", name, now.GetModels())
		}
	}

	res, err := restoreSnapshotForce(ctx, cl, crafted, true)
	if err != nil {
		t.Fatalf("forced restore: %v", err)
	}
	// Their tokens replaced ours, so only theirs works now.
	theirCl := clientsWith(t, ours, ours.Nodes()[0], other.Token(), false)
	if _, err := cl.Models.ListModels(ctx, connect.NewRequest(&droverv1.ListModelsRequest{})); err == nil {
		t.Error("our token still works after their tokens were restored")
	}
	if got := modelNames(t, theirCl); fmt.Sprint(got) != "[foreign]" {
		t.Errorf("after the forced restore: models %v, want [foreign]", got)
	}
	if id := clusterID(t, ctx, theirCl); id != ourID || id == otherID {
		t.Errorf("after the forced restore the cluster is %q, want ours %q (theirs was %q)", id, ourID, otherID)
	}
	evs, err := theirCl.Audit.ListEvents(ctx, connect.NewRequest(&droverv1.ListAuditEventsRequest{AfterIndex: 0, Limit: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	var restore *droverv1.AuditEvent
	for _, ev := range evs.Msg.GetEvents() {
		if ev.GetAction() == state.ActionSnapshotRestore {
			restore = ev
		}
	}
	d := restore.GetDetails()
	if restore == nil || d["force_foreign_cluster"] != "true" || d["foreign"] != "true" || d["snapshot_cluster"] != otherID ||
		d["header_cluster"] != ourID || restore.GetActor() == "" || restore.GetActor() == state.Anonymous || restore.GetIndex() >= res.GetIndex() {
		t.Errorf("restore audit event %v (restored at index %d)", restore, res.GetIndex())
	}
}

func clusterID(t *testing.T, ctx context.Context, cl *cluster.Clients) string {
	t.Helper()
	st, err := cl.Cluster.GetStatus(ctx, connect.NewRequest(&droverv1.GetStatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if st.Msg.GetClusterId() == "" {
		t.Fatal("no cluster id")
	}
	return st.Msg.GetClusterId()
}

// A blocking query waiting past the index before a restore wakes when an
// older snapshot is restored and sees a higher index, never a lower one,
// on every server.
func TestRestoreRaisesIndex(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	leader := c.Leader()
	cl := clientsWith(t, c, leader, c.Token(), false)
	ctx := testCtx(t, 60*time.Second)
	mustCreateModel(t, cl, "a")
	file, err := saveSnapshot(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	mustCreateModel(t, cl, "b")
	mustCreateModel(t, cl, "c")
	seen := modelsOf(t, cl).GetMeta().GetIndex()

	type answer struct {
		res *droverv1.ListModelsResponse
		err error
	}
	woke := make(chan answer, 1)
	go func() {
		res, err := cl.Models.ListModels(ctx, connect.NewRequest(&droverv1.ListModelsRequest{
			Options: &droverv1.QueryOptions{MinIndex: seen, MaxWait: durationpb.New(time.Minute)},
		}))
		if err != nil {
			woke <- answer{err: err}
			return
		}
		woke <- answer{res: res.Msg}
	}()
	restored, err := restoreSnapshot(ctx, cl, file)
	if err != nil {
		t.Fatal(err)
	}
	if restored.GetIndex() <= seen {
		t.Errorf("restore answered index %d, not above %d", restored.GetIndex(), seen)
	}
	a := <-woke
	if a.err != nil {
		t.Fatal(a.err)
	}
	if idx := a.res.GetMeta().GetIndex(); idx <= seen || len(a.res.GetModels()) != 1 {
		t.Errorf("blocking query woke at index %d with %d models, want above %d with the restored model", idx, len(a.res.GetModels()), seen)
	}
	// Every server ends at the same index, above the one seen.
	eventually(t, 20*time.Second, "every server restored", func() error {
		idx := map[uint64][]string{}
		for _, n := range c.Nodes() {
			res, err := c.Client(n, true).Models.ListModels(ctx, connect.NewRequest(&droverv1.ListModelsRequest{}))
			if err != nil {
				return err
			}
			if len(res.Msg.GetModels()) != 1 {
				return fmt.Errorf("%s has models %v", n.Name, res.Msg.GetModels())
			}
			if i := res.Msg.GetMeta().GetIndex(); i <= seen {
				return fmt.Errorf("%s is at index %d, not above %d", n.Name, i, seen)
			} else {
				idx[i] = append(idx[i], n.Name)
			}
		}
		if len(idx) != 1 {
			return fmt.Errorf("servers at different indexes: %v", idx)
		}
		return nil
	})
}
