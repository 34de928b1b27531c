package state_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// keyed is an enrollment request of node id whose CSR had key, named
// after the key: a retry sends the same name.
func keyed(id, key string) *droverv1.Node {
	sum := sha256.Sum256([]byte(key))
	return &droverv1.Node{Id: id, Name: key, PublicKeySha256: sum[:]}
}

// An enrollment retried with the same key and token (its answer lost)
// gets the node the first try made: no second node, no second use of the
// token, even when the first used the last use.
func TestEnrollRetryGetsSameNode(t *testing.T) {
	f := newFixture(t)
	tok := joinToken("tok")
	tok.MaxUses = 1
	f.joinToken(tok)
	first, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], keyed("n1", "key-a")))
	if err != nil {
		t.Fatal(err)
	}
	// The retry comes with another tentative id, as the server makes one
	// for every request.
	idx := f.next()
	again, err := f.s.EnrollNode(idx, meta("agent"), enrollCmd("tok", joinSecret[:], keyed("n2", "key-a")))
	if err != nil {
		t.Fatalf("retried enrollment: %v", err)
	}
	if !proto.Equal(first, again) {
		t.Errorf("retry got\n%v\nwant the first node\n%v", again, first)
	}
	if n := len(f.s.Nodes()); n != 1 {
		t.Errorf("%d nodes after a retry, want 1", n)
	}
	if got, _ := f.s.JoinToken("tok"); got.GetUses() != 1 {
		t.Errorf("token uses %d after a retry, want 1", got.GetUses())
	}
	ev := lastAudit(t, f.s)
	if ev.GetIndex() != idx || ev.GetResult() != state.ResultOK || ev.GetTarget() != "node/n1" || ev.GetDetails()["retry"] != "true" {
		t.Errorf("audit of the retry = %v", ev)
	}

	// Another key is another machine: the used-up token refuses it.
	if _, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], &droverv1.Node{Id: "n3", Name: "gpu-02"})); !errors.Is(err, state.ErrTokenUsedUp) {
		t.Errorf("another machine with the used-up token = %v, want ErrTokenUsedUp", err)
	}
	// Registered since: a retry still gets the node, as it is now.
	if _, err := f.s.RegisterNode(f.next(), meta("agent"), "n1", nil, "1.0", ""); err != nil {
		t.Fatal(err)
	}
	again, err = f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], keyed("n4", "key-a")))
	if err != nil || again.GetId() != "n1" || again.GetStatus() != ready {
		t.Errorf("retry after registration = %v, %v", again, err)
	}

	// A snapshot keeps what identifies a retry.
	var buf bytes.Buffer
	if _, err := f.s.Snapshot().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	restored := state.New()
	if err := restored.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	again, err = restored.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], keyed("n5", "key-a")))
	if err != nil || again.GetId() != "n1" {
		t.Errorf("retry after restore = %v, %v", again, err)
	}
}

// What is not a retry is refused: the key with a wrong secret, with
// another token, or of a revoked node; a revoked token refuses the retry.
// A node that left frees its key.
func TestEnrollRetryRefusals(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	f.joinToken(joinToken("other"))
	if _, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], keyed("n1", "key-a"))); err != nil {
		t.Fatal(err)
	}
	wrong := sha256.Sum256([]byte("wrong"))
	for _, tc := range []struct {
		name   string
		cmd    *droverv1.EnrollNodeCommand
		want   error
		reason droverv1.ErrorReason
	}{
		{"wrong secret", enrollCmd("tok", wrong[:], keyed("n2", "key-a")), state.ErrTokenInvalid, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID},
		{"another token", enrollCmd("other", joinSecret[:], keyed("n2", "key-a")), state.ErrAlreadyExists, droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS},
	} {
		_, err := f.s.EnrollNode(f.next(), meta("agent"), tc.cmd)
		if !errors.Is(err, tc.want) || state.Reason(err) != tc.reason {
			t.Errorf("%s: %v (reason %v), want %v", tc.name, err, state.Reason(err), tc.want)
		}
	}
	if n := len(f.s.Nodes()); n != 1 {
		t.Fatalf("%d nodes after refused enrollments, want 1", n)
	}
	short := keyed("n2", "key-b")
	short.PublicKeySha256 = short.PublicKeySha256[:8]
	if _, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], short)); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("a short key hash = %v, want ErrInvalid", err)
	}

	if _, err := f.s.RevokeNode(f.next(), meta("alice"), "n1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], keyed("n2", "key-a"))); !errors.Is(err, state.ErrNodeRevoked) {
		t.Errorf("retry of a revoked node = %v, want ErrNodeRevoked", err)
	}

	if _, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("other", joinSecret[:], keyed("m1", "key-m"))); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.RevokeJoinToken(f.next(), meta("alice"), "other"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("other", joinSecret[:], keyed("m2", "key-m"))); !errors.Is(err, state.ErrTokenRevoked) {
		t.Errorf("retry with a revoked token = %v, want ErrTokenRevoked", err)
	}

	// Left: the key may enroll again, as a new node.
	f.status(update("n1", left))
	n, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], keyed("n3", "key-a")))
	if err != nil || n.GetId() != "n3" {
		t.Errorf("key of a node that left = %v, %v; want a new node n3", n, err)
	}
}
