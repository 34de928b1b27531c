package state

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/droverhq/drover/controlplane/acl"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
)

// SnapshotFormat is the format version of the snapshot stream this server
// writes. It reads this format and every older one back to format 1.
//
// The stream is a sequence of length-delimited protobuf messages (a varint
// byte count, then the message, as encoding/protodelim writes them):
//
//  1. one SnapshotHeader (format, Raft index, cluster identity);
//  2. SnapshotRecords: each model followed by its versions in ascending
//     order, models sorted by name; then version marks sorted by model
//     name; then ACL policies sorted by name; then ACL tokens sorted by
//     accessor id; then join tokens sorted by id; then nodes sorted by id;
//     then signing keys sorted by key id; then deployments sorted by
//     name; then rollouts sorted by deployment name and id; then node
//     assignments sorted by node id and deployment name; then audit
//     events in ascending index order (events of one command
//     share its index, see [Store.RecordDenials]);
//  3. one empty SnapshotRecord (a single zero byte) marking the end, so
//     that a stream cut exactly between two records is still detected as
//     truncated.
//
// A record whose type this server does not know is an error rather than
// skipped: silently dropping part of the state is worse than refusing it.
// Adding a record type therefore needs a new format version.
//
// Format history: 1 has models, versions, tokens and audit events; 2 adds
// join tokens and nodes; 3 adds version marks; 4 adds ACL policies, and
// tokens other than the bootstrap token; 5 adds signing keys; 6 adds deployments and rollouts;
// 7 adds node assignments. A snapshot in format 1 or 2 has
// no version marks, so it restores to a state that has forgotten the
// version numbers of models deleted before it was taken. A snapshot older
// than format 4 holds at most the bootstrap token, which may lack a name
// and policies; it is restored as BootstrapACL stores such a token (see
// upgradeBootstrapToken), so that a server restoring it and one replaying
// the log agree.
const SnapshotFormat = 7

// minSnapshotFormat is the oldest format this server reads. A snapshot in
// an older format than SnapshotFormat simply has none of the records added
// since; it restores to a state without those objects.
const minSnapshotFormat = 1

// maxSnapshotRecord bounds one record when reading, so that a garbled
// length prefix cannot make the reader allocate without limit. Writes are
// held to maxRecordBytes, below it.
const maxSnapshotRecord = maxRecordBytes + 1<<20

// Snapshot is an immutable, consistent copy of a store's state at one
// index. It shares the stored messages with the store, which never
// modifies them in place, so taking one is cheap and it may be written out
// while the store keeps applying commands. Its methods are safe for
// concurrent use.
type Snapshot struct {
	index      uint64
	cluster    *droverv1.ClusterMeta
	models     []*droverv1.Model                   // sorted by name
	versions   map[string][]*droverv1.ModelVersion // by model, ascending
	marks      []*droverv1.ModelVersionMark        // sorted by model
	policies   []*droverv1.ACLPolicy               // sorted by name
	tokens     []*droverv1.ACLToken                // sorted by accessor id
	joinTokens []*droverv1.JoinToken               // sorted by id
	nodes      []*droverv1.Node                    // sorted by id
	keys       []*droverv1.SigningKey              // sorted by key id
	deploys    []*droverv1.Deployment              // sorted by name
	rollouts   []*droverv1.Rollout                 // sorted by deployment, id
	assigns    []*droverv1.NodeAssignment          // sorted by node, deployment
	audit      []*droverv1.AuditEvent              // ascending index
}

var _ io.WriterTo = (*Snapshot)(nil)

