// Package state is the control plane's replicated state in memory (cluster
// identity, models, versions, aliases, ACL tokens and policies, join
// tokens, nodes, manifest signing keys, deployments, their rollouts and
// the nodes' assignments,
// audit log), written only by the Raft FSM and read by
// everything else through blocking queries.
package state

import (
	"context"
	"errors"
	"fmt"
	"sync"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Options tunes a Store. The zero value is not valid; start from
// [DefaultOptions].
type Options struct {
	// AuditRetention is how many of the most recent audit events the store
	// keeps (and writes into snapshots); older ones are dropped so the
	// replicated state does not grow without bound. All servers of a
	// cluster should use the same value, otherwise their audit logs (and
	// snapshots) differ in length, though never in content.
	AuditRetention int
}

// DefaultOptions returns the options every server uses unless told
// otherwise.
func DefaultOptions() Options {
	return Options{AuditRetention: 10_000}
}

// Validate reports whether the options can be used.
func (o Options) Validate() error {
	if o.AuditRetention < 1 {
		return fmt.Errorf("state options: AuditRetention is %d, it must be at least 1: %w", o.AuditRetention, ErrInvalid)
	}
	return nil
}

// Store is the replicated state of one server.
//
// Concurrency: writes (the methods that take a Raft index, and Restore) are
// made by the FSM from one goroutine at a time; reads may run concurrently
// with them and with each other from any goroutine. Every value a read
// returns is a deep copy the caller owns. Stored messages are never
// modified in place: a write stores a modified copy, which is what lets
// [Store.Snapshot] share them without copying.
//
// Each write method applies one command: it changes the state (or refuses
// to, returning an error that wraps one of the sentinel errors), appends
// the command's audit event (or events, for [Store.RecordDenials]),
// advances [Store.Index] to the command's Raft index and wakes blocked
// readers, all in one critical section. Refused commands advance the index
// too, because their audit event is new state. A reader therefore never
// sees an index whose audit event is missing.
//
// The idx given to a write must be greater than Index(); Raft guarantees
// this for the FSM.
type Store struct {
	opts Options // read-only after New

	mu      sync.RWMutex  // guards the fields below
	index   uint64        // Raft index of the last command applied or snapshot restored
	changed chan struct{} // closed and replaced whenever index or state changes
	t       tables
}

// tables is the replicated data proper; Restore swaps it as a whole.
type tables struct {
	cluster  *droverv1.ClusterMeta
	models   map[string]*droverv1.Model
	versions map[string][]*droverv1.ModelVersion // by model, ascending version
	// versionMarks holds, by name, the highest version number a deleted
	// model gave, until a model created again under the name passes it
	// with a version of its own (its latest_version then carries it on).
	versionMarks map[string]uint64
	tokens       map[string]*droverv1.ACLToken   // by accessor id
	secrets      map[[32]byte]*droverv1.ACLToken // by SHA-256 of the secret
	policies     map[string]*droverv1.ACLPolicy  // by name; built-in ones are not stored
	// aclIndex is the index of the last change to tokens or policies (see
	// Store.ACLIndex); it is not stored in snapshots: a restore sets it to
	// the restored index.
	aclIndex uint64
	// aclBootstrapped is not stored in snapshots: it is true exactly when
	// a token exists, because the bootstrap token is the first token and
	// the last management token cannot be revoked.
	aclBootstrapped bool
	joinTokens      map[string]*droverv1.JoinToken // by id
	nodes           map[string]*droverv1.Node      // by id
	// nodeNames indexes the nodes that have not left by name (name → id);
	// it is not stored in snapshots but rebuilt from the nodes.
	nodeNames map[string]string
	// nodeKeys indexes the nodes that have not left by the hash of their
	// enrollment public key (see EnrollNode); it is rebuilt from the nodes
	// like nodeNames.
	nodeKeys map[[32]byte]string
	audit    []*droverv1.AuditEvent // ascending index
	// signingKeys holds the operators' manifest signing keys by key id,
	// revoked ones included.
	signingKeys map[string]*droverv1.SigningKey
	deployments map[string]*droverv1.Deployment // by name
	// rollouts holds each deployment's most recent rollouts (at most
	// MaxRolloutHistory), ascending id, by deployment name.
	rollouts map[string][]*droverv1.Rollout
	// assignments holds what each node is told to run: node id →
	// deployment name → assignment.
	assignments map[string]map[string]*droverv1.Assignment
	// assignIndex is, by node id, the index of the last command that
	// changed the node's assignments, and assignFloor the index of the
	// last restore, which may have changed anyone's; neither is stored in
	// snapshots (see Store.NodeAssignments).
	assignIndex map[string]uint64
	assignFloor uint64
}

func newTables() tables {
	return tables{
		models:       make(map[string]*droverv1.Model),
		versions:     make(map[string][]*droverv1.ModelVersion),
		versionMarks: make(map[string]uint64),
		tokens:       make(map[string]*droverv1.ACLToken),
		secrets:      make(map[[32]byte]*droverv1.ACLToken),
		policies:     make(map[string]*droverv1.ACLPolicy),
		joinTokens:   make(map[string]*droverv1.JoinToken),
		nodes:        make(map[string]*droverv1.Node),
		nodeNames:    make(map[string]string),
		nodeKeys:     make(map[[32]byte]string),
		signingKeys:  make(map[string]*droverv1.SigningKey),
		deployments:  make(map[string]*droverv1.Deployment),
		rollouts:     make(map[string][]*droverv1.Rollout),
		assignments:  make(map[string]map[string]*droverv1.Assignment),
		assignIndex:  make(map[string]uint64),
	}
}

// New returns an empty store with [DefaultOptions].
func New() *Store {
	s, err := NewWithOptions(DefaultOptions())
	if err != nil {
		panic("state: default options are invalid: " + err.Error())
	}
	return s
}

// NewWithOptions returns an empty store.
func NewWithOptions(opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("new store: %w", err)
	}
	return &Store{
		opts:    opts,
		changed: make(chan struct{}),
		t:       newTables(),
	}, nil
}

