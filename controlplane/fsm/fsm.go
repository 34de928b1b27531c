// Package fsm is the control plane's Raft state machine: it decodes the
// command envelopes of committed log entries and applies them to a
// state.Store.
package fsm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
)

// Audit actions the FSM records itself, for log entries that never reach
// one of the store's write methods.
const (
	// ActionCommandInvalid: the entry is not a command this server can
	// decode (a bug in the server that proposed it); it is refused.
	ActionCommandInvalid = "command.invalid"
	// ActionCommandSkip: the entry is an ignorable command of a type this
	// server does not know; it is skipped.
	ActionCommandSkip = "command.skip"
)

// ApplyResult is what Apply returns for a command entry, and so what
// raft.ApplyFuture.Response() yields on the server that proposed it.
//
// Value holds a copy of what the command wrote, by command type:
//
//	INIT_CLUSTER    *droverv1.ClusterMeta
//	BOOTSTRAP_ACL   *droverv1.ACLToken
//	CREATE_MODEL    *droverv1.Model
//	CREATE_VERSION  *droverv1.ModelVersion
//	SET_ALIAS       *droverv1.SetAliasResponse (model and previous version; meta unset)
//	CREATE_JOIN_TOKEN, REVOKE_JOIN_TOKEN
//	                *droverv1.JoinToken
//	ENROLL_NODE, REGISTER_NODE, SET_NODE_DRAIN, SET_NODE_LABELS, REVOKE_NODE,
//	SET_NODE_PULL, SET_NODE_CONDITIONS, UNCORDON_NODE
//	                *droverv1.Node
//	APPLY_ACL_POLICY
//	                *droverv1.ApplyACLPolicyResponse (policy and whether it
//	                replaced one; meta unset)
//	CREATE_ACL_TOKEN, ROTATE_ACL_TOKEN
//	                *droverv1.ACLToken
//	REVOKE_ACL_TOKEN
//	                *droverv1.ACLToken (the token as it was when revoked)
//	others          nil (SET_NODE_STATUS reports what it did in its audit
//	                event's details, RECORD_DENIALS writes only audit
//	                events)
//
// Err is the refusal, wrapping a state sentinel error (map it with
// state.Reason), or ErrMalformed for an entry that does not decode. A
// refused command still occupies its index and its audit event.
type ApplyResult struct {
	Index uint64
	Value proto.Message
	Err   error
}

// FSM implements raft.FSM and raft.BatchingFSM over a state.Store.
//
// Concurrency contract, as hashicorp/raft calls it: Apply, ApplyBatch and
// Snapshot are called from one goroutine, never concurrently with each
// other; Restore is not called concurrently with any of them. The
// raft.FSMSnapshot that Snapshot returns is persisted from another
// goroutine while Apply keeps running, which is safe because it holds an
// immutable state.Snapshot. The FSM itself has no mutable fields; readers
// use the store directly.
type FSM struct {
	store  *state.Store
	logger *slog.Logger
}

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
	_ raft.FSMSnapshot = (*fsmSnapshot)(nil)
)

// New returns an FSM that applies commands to store. A nil logger
// discards.
func New(store *state.Store, logger *slog.Logger) *FSM {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &FSM{store: store, logger: logger}
}

// Apply applies one committed log entry. Entries other than
// raft.LogCommand are ignored (nil result). For commands it returns an
// *ApplyResult and always records an audit event, refusals included.
//
// Apply panics on a command it cannot apply safely: an unknown command
// type without the ignorable flag, or an unknown envelope version. Both
// mean the log was written by a newer server; skipping the entry would
// silently diverge this server's state from the others', so it stops
// instead, typically while replaying the log at start-up, and the
// operator upgrades it.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	return f.apply(l.Index, l.Data)
}

// ApplyBatch applies entries in order, exactly as successive Apply calls
// would, and returns their results at the same positions.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	for i, l := range logs {
		out[i] = f.Apply(l)
	}
	return out
}