// Snapshot captures the current state. It holds the read lock only while
// copying pointers; sorting happens after.
func (s *Store) Snapshot() *Snapshot {
	s.mu.RLock()
	snap := &Snapshot{
		index:      s.index,
		cluster:    s.t.cluster,
		models:     slices.Collect(maps.Values(s.t.models)),
		versions:   make(map[string][]*droverv1.ModelVersion, len(s.t.versions)),
		policies:   slices.Collect(maps.Values(s.t.policies)),
		tokens:     slices.Collect(maps.Values(s.t.tokens)),
		joinTokens: slices.Collect(maps.Values(s.t.joinTokens)),
		nodes:      slices.Collect(maps.Values(s.t.nodes)),
		keys:       slices.Collect(maps.Values(s.t.signingKeys)),
		deploys:    slices.Collect(maps.Values(s.t.deployments)),
		// The full slice expression keeps the store's later appends out of
		// the snapshot's view.
		audit: s.t.audit[:len(s.t.audit):len(s.t.audit)],
	}
	for name, vs := range s.t.versions {
		snap.versions[name] = vs[:len(vs):len(vs)]
	}
	for _, hist := range s.t.rollouts {
		snap.rollouts = append(snap.rollouts, hist...)
	}
	for node, as := range s.t.assignments {
		for _, a := range as {
			snap.assigns = append(snap.assigns, &droverv1.NodeAssignment{NodeId: node, Assignment: a})
		}
	}
	for name, v := range s.t.versionMarks {
		snap.marks = append(snap.marks, &droverv1.ModelVersionMark{Model: name, Version: v})
	}
	s.mu.RUnlock()
	snap.sort()
	return snap
}

func (snap *Snapshot) sort() {
	slices.SortFunc(snap.models, func(a, b *droverv1.Model) int { return strings.Compare(a.GetName(), b.GetName()) })
	slices.SortFunc(snap.marks, func(a, b *droverv1.ModelVersionMark) int { return strings.Compare(a.GetModel(), b.GetModel()) })
	slices.SortFunc(snap.policies, func(a, b *droverv1.ACLPolicy) int { return strings.Compare(a.GetName(), b.GetName()) })
	slices.SortFunc(snap.tokens, func(a, b *droverv1.ACLToken) int { return strings.Compare(a.GetAccessorId(), b.GetAccessorId()) })
	slices.SortFunc(snap.joinTokens, func(a, b *droverv1.JoinToken) int { return strings.Compare(a.GetId(), b.GetId()) })
	slices.SortFunc(snap.nodes, func(a, b *droverv1.Node) int { return strings.Compare(a.GetId(), b.GetId()) })
	slices.SortFunc(snap.keys, func(a, b *droverv1.SigningKey) int { return strings.Compare(a.GetKeyId(), b.GetKeyId()) })
	slices.SortFunc(snap.deploys, func(a, b *droverv1.Deployment) int {
		return strings.Compare(a.GetSpec().GetName(), b.GetSpec().GetName())
	})
	slices.SortStableFunc(snap.rollouts, func(a, b *droverv1.Rollout) int {
		if c := strings.Compare(a.GetDeployment(), b.GetDeployment()); c != 0 {
			return c
		}
		return cmp.Compare(a.GetId(), b.GetId())
	})
	slices.SortFunc(snap.assigns, func(a, b *droverv1.NodeAssignment) int {
		if c := strings.Compare(a.GetNodeId(), b.GetNodeId()); c != 0 {
			return c
		}
		return strings.Compare(a.GetAssignment().GetDeployment(), b.GetAssignment().GetDeployment())
	})
}

// Index returns the Raft index of the last command the snapshot covers.
func (snap *Snapshot) Index() uint64 { return snap.index }

// Cluster returns the cluster identity the snapshot belongs to, or nil if
// the cluster was not initialized when it was taken.
func (snap *Snapshot) Cluster() *droverv1.ClusterMeta {
	if snap.cluster == nil {
		return nil
	}
	return clone(snap.cluster)
}

// WriteTo writes the snapshot as a stream in [SnapshotFormat] and returns
// the number of bytes written. The same snapshot always produces the same
// bytes.
func (snap *Snapshot) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	bw := bufio.NewWriter(cw)
	err := snap.encode(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return cw.n, fmt.Errorf("write snapshot: %w", err)
	}
	return cw.n, nil
}