// Index returns the Raft index of the last command applied to the state
// (0 for a new store). Pass it to WaitForIndex to wait for the next change.
func (s *Store) Index() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.index
}

// WaitForIndex blocks until the state index is greater than minIndex, then
// returns it. It is the core of blocking queries: a reader answers, and
// asks again with the index it got.
//
// When ctx's deadline passes first, WaitForIndex returns the current index
// and a nil error: a blocking query that times out simply answers with the
// current data. When ctx is canceled (the caller went away), it returns the
// current index and ctx.Err(). A restore never lowers the index (see
// [Store.RestoreAt]), so a reader waiting past the index it last saw wakes
// on a restore like on any other change.
//
// Waiting costs no goroutine and no polling: waiters block on a channel
// that each change closes.
func (s *Store) WaitForIndex(ctx context.Context, minIndex uint64) (uint64, error) {
	s.mu.RLock()
	idx, ch := s.index, s.changed
	s.mu.RUnlock()
	for idx <= minIndex {
		select {
		case <-ch:
		case <-ctx.Done():
			idx = s.Index()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return idx, nil
			}
			return idx, fmt.Errorf("wait for index %d: %w", minIndex, ctx.Err())
		}
		s.mu.RLock()
		idx, ch = s.index, s.changed
		s.mu.RUnlock()
	}
	return idx, nil
}

// notifyLocked wakes every blocked reader. s.mu must be held for writing.
func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// write runs one command's change under the write lock, then records its
// audit event (result "ok" or the refusal), advances the index and wakes
// readers. fn returns the audit target and details and the refusal, if any.
func (s *Store) write(idx uint64, meta *droverv1.CommandMeta, action string, fn func() (target string, details map[string]string, err error)) error {
	return s.writeEvents(idx, func() ([]*droverv1.AuditEvent, error) {
		target, details, err := fn()
		return []*droverv1.AuditEvent{newEvent(idx, meta, action, target, details, err)}, err
	})
}

// writeEvents is write for a command that records several audit events
// (see [Store.RecordDenials]): fn applies the change and returns the
// events, all at idx, and the refusal, if any.
func (s *Store) writeEvents(idx uint64, fn func() ([]*droverv1.AuditEvent, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	evs, err := fn()
	for _, ev := range evs {
		s.appendAuditLocked(ev)
	}
	if idx > s.index {
		s.index = idx
	}
	s.notifyLocked()
	return err
}

// clone deep-copies a stored message for a reader or a writer that needs a
// modified copy.
func clone[M proto.Message](m M) M {
	return proto.Clone(m).(M)
}

// shallowCopy copies the top level of a stored message for a writer that
// changes a few of its fields: sub-messages, maps and lists may be shared
// with m. That is safe only because stored messages are never modified in
// place, so the writer must replace a shared field (assign a new map,
// slice or message) rather than change it. It spares copying large parts
// that a write leaves alone, such as a node's inventory on a status change.
func shallowCopy[M proto.Message](m M) M {
	src := m.ProtoReflect()
	dst := src.New()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		dst.Set(fd, v)
		return true
	})
	if u := src.GetUnknown(); len(u) > 0 {
		dst.SetUnknown(u)
	}
	return dst.Interface().(M)
}
