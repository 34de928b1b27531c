package fsm

// The command envelope is the byte format of every Raft log entry of type
// raft.LogCommand:
//
//	byte 0     envelope version, currently 1 (EnvelopeVersion)
//	byte 1     command type (droverv1.CommandType, 1..127) in the low seven
//	           bits; the high bit (0x80) marks the command "ignorable"
//	bytes 2..  the command's protobuf payload (e.g. CreateModelCommand)
//
// Command types are appended to the CommandType enum and never renumbered,
// so a server can tell a command it does not know from one it does. An
// ignorable command is one an older server may skip without its state
// diverging in a way that matters (say, a hint or a statistic); every other
// unknown command stops the server, because applying the rest of the log
// without it would corrupt the state. A new kind of envelope (one that
// moves or reinterprets these bytes) needs a new envelope version.
//
// By convention every command payload carries its droverv1.CommandMeta as
// field 1, so that even a command a server cannot decode can be attributed
// in the audit log.

import (
	"errors"
	"fmt"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// EnvelopeVersion is the envelope version this server writes and reads.
const EnvelopeVersion = 1

// ignorableFlag is the bit of the type byte that marks an ignorable
// command.
const ignorableFlag = 0x80

// Sentinel errors of the envelope codec.
var (
	// ErrMalformed: the bytes are not a command envelope, or the payload
	// does not decode as its type's message.
	ErrMalformed = errors.New("malformed command")
	// ErrEnvelopeVersion: the envelope was written by a server that uses a
	// newer (or unknown) envelope version.
	ErrEnvelopeVersion = errors.New("unsupported command envelope version")
	// ErrUnknownCommand: the command type is not one this server knows.
	ErrUnknownCommand = errors.New("unknown command type")
)

// Envelope is a decoded command envelope.
type Envelope struct {
	// Type is the command type, without the ignorable flag.
	Type droverv1.CommandType
	// Ignorable reports whether a server that does not know Type may skip
	// the command.
	Ignorable bool
	// Payload is the protobuf payload. It aliases the bytes given to
	// Decode.
	Payload []byte
}

// Encode builds the envelope of a command of type t. When t is a type this
// server knows, msg must be its payload message.
func Encode(t droverv1.CommandType, msg proto.Message) ([]byte, error) {
	return encode(t, msg, false)
}

// EncodeIgnorable is Encode with the ignorable flag set: servers that do
// not know t skip the command instead of stopping.
func EncodeIgnorable(t droverv1.CommandType, msg proto.Message) ([]byte, error) {
	return encode(t, msg, true)
}

func encode(t droverv1.CommandType, msg proto.Message, ignorable bool) ([]byte, error) {
	if t <= 0 || t >= ignorableFlag {
		return nil, fmt.Errorf("encode command: type %d does not fit the envelope (1-127): %w", t, ErrMalformed)
	}
	if msg == nil {
		return nil, fmt.Errorf("encode command %v: nil payload: %w", t, ErrMalformed)
	}
	if empty, ok := newPayload(t); ok {
		if want, got := empty.ProtoReflect().Descriptor().FullName(), msg.ProtoReflect().Descriptor().FullName(); want != got {
			return nil, fmt.Errorf("encode command %v: payload is %s, want %s: %w", t, got, want, ErrMalformed)
		}
	}
	typeByte := byte(t)
	if ignorable {
		typeByte |= ignorableFlag
	}
	b, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend([]byte{EnvelopeVersion, typeByte}, msg)
	if err != nil {
		return nil, fmt.Errorf("encode command %v: %w", t, err)
	}
	return b, nil
}

// Decode splits an envelope into its parts without decoding the payload
// (see [Envelope.Message]). It fails with ErrEnvelopeVersion for another
// envelope version and ErrMalformed for bytes that are no envelope.
func Decode(b []byte) (Envelope, error) {
	if len(b) < 2 {
		return Envelope{}, fmt.Errorf("decode command: %d bytes is too short for an envelope: %w", len(b), ErrMalformed)
	}
	if b[0] != EnvelopeVersion {
		return Envelope{}, fmt.Errorf("decode command: envelope version %d, this server reads version %d: %w", b[0], EnvelopeVersion, ErrEnvelopeVersion)
	}
	t := droverv1.CommandType(b[1] &^ ignorableFlag)
	if t == droverv1.CommandType_COMMAND_TYPE_UNSPECIFIED {
		return Envelope{}, fmt.Errorf("decode command: command type 0 is never valid: %w", ErrMalformed)
	}
	return Envelope{Type: t, Ignorable: b[1]&ignorableFlag != 0, Payload: b[2:]}, nil
}

// Known reports whether this server knows the envelope's command type.
func (e Envelope) Known() bool {
	_, ok := newPayload(e.Type)
	return ok
}

// Message decodes the payload into its type's message. It fails with
// ErrUnknownCommand for a type this server does not know and ErrMalformed
// for a payload that does not decode.
func (e Envelope) Message() (proto.Message, error) {
	m, ok := newPayload(e.Type)
	if !ok {
		return nil, fmt.Errorf("decode command: type %d: %w", e.Type, ErrUnknownCommand)
	}
	if err := proto.Unmarshal(e.Payload, m); err != nil {
		return nil, fmt.Errorf("decode command %v: %w: %w", e.Type, ErrMalformed, err)
	}
	return m, nil
}

// Meta returns the command's metadata (field 1 of every payload, by
// convention) even when the type is unknown, or nil when there is none or
// it does not decode.
func (e Envelope) Meta() *droverv1.CommandMeta {
	var meta *droverv1.CommandMeta
	for b := e.Payload; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				break
			}
			if meta == nil {
				meta = &droverv1.CommandMeta{}
			}
			// A repeated message field merges, as protobuf itself does.
			if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(v, meta); err != nil {
				return nil
			}
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			break
		}
		b = b[n:]
	}
	return meta
}