func (snap *Snapshot) encode(w io.Writer) error {
	enc := protodelim.MarshalOptions{MarshalOptions: proto.MarshalOptions{Deterministic: true}}
	put := func(m proto.Message) error {
		_, err := enc.MarshalTo(w, m)
		return err
	}
	if err := put(&droverv1.SnapshotHeader{Format: SnapshotFormat, Index: snap.index, Cluster: snap.cluster}); err != nil {
		return err
	}
	for _, m := range snap.models {
		if err := put(&droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Model{Model: m}}); err != nil {
			return err
		}
		for _, v := range snap.versions[m.GetName()] {
			if err := put(&droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Version{Version: v}}); err != nil {
				return err
			}
		}
	}
	for _, mk := range snap.marks {
		if err := put(&droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_VersionMark{VersionMark: mk}}); err != nil {
			return err
		}
	}
	for _, p := range snap.policies {
		if err := put(&droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Policy{Policy: p}}); err != nil {
			return err
		}
	}
	for _, t := range snap.tokens {
		if err := put(&droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Token{Token: t}}); err != nil {
			return err
		}
	}
	for _, t := range snap.joinTokens {
		if err := put(&droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_JoinToken{JoinToken: t}}); err != nil {
			return err
		}
	}
	for _, n := range snap.nodes {
		if err := put(&droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Node{Node: n}}); err != nil {
			return err
		}
	}
	for _, k := range snap.keys {
		if err := put(&droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_SigningKey{SigningKey: k}}); err != nil {
			return err
		}
	}
	for _, d := range snap.deploys {
		if err := put(&droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Deployment{Deployment: d}}); err != nil {
			return err
		}
	}
	for _, r := range snap.rollouts {
		if err := put(&droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Rollout{Rollout: r}}); err != nil {
			return err
		}
	}
	for _, a := range snap.assigns {
		if err := put(&droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Assignment{Assignment: a}}); err != nil {
			return err
		}
	}
	for _, ev := range snap.audit {
		if err := put(&droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Audit{Audit: ev}}); err != nil {
			return err
		}
	}
	return put(&droverv1.SnapshotRecord{}) // end marker
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ReadSnapshot decodes and checks a whole snapshot stream without touching
// any store, for example to look at an operator's snapshot before
// restoring it. Every error wraps [ErrSnapshotInvalid]: the stream is
// truncated, garbled, in another format, or describes an inconsistent state
// (a version of a missing model, an alias to a missing version, duplicate
// objects, audit events out of order).
//
// ReadSnapshot never panics: a stream that trips a bug in the decoder is
// reported as invalid like any other, because a server restoring a
// snapshot (at start-up, from the leader, or from an operator) must be
// able to refuse it and carry on.
func ReadSnapshot(r io.Reader) (snap *Snapshot, err error) {
	defer func() {
		if p := recover(); p != nil {
			snap, err = nil, fmt.Errorf("read snapshot: %w: the decoder failed: %v", ErrSnapshotInvalid, p)
		}
	}()
	snap, err = readSnapshot(bufio.NewReader(r))
	if err != nil {
		return nil, fmt.Errorf("read snapshot: %w: %w", ErrSnapshotInvalid, err)
	}
	return snap, nil
}

