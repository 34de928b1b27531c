package fsm

import (
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Every command type in the enum has one entry that decodes, applies and
// audits it. A type added to the enum without an entry fails here rather
// than on every server that meets it in the log.
func TestEveryCommandTypeHasAnEntry(t *testing.T) {
	values := droverv1.CommandType(0).Descriptor().Values()
	if values.Len() < 2 {
		t.Fatalf("CommandType has %d values", values.Len())
	}
	for i := range values.Len() {
		v := values.Get(i)
		ct := droverv1.CommandType(v.Number())
		if ct == droverv1.CommandType_COMMAND_TYPE_UNSPECIFIED {
			if _, ok := commands[ct]; ok {
				t.Errorf("%s has an entry; it is never a valid command", v.Name())
			}
			continue
		}
		c, ok := commands[ct]
		if !ok {
			t.Errorf("%s has no entry in commands: add its payload, apply function and audit action", v.Name())
			continue
		}
		if c.action == "" || c.action == ActionCommandInvalid {
			t.Errorf("%s: audit action %q, want the store's action for it", v.Name(), c.action)
		}
		// By convention COMMAND_TYPE_SET_ALIAS carries a SetAliasCommand.
		msg := c.payload()
		want := strings.ReplaceAll(strings.TrimPrefix(string(v.Name()), "COMMAND_TYPE_"), "_", "") + "COMMAND"
		if got := strings.ToUpper(string(msg.ProtoReflect().Descriptor().Name())); got != want {
			t.Errorf("%s: payload is %s, want the message named like the type", v.Name(), msg.ProtoReflect().Descriptor().FullName())
		}
		// The envelope and the FSM agree: an encoded empty payload
		// decodes to the entry's message and applies without the FSM
		// stopping (the store may refuse it).
		b, err := Encode(ct, msg)
		if err != nil {
			t.Errorf("%s: encode: %v", v.Name(), err)
			continue
		}
		f := New(state.New(), nil)
		res, ok := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: b}).(*ApplyResult)
		if !ok || res.Index != 1 {
			t.Errorf("%s: Apply returned %#v", v.Name(), res)
		}
	}
	for ct := range commands {
		if values.ByNumber(ct.Number()) == nil {
			t.Errorf("commands has an entry for %d, which is not in the CommandType enum", ct)
		}
	}
}
