package fsm_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/droverhq/drover/controlplane/fsm"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	msg := &droverv1.CreateModelCommand{Meta: meta("alice"), Request: &droverv1.CreateModelRequest{Name: "resnet"}}
	for _, ignorable := range []bool{false, true} {
		encode := fsm.Encode
		if ignorable {
			encode = fsm.EncodeIgnorable
		}
		b, err := encode(droverv1.CommandType_COMMAND_TYPE_CREATE_MODEL, msg)
		if err != nil {
			t.Fatal(err)
		}
		wantType := byte(3)
		if ignorable {
			wantType |= 0x80
		}
		if b[0] != fsm.EnvelopeVersion || b[1] != wantType {
			t.Errorf("header bytes % x", b[:2])
		}
		env, err := fsm.Decode(b)
		if err != nil || env.Type != droverv1.CommandType_COMMAND_TYPE_CREATE_MODEL || env.Ignorable != ignorable || !env.Known() {
			t.Fatalf("Decode = %+v, %v", env, err)
		}
		got, err := env.Message()
		if err != nil || !proto.Equal(got, msg) {
			t.Errorf("Message = %v, %v", got, err)
		}
		if m := env.Meta(); !proto.Equal(m, msg.Meta) {
			t.Errorf("Meta = %v", m)
		}
	}
}