// ForRestore returns a copy of snap to hand to Raft for an operator's
// restore: its index raised to index, its cluster identity replaced by
// cluster (nil keeps the snapshot's), and ev appended as its newest audit
// event at that index, so the restored state itself records who restored
// it. index must be at least the snapshot's index and above its newest
// audit event; the result is checked like a decoded snapshot.
func (snap *Snapshot) ForRestore(index uint64, cluster *droverv1.ClusterMeta, ev *droverv1.AuditEvent) (*Snapshot, error) {
	if index < snap.index || (len(snap.audit) > 0 && index <= snap.audit[len(snap.audit)-1].GetIndex()) {
		return nil, fmt.Errorf("prepare snapshot for restore: %w: index %d is not after the snapshot's index %d and its audit events", ErrInvalid, index, snap.index)
	}
	out := *snap
	out.index = index
	if cluster != nil {
		out.cluster = clone(cluster)
	}
	ev = clone(ev)
	ev.Index = index
	out.audit = append(snap.audit[:len(snap.audit):len(snap.audit)], ev)
	if err := out.check(); err != nil {
		return nil, fmt.Errorf("prepare snapshot for restore: %w: %w", ErrSnapshotInvalid, err)
	}
	return &out, nil
}

// Counts summarises what a snapshot holds, for logs and audit details.
func (snap *Snapshot) Counts() map[string]string {
	versions := 0
	for _, vs := range snap.versions {
		versions += len(vs)
	}
	return map[string]string{
		"models":       strconv.Itoa(len(snap.models)),
		"versions":     strconv.Itoa(versions),
		"acl_policies": strconv.Itoa(len(snap.policies)),
		"acl_tokens":   strconv.Itoa(len(snap.tokens)),
		"join_tokens":  strconv.Itoa(len(snap.joinTokens)),
		"nodes":        strconv.Itoa(len(snap.nodes)),
		"signing_keys": strconv.Itoa(len(snap.keys)),
		"deployments":  strconv.Itoa(len(snap.deploys)),
		"rollouts":     strconv.Itoa(len(snap.rollouts)),
		"assignments":  strconv.Itoa(len(snap.assigns)),
	}
}

func readSnapshot(br *bufio.Reader) (*Snapshot, error) {
	dec := protodelim.UnmarshalOptions{MaxSize: maxSnapshotRecord}
	hdr := &droverv1.SnapshotHeader{}
	if err := dec.UnmarshalFrom(br, hdr); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the stream is empty")
		}
		return nil, fmt.Errorf("header: %w", err)
	}
	format := hdr.GetFormat()
	switch {
	case format > SnapshotFormat:
		return nil, fmt.Errorf("format %d is newer than this server reads (format %d): upgrade the server to restore it", format, SnapshotFormat)
	case format < minSnapshotFormat:
		return nil, fmt.Errorf("format %d is not supported: this server reads formats %d to %d", format, minSnapshotFormat, SnapshotFormat)
	}
	snap := &Snapshot{
		index:    hdr.GetIndex(),
		cluster:  hdr.GetCluster(),
		versions: make(map[string][]*droverv1.ModelVersion),
	}
	for n := 1; ; n++ {
		rec := &droverv1.SnapshotRecord{}
		if err := dec.UnmarshalFrom(br, rec); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("the stream is truncated after %d records: the end marker is missing", n-1)
			}
			return nil, fmt.Errorf("record %d: %w", n, err)
		}
		switch r := rec.GetRecord().(type) {
		case *droverv1.SnapshotRecord_Model:
			snap.models = append(snap.models, r.Model)
		case *droverv1.SnapshotRecord_Version:
			v := r.Version
			snap.versions[v.GetModel()] = append(snap.versions[v.GetModel()], v)
		case *droverv1.SnapshotRecord_VersionMark:
			if format < 3 {
				return nil, fmt.Errorf("record %d is a version mark, which format %d snapshots do not have", n, format)
			}
			snap.marks = append(snap.marks, r.VersionMark)
		case *droverv1.SnapshotRecord_Policy:
			if format < 4 {
				return nil, fmt.Errorf("record %d is an ACL policy, which format %d snapshots do not have", n, format)
			}
			snap.policies = append(snap.policies, r.Policy)
		case *droverv1.SnapshotRecord_Token:
			if format < 4 {
				// The records were just decoded; nothing else holds them.
				upgradeBootstrapToken(r.Token)
			}
			snap.tokens = append(snap.tokens, r.Token)
		case *droverv1.SnapshotRecord_JoinToken:
			if format < 2 {
				return nil, fmt.Errorf("record %d is a join token, which format %d snapshots do not have", n, format)
			}
			snap.joinTokens = append(snap.joinTokens, r.JoinToken)
		case *droverv1.SnapshotRecord_Node:
			if format < 2 {
				return nil, fmt.Errorf("record %d is a node, which format %d snapshots do not have", n, format)
			}
			snap.nodes = append(snap.nodes, r.Node)
		case *droverv1.SnapshotRecord_SigningKey:
			if format < 5 {
				return nil, fmt.Errorf("record %d is a signing key, which format %d snapshots do not have", n, format)
			}
			snap.keys = append(snap.keys, r.SigningKey)
		case *droverv1.SnapshotRecord_Deployment:
			if format < 6 {
				return nil, fmt.Errorf("record %d is a deployment, which format %d snapshots do not have", n, format)
			}
			snap.deploys = append(snap.deploys, r.Deployment)
		case *droverv1.SnapshotRecord_Rollout:
			if format < 6 {
				return nil, fmt.Errorf("record %d is a rollout, which format %d snapshots do not have", n, format)
			}
			snap.rollouts = append(snap.rollouts, r.Rollout)
		case *droverv1.SnapshotRecord_Assignment:
			if format < 7 {
				return nil, fmt.Errorf("record %d is a node assignment, which format %d snapshots do not have", n, format)
			}
			snap.assigns = append(snap.assigns, r.Assignment)
		case *droverv1.SnapshotRecord_Audit:
			snap.audit = append(snap.audit, r.Audit)
		default:
			if proto.Size(rec) != 0 {
				return nil, fmt.Errorf("record %d has a type this server does not know", n)
			}
			if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("data follows the end marker after record %d", n-1)
			}
			snap.sort()
			if err := snap.check(); err != nil {
				return nil, err
			}
			return snap, nil
		}
	}
}