func (f *FSM) apply(idx uint64, data []byte) *ApplyResult {
	env, err := Decode(data)
	if errors.Is(err, ErrEnvelopeVersion) {
		f.fatal(idx, fmt.Sprintf("uses command envelope version %d; this server reads only version %d", data[0], EnvelopeVersion))
	}
	if err != nil {
		return f.refuse(idx, nil, ActionCommandInvalid, err)
	}
	msg, err := env.Message()
	if errors.Is(err, ErrUnknownCommand) {
		if !env.Ignorable {
			f.fatal(idx, fmt.Sprintf("holds command type %d, which this server does not know", env.Type))
		}
		f.logger.Warn("skipping ignorable command of unknown type; upgrade this server to apply it",
			"index", idx, "type", int32(env.Type))
		meta := env.Meta()
		f.audit(&droverv1.AuditEvent{
			Index:     idx,
			Actor:     meta.GetActor(),
			ActorName: meta.GetActorName(),
			Time:      meta.GetTime(),
			Action:    ActionCommandSkip,
			Result:    fmt.Sprintf("skipped: command type %d is unknown to this server and marked ignorable", env.Type),
			Details:   map[string]string{"type": strconv.Itoa(int(env.Type))},
		})
		return &ApplyResult{Index: idx}
	}
	if err != nil {
		return f.refuse(idx, env.Meta(), actionOf(env.Type), err)
	}

	c, ok := commands[env.Type]
	if !ok {
		// Message decoded it, so commands has the type: unreachable
		// unless this package is broken, and then the same way on
		// every server.
		f.fatal(idx, fmt.Sprintf("holds command type %v, which this server decodes but cannot apply", env.Type))
	}
	res := &ApplyResult{Index: idx}
	res.Value, res.Err = c.apply(f.store, idx, msg)
	return res
}

// refuse records a refused entry that never reached the store's write
// methods.
func (f *FSM) refuse(idx uint64, meta *droverv1.CommandMeta, action string, err error) *ApplyResult {
	f.logger.Error("refusing undecodable command", "index", idx, "err", err)
	f.audit(&droverv1.AuditEvent{
		Index:     idx,
		Actor:     meta.GetActor(),
		ActorName: meta.GetActorName(),
		Time:      meta.GetTime(),
		Action:    action,
		Result:    err.Error(),
	})
	return &ApplyResult{Index: idx, Err: err}
}

func (f *FSM) audit(ev *droverv1.AuditEvent) {
	if ev.Actor == "" {
		ev.Actor = state.Anonymous
	}
	if err := f.store.AppendAudit(ev); err != nil {
		// Only possible if Raft applied an index twice or out of order.
		f.logger.Error("cannot record audit event", "index", ev.GetIndex(), "err", err)
	}
}

// fatal stops the server on a log entry it must not skip.
func (f *FSM) fatal(idx uint64, what string) {
	msg := fmt.Sprintf("fsm: Raft log entry %d %s: this server binary is older than the cluster; upgrade it to the version the other servers run and start it again", idx, what)
	f.logger.Error(msg)
	panic(msg)
}

// Snapshot captures the state for Raft. It only copies pointers under the
// store's read lock; encoding happens in Persist.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{snap: f.store.Snapshot()}, nil
}

// Restore replaces the whole state with a snapshot. If the snapshot does
// not decode completely, the state is left as it was and the error is
// returned to Raft; Restore never panics. With a snapshot store from
// NewSnapshotStore, the restored state's index is the snapshot's Raft
// index (see state.Store.RestoreAt).
//
// Raft itself panics when the FSM refuses an operator's restore
// (raft.Raft.Restore), so the server checks an operator's snapshot
// completely before handing it to Raft. At start-up a refused snapshot
// makes Raft try the next older one.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	raftIndex := raftIndexOf(rc)
	if err := f.store.RestoreAt(rc, raftIndex); err != nil {
		return fmt.Errorf("fsm restore: %w", err)
	}
	f.logger.Info("restored state from snapshot", "index", f.store.Index(), "raft_index", raftIndex)
	return nil
}

// fsmSnapshot writes a state.Snapshot to a Raft snapshot sink.
type fsmSnapshot struct {
	snap *state.Snapshot
}

// Persist writes the snapshot and closes the sink, or cancels it on error
// so Raft discards the partial snapshot.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.snap.WriteTo(sink); err != nil {
		return errors.Join(fmt.Errorf("persist snapshot: %w", err), sink.Cancel())
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return nil
}

// Release does nothing: the snapshot holds no resources beyond memory.
func (s *fsmSnapshot) Release() {}