func TestEncodeRefuses(t *testing.T) {
	tests := []struct {
		name string
		t    droverv1.CommandType
		msg  proto.Message
	}{
		{"unspecified", droverv1.CommandType_COMMAND_TYPE_UNSPECIFIED, &droverv1.CreateModelCommand{}},
		{"too large", 128, &droverv1.CreateModelCommand{}},
		{"negative", -1, &droverv1.CreateModelCommand{}},
		{"nil", droverv1.CommandType_COMMAND_TYPE_CREATE_MODEL, nil},
		{"wrong payload", droverv1.CommandType_COMMAND_TYPE_CREATE_MODEL, &droverv1.DeleteModelCommand{}},
	}
	for _, tt := range tests {
		if _, err := fsm.Encode(tt.t, tt.msg); !errors.Is(err, fsm.ErrMalformed) {
			t.Errorf("%s: Encode = %v, want ErrMalformed", tt.name, err)
		}
	}
	// A type this server does not know can be encoded (for tests and for
	// relaying), with any payload.
	if _, err := fsm.EncodeIgnorable(100, &droverv1.DeleteModelCommand{}); err != nil {
		t.Errorf("EncodeIgnorable(100) = %v", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		data []byte
		want error
	}{
		{nil, fsm.ErrMalformed},
		{[]byte{1}, fsm.ErrMalformed},
		{[]byte{2, 3}, fsm.ErrEnvelopeVersion},
		{[]byte{0, 3}, fsm.ErrEnvelopeVersion},
		{[]byte{1, 0}, fsm.ErrMalformed},
		{[]byte{1, 0x80}, fsm.ErrMalformed},
	}
	for _, tt := range tests {
		if _, err := fsm.Decode(tt.data); !errors.Is(err, tt.want) {
			t.Errorf("Decode(% x) = %v, want %v", tt.data, err, tt.want)
		}
	}
	env, err := fsm.Decode([]byte{1, 100, 0xff})
	if err != nil || env.Known() {
		t.Fatalf("Decode(unknown type) = %+v, %v", env, err)
	}
	if _, err := env.Message(); !errors.Is(err, fsm.ErrUnknownCommand) {
		t.Errorf("Message of unknown type = %v", err)
	}
	env, _ = fsm.Decode([]byte{1, 3, 0xff})
	if _, err := env.Message(); !errors.Is(err, fsm.ErrMalformed) {
		t.Errorf("Message of garbled payload = %v", err)
	}
}

// FuzzDecode checks that no input makes the decoder panic, and that what
// decodes re-encodes to a payload that decodes to the same message.
func FuzzDecode(f *testing.F) {
	seeds := []struct {
		t   droverv1.CommandType
		msg proto.Message
	}{
		{droverv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, &droverv1.InitClusterCommand{Meta: meta("a"), ClusterId: "c"}},
		{droverv1.CommandType_COMMAND_TYPE_BOOTSTRAP_ACL, &droverv1.BootstrapACLCommand{Token: &droverv1.ACLToken{AccessorId: "x"}}},
		{droverv1.CommandType_COMMAND_TYPE_CREATE_MODEL, &droverv1.CreateModelCommand{Request: &droverv1.CreateModelRequest{Name: "m", Tags: map[string]string{"a": "b"}}}},
		{droverv1.CommandType_COMMAND_TYPE_DELETE_MODEL, &droverv1.DeleteModelCommand{Name: "m"}},
		{droverv1.CommandType_COMMAND_TYPE_CREATE_VERSION, &droverv1.CreateVersionCommand{Request: &droverv1.CreateVersionRequest{Model: "m", Metrics: map[string]float64{"x": 1}}}},
		{droverv1.CommandType_COMMAND_TYPE_SET_ALIAS, &droverv1.SetAliasCommand{Model: "m", Alias: "prod", Version: 1}},
		{droverv1.CommandType_COMMAND_TYPE_DELETE_ALIAS, &droverv1.DeleteAliasCommand{Model: "m", Alias: "prod"}},
		{droverv1.CommandType_COMMAND_TYPE_CREATE_JOIN_TOKEN, &droverv1.CreateJoinTokenCommand{Token: &droverv1.JoinToken{Id: "t", SecretSha256: make([]byte, 32), Labels: map[string]string{"a": "b"}}}},
		{droverv1.CommandType_COMMAND_TYPE_REVOKE_JOIN_TOKEN, &droverv1.RevokeJoinTokenCommand{Id: "t"}},
		{droverv1.CommandType_COMMAND_TYPE_ENROLL_NODE, &droverv1.EnrollNodeCommand{TokenId: "t", TokenSecretSha256: make([]byte, 32), Node: &droverv1.Node{Id: "n", Name: "n"}}},
		{droverv1.CommandType_COMMAND_TYPE_REGISTER_NODE, &droverv1.RegisterNodeCommand{NodeId: "n", Inventory: &droverv1.NodeInventory{Gpus: []*droverv1.GPUInfo{{Name: "T4"}}}}},
		{droverv1.CommandType_COMMAND_TYPE_SET_NODE_STATUS, &droverv1.SetNodeStatusCommand{Updates: []*droverv1.NodeStatusUpdate{{NodeId: "n", Status: droverv1.NodeStatus_NODE_STATUS_DOWN}}}},
		{droverv1.CommandType_COMMAND_TYPE_SET_NODE_DRAIN, &droverv1.SetNodeDrainCommand{NodeId: "n", Draining: true}},
		{droverv1.CommandType_COMMAND_TYPE_SET_NODE_LABELS, &droverv1.SetNodeLabelsCommand{NodeId: "n", Set: map[string]string{"a": "b"}, Remove: []string{"c"}}},
		{droverv1.CommandType_COMMAND_TYPE_REVOKE_NODE, &droverv1.RevokeNodeCommand{NodeId: "n"}},
	}
	for _, s := range seeds {
		b, err := fsm.Encode(s.t, s.msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0xe4, 0x0a, 0x02, 0x12, 0x00})
	f.Add([]byte{2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		env, err := fsm.Decode(b)
		if err != nil {
			return
		}
		_ = env.Meta()
		msg, err := env.Message()
		if !bytes.Equal(b, orig) {
			t.Fatal("decoding changed its input")
		}
		if err != nil {
			return
		}
		re, err := fsm.Encode(env.Type, msg)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		env2, err := fsm.Decode(re)
		if err != nil {
			t.Fatalf("decode re-encoded: %v", err)
		}
		msg2, err := env2.Message()
		if err != nil || !proto.Equal(msg, msg2) {
			t.Fatalf("round trip: %v, %v != %v", err, msg2, msg)
		}
	})
}