// check verifies that a decoded snapshot describes a state the write
// methods could have produced, so that a restored store never has to cope
// with dangling references.
func (snap *Snapshot) check() error {
	models := make(map[string]*droverv1.Model, len(snap.models))
	for _, m := range snap.models {
		if m.GetName() == "" {
			return errors.New("a model has no name")
		}
		if _, dup := models[m.GetName()]; dup {
			return fmt.Errorf("model %q appears twice", m.GetName())
		}
		models[m.GetName()] = m
	}
	for name, vs := range snap.versions {
		m, ok := models[name]
		if !ok {
			return fmt.Errorf("version %d belongs to model %q, which the snapshot does not hold", vs[0].GetVersion(), name)
		}
		var prev uint64
		for _, v := range vs {
			n := v.GetVersion()
			if n <= prev || n > m.GetLatestVersion() {
				return fmt.Errorf("model %q version %d is out of order, repeated or beyond latest version %d", name, n, m.GetLatestVersion())
			}
			prev = n
		}
	}
	marked := make(map[string]bool, len(snap.marks))
	for _, mk := range snap.marks {
		name, v := mk.GetModel(), mk.GetVersion()
		if err := ValidateName("model", name); err != nil {
			return fmt.Errorf("version mark: %w", err)
		}
		if marked[name] {
			return fmt.Errorf("model name %q has two version marks", name)
		}
		marked[name] = true
		if v == 0 {
			return fmt.Errorf("model name %q has version mark 0, below every version number", name)
		}
		if m, ok := models[name]; ok && v <= m.GetLatestVersion() {
			return fmt.Errorf("model %q has version mark %d, not above its latest version %d", name, v, m.GetLatestVersion())
		}
	}
	for _, m := range snap.models {
		for _, a := range sortedAliases(m) {
			n := m.GetAliases()[a]
			if findVersion(snap.versions[m.GetName()], n) == nil {
				return fmt.Errorf("model %q alias %q points to version %d, which the snapshot does not hold", m.GetName(), a, n)
			}
		}
	}
	if err := checkACL(snap.policies, snap.tokens); err != nil {
		return err
	}
	joinTokens := make(map[string]bool, len(snap.joinTokens))
	for _, t := range snap.joinTokens {
		if err := validateJoinToken(t); err != nil {
			return err
		}
		if joinTokens[t.GetId()] {
			return fmt.Errorf("join token %q appears twice", t.GetId())
		}
		joinTokens[t.GetId()] = true
	}
	if err := checkSigningKeys(snap.keys); err != nil {
		return err
	}
	if _, err := indexNodes(snap.nodes); err != nil {
		return err
	}
	if err := checkDeployments(snap.deploys, snap.rollouts, models, snap.versions); err != nil {
		return err
	}
	if err := checkAssignments(snap.assigns, snap.deploys); err != nil {
		return err
	}
	if _, err := indexNodeKeys(snap.nodes); err != nil {
		return err
	}
	var prev uint64
	for _, ev := range snap.audit {
		// Only the events of one command share an index (see
		// Store.RecordDenials), so an index may repeat but never go down.
		if ev.GetIndex() < prev || ev.GetIndex() == 0 || ev.GetIndex() > snap.index {
			return fmt.Errorf("audit event at index %d is out of order or after the snapshot index %d", ev.GetIndex(), snap.index)
		}
		prev = ev.GetIndex()
	}
	return nil
}

// checkACL checks that policies and tokens describe a state the write
// methods could have produced: valid policies and tokens, each once, no two
// tokens with one secret or name, and every policy a token names built in
// or held.
func checkACL(policies []*droverv1.ACLPolicy, tokens []*droverv1.ACLToken) error {
	held := make(map[string]bool, len(policies))
	for _, p := range policies {
		if err := acl.ValidatePolicy(p); err != nil {
			return err
		}
		if p.GetBuiltin() {
			return fmt.Errorf("policy %q claims to be built in; built-in policies are never stored", p.GetName())
		}
		if held[p.GetName()] {
			return fmt.Errorf("policy %q appears twice", p.GetName())
		}
		held[p.GetName()] = true
	}
	accessors := make(map[string]bool, len(tokens))
	secrets := make(map[[32]byte]bool, len(tokens))
	names := make(map[string]string, len(tokens))
	for _, t := range tokens {
		if err := validateToken(t); err != nil {
			return err
		}
		h := [32]byte(t.GetSecretSha256())
		if accessors[t.GetAccessorId()] || secrets[h] {
			return fmt.Errorf("token %q appears twice or shares its secret", t.GetAccessorId())
		}
		accessors[t.GetAccessorId()] = true
		secrets[h] = true
		if other, dup := names[t.GetName()]; dup {
			return fmt.Errorf("tokens %q and %q share the name %q", other, t.GetAccessorId(), t.GetName())
		}
		names[t.GetName()] = t.GetAccessorId()
		for _, p := range t.GetPolicies() {
			if !held[p] && !acl.IsBuiltin(p) {
				return fmt.Errorf("token %q refers to policy %q, which the snapshot does not hold", t.GetName(), p)
			}
		}
	}
	return nil
}

// indexNodes checks that nodes describe a state the write methods could
// have produced (valid ids, each once, a status a node can have, names
// unique among the nodes that have not left) and returns the name index of
// the nodes that have not left.
func indexNodes(nodes []*droverv1.Node) (map[string]string, error) {
	ids := make(map[string]bool, len(nodes))
	names := make(map[string]string, len(nodes))
	for _, n := range nodes {
		id := n.GetId()
		if err := validateID("node", id); err != nil {
			return nil, err
		}
		if ids[id] {
			return nil, fmt.Errorf("node %q appears twice", id)
		}
		ids[id] = true
		switch n.GetStatus() {
		case droverv1.NodeStatus_NODE_STATUS_INITIALIZING, droverv1.NodeStatus_NODE_STATUS_READY, droverv1.NodeStatus_NODE_STATUS_DOWN:
		case droverv1.NodeStatus_NODE_STATUS_LEFT:
			continue
		default:
			return nil, fmt.Errorf("node %q has status %v, which no node can have", id, n.GetStatus())
		}
		if other, dup := names[n.GetName()]; dup {
			return nil, fmt.Errorf("nodes %q and %q share the name %q and neither has left", other, id, n.GetName())
		}
		names[n.GetName()] = id
	}
	return names, nil
}

// Restore replaces the store's whole state with the snapshot read from r,
// as [Store.RestoreAt] with no Raft index.
func (s *Store) Restore(r io.Reader) error {
	return s.RestoreAt(r, 0)
}

// RestoreAt replaces the store's whole state with the snapshot read from
// r, which Raft holds at raftIndex (0 when unknown). The stream is decoded
// and checked completely first; on any error the current state is left
// untouched. Audit events beyond the store's retention are dropped, oldest
// first.
//
// The index never goes down: it becomes the greatest of the snapshot's
// own index, raftIndex and, when the store already had state, its index
// plus one. A saved snapshot's own index is older than what clients have
// since seen; Raft installs it at an index after every entry it has, so
// with raftIndex given the index is the same on every server and above
// any index a client has been shown, and a blocking query waiting past the
// old index wakes (see [Store.WaitForIndex]) and sees a higher one.
func (s *Store) RestoreAt(r io.Reader, raftIndex uint64) error {
	snap, err := ReadSnapshot(r)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	t := newTables()
	t.cluster = snap.cluster
	for _, m := range snap.models {
		t.models[m.GetName()] = m
	}
	for name, vs := range snap.versions {
		t.versions[name] = vs
	}
	for _, mk := range snap.marks {
		t.versionMarks[mk.GetModel()] = mk.GetVersion()
	}
	for _, p := range snap.policies {
		t.policies[p.GetName()] = p
	}
	for _, tok := range snap.tokens {
		t.tokens[tok.GetAccessorId()] = tok
		t.secrets[[32]byte(tok.GetSecretSha256())] = tok
	}
	t.aclBootstrapped = len(snap.tokens) > 0
	for _, jt := range snap.joinTokens {
		t.joinTokens[jt.GetId()] = jt
	}
	for _, n := range snap.nodes {
		t.nodes[n.GetId()] = n
	}
	for _, k := range snap.keys {
		t.signingKeys[k.GetKeyId()] = k
	}
	for _, d := range snap.deploys {
		t.deployments[d.GetSpec().GetName()] = d
	}
	for _, r := range snap.rollouts {
		t.rollouts[r.GetDeployment()] = append(t.rollouts[r.GetDeployment()], r)
	}
	for _, a := range snap.assigns {
		as := t.assignments[a.GetNodeId()]
		if as == nil {
			as = make(map[string]*droverv1.Assignment)
			t.assignments[a.GetNodeId()] = as
		}
		as[a.GetAssignment().GetDeployment()] = a.GetAssignment()
	}
	t.nodeNames, err = indexNodes(snap.nodes)
	if err == nil {
		t.nodeKeys, err = indexNodeKeys(snap.nodes)
	}
	if err != nil {
		// check accepted these nodes already.
		return fmt.Errorf("restore: %w: %w", ErrSnapshotInvalid, err)
	}
	t.audit = snap.audit
	if over := len(t.audit) - s.opts.AuditRetention; over > 0 {
		t.audit = t.audit[over:]
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.t = t
	idx := max(snap.index, raftIndex)
	if s.index > 0 && idx <= s.index {
		idx = s.index + 1
	}
	s.index = idx
	// Every token and policy may have changed: whatever was derived from
	// the old ones must be rebuilt (see ACLIndex).
	s.t.aclIndex = idx
	// So is every node's assignments.
	s.t.assignFloor = idx
	s.notifyLocked()
	return nil
}
