package state

import (
	"crypto/subtle"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
)

// Node lifecycle. A node is created INITIALIZING by EnrollNode, which
// uses one use of a join token; RegisterNode records its inventory and
// makes it READY; the leader's heartbeat timers move it between READY and
// DOWN with SetNodeStatus; LEFT is final. A revoked node may be marked
// DOWN or LEFT but never READY again: its certificate is refused, so the
// leader stops hearing its heartbeats and marks it DOWN once its deadline
// passes, which is the truth about it from then on. Names are unique among
// the nodes that have not left, so a machine that left can enroll again
// under its old name.

// EnrollNode applies an enroll-node command: in one step it checks that
// the join token may be used (see the token errors: [ErrTokenInvalid],
// [ErrTokenRevoked], [ErrTokenExpired], [ErrTokenUsedUp]), counts the use
// and creates the node, so that a token's max_uses holds however many
// agents enroll at once. It returns the new node.
//
// An enrollment is idempotent: one whose node carries the public key hash
// of a node that has not left and that enrolled with the same join token
// (and the right secret) is a retry of that enrollment, whose answer was
// lost. It returns that node as it is now, changes nothing and uses no
// more of the token, so a retry succeeds even when the first try used the
// token's last use or the token has expired since: the enrollment those
// guard happened already. A revoked token or node refuses the retry. The
// same key with another token is refused with [ErrAlreadyExists]: an agent
// makes a new key for each new enrollment.
//
// From cmd's node it takes id, name, labels, site, inventory and agent
// version; the rest is set here. The node's labels are the agent's with
// the token's laid over them (the token wins a conflict: the operator who
// made it is authoritative), and its site is the token's when the token
// has one.
func (s *Store) EnrollNode(idx uint64, meta *droverv1.CommandMeta, cmd *droverv1.EnrollNodeCommand) (*droverv1.Node, error) {
	var out *droverv1.Node
	err := s.write(idx, meta, ActionNodeEnroll, func() (string, map[string]string, error) {
		req := cmd.GetNode()
		id := req.GetId()
		target := nodeTarget(id)
		if prev, ok := s.t.nodeKeys[keyOf(req.GetPublicKeySha256())]; ok && len(req.GetPublicKeySha256()) > 0 {
			return s.enrollRetryLocked(s.t.nodes[prev], cmd, &out)
		}
		tok, details, err := s.useJoinTokenLocked(meta, cmd.GetTokenId(), cmd.GetTokenSecretSha256())
		if err != nil {
			return target, details, err
		}
		if err := validateEnrollNode(req); err != nil {
			return target, details, err
		}
		if _, ok := s.t.nodes[id]; ok {
			return target, details, fmt.Errorf("node %q %w", id, ErrAlreadyExists)
		}
		if other, ok := s.t.nodeNames[req.GetName()]; ok {
			return target, details, fmt.Errorf("node name %q %w: node %q has it and has not left", req.GetName(), ErrAlreadyExists, other)
		}
		labels, overridden := mergeLabels(req.GetLabels(), tok.GetLabels())
		if err := ValidateLabels(labels); err != nil {
			return target, details, fmt.Errorf("node %q with join token %q's labels: %w", id, tok.GetId(), err)
		}
		site := req.GetSite()
		if ts := tok.GetSite(); ts != "" {
			site = ts
		}
		r := clone(req)
		n := &droverv1.Node{
			Id:              id,
			Name:            r.GetName(),
			Labels:          labels,
			Site:            site,
			Status:          droverv1.NodeStatus_NODE_STATUS_INITIALIZING,
			Inventory:       r.GetInventory(),
			AgentVersion:    r.GetAgentVersion(),
			TokenId:         tok.GetId(),
			CreateIndex:     idx,
			ModifyIndex:     idx,
			PublicKeySha256: r.GetPublicKeySha256(),
		}
		if t := meta.GetTime(); t != nil {
			n.EnrollTime = clone(t)
		}
		appendHistory(n, idx, meta, droverv1.NodeStatus_NODE_STATUS_INITIALIZING, fmt.Sprintf("enrolled with join token %q", tok.GetId()))

		tok = shallowCopy(tok)
		tok.Uses++
		tok.ModifyIndex = idx
		s.t.joinTokens[tok.GetId()] = tok
		s.t.nodes[id] = n
		s.t.nodeNames[n.GetName()] = id
		if k := n.GetPublicKeySha256(); len(k) > 0 {
			s.t.nodeKeys[keyOf(k)] = id
		}
		out = clone(n)

		details["name"] = n.GetName()
		details["uses"] = strconv.FormatUint(uint64(tok.GetUses()), 10)
		if m := tok.GetMaxUses(); m > 0 {
			details["uses"] += "/" + strconv.FormatUint(uint64(m), 10)
		}
		if len(overridden) > 0 {
			details["labels_overridden"] = strings.Join(overridden, ",")
		}
		return target, details, nil
	})
	return out, err
}

// enrollRetryLocked answers an enrollment whose key is prev's, a node
// that has not left (see [Store.EnrollNode]): prev itself, into *out, if
// the enrollment is a retry of prev's; a refusal if not. s.mu is held.
func (s *Store) enrollRetryLocked(prev *droverv1.Node, cmd *droverv1.EnrollNodeCommand, out **droverv1.Node) (string, map[string]string, error) {
	target := nodeTarget(prev.GetId())
	tokID := cmd.GetTokenId()
	details := map[string]string{"token": tokID}
	if tokID != prev.GetTokenId() {
		details["refused"] = "key enrolled with another token"
		return target, details, fmt.Errorf("node key %w: node %q enrolled with it using join token %q, not %q; "+
			"an agent makes a new key for each enrollment, so start it with an empty data directory",
			ErrAlreadyExists, prev.GetId(), prev.GetTokenId(), tokID)
	}
	t, ok := s.t.joinTokens[tokID]
	if !ok || subtle.ConstantTimeCompare(t.GetSecretSha256(), cmd.GetTokenSecretSha256()) != 1 {
		details["refused"] = "wrong secret"
		return target, details, &refusal{
			msg:  fmt.Sprintf("join token %q is not valid: unknown id or wrong secret; check the token string the agent was given", tokID),
			kind: ErrTokenInvalid,
		}
	}
	if t.GetRevoked() {
		return target, details, &refusal{
			msg:  fmt.Sprintf("join token %q was revoked: create a new one with \"drover token create\"", tokID),
			kind: ErrTokenRevoked,
		}
	}
	if prev.GetRevoked() {
		return target, details, revokedNode(prev.GetId())
	}
	details["name"] = prev.GetName()
	details["retry"] = "true"
	*out = clone(prev)
	return target, details, nil
}

// keyOf returns a node's public key hash as a map key; a hash of another
// length than SHA-256's (none, from a node enrolled before keys were
// recorded) gives the zero key, which is never indexed.
func keyOf(sum []byte) [32]byte {
	if len(sum) != 32 {
		return [32]byte{}
	}
	return [32]byte(sum)
}

// indexNodeKeys returns the key index of nodes (key hash → id, for the
// nodes that have not left and recorded a key), or an error when two of
// them share a key, which EnrollNode never lets happen.
func indexNodeKeys(nodes []*droverv1.Node) (map[[32]byte]string, error) {
	keys := make(map[[32]byte]string)
	for _, n := range nodes {
		k := n.GetPublicKeySha256()
		if len(k) == 0 || n.GetStatus() == droverv1.NodeStatus_NODE_STATUS_LEFT {
			continue
		}
		if len(k) != 32 {
			return nil, fmt.Errorf("node %q public key hash is %d bytes, a SHA-256 is 32", n.GetId(), len(k))
		}
		if other, dup := keys[[32]byte(k)]; dup {
			return nil, fmt.Errorf("nodes %q and %q share a public key and neither has left", other, n.GetId())
		}
		keys[[32]byte(k)] = n.GetId()
	}
	return keys, nil
}

func validateEnrollNode(n *droverv1.Node) error {
	if err := validateID("node", n.GetId()); err != nil {
		return err
	}
	if k := len(n.GetPublicKeySha256()); k != 0 && k != 32 {
		return fmt.Errorf("node %q public key hash is %w: it is %d bytes, a SHA-256 is 32", n.GetId(), ErrInvalid, k)
	}
	if err := ValidateName("node", n.GetName()); err != nil {
		return err
	}
	if err := ValidateLabels(n.GetLabels()); err != nil {
		return fmt.Errorf("node %q: %w", n.GetId(), err)
	}
	if site := n.GetSite(); site != "" {
		if err := ValidateName("site", site); err != nil {
			return fmt.Errorf("node %q: %w", n.GetId(), err)
		}
	}
	return validateInventory(n.GetId(), n.GetInventory())
}

func validateInventory(id string, inv *droverv1.NodeInventory) error {
	if n := proto.Size(inv); n > MaxInventoryBytes {
		return fmt.Errorf("node %q inventory is %w: it is %d bytes encoded, more than the %d allowed", id, ErrInvalid, n, MaxInventoryBytes)
	}
	return nil
}

// validateGossipAddr checks a node's gossip address: empty, or HOST:PORT
// with a port from 1 to 65535.
func validateGossipAddr(id, addr string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	n, perr := strconv.ParseUint(port, 10, 16)
	if err != nil || host == "" || len(addr) > 255 || perr != nil || n == 0 {
		return fmt.Errorf("node %q gossip address %q is %w: want HOST:PORT, such as 10.0.0.7:7947", id, addr, ErrInvalid)
	}
	return nil
}

// RegisterNode applies a register-node command: it stores the node's
// inventory, agent version and gossip address and moves an INITIALIZING or DOWN node to
// READY (a READY node stays READY). It returns the node. A revoked node is
// refused with [ErrNodeRevoked], a node that left with [ErrInvalid]: its
// name may belong to another node by now, so the machine enrolls again.
func (s *Store) RegisterNode(idx uint64, meta *droverv1.CommandMeta, nodeID string, inventory *droverv1.NodeInventory, agentVersion, gossipAddr string) (*droverv1.Node, error) {
	var out *droverv1.Node
	err := s.write(idx, meta, ActionNodeRegister, func() (string, map[string]string, error) {
		target := nodeTarget(nodeID)
		cur, ok := s.t.nodes[nodeID]
		if !ok {
			return target, nil, fmt.Errorf("node %q %w", nodeID, ErrNotFound)
		}
		if cur.GetRevoked() {
			return target, nil, revokedNode(nodeID)
		}
		if cur.GetStatus() == droverv1.NodeStatus_NODE_STATUS_LEFT {
			return target, nil, fmt.Errorf("registration of node %q is %w: the node has left the fleet and its name may belong to another node by now; enroll the machine again with a join token", nodeID, ErrInvalid)
		}
		if err := validateInventory(nodeID, inventory); err != nil {
			return target, nil, err
		}
		if err := validateGossipAddr(nodeID, gossipAddr); err != nil {
			return target, nil, err
		}
		details := map[string]string{"status": statusName(droverv1.NodeStatus_NODE_STATUS_READY)}
		if agentVersion != "" {
			details["agent_version"] = agentVersion
		}
		prev := cur.GetStatus()
		if prev == droverv1.NodeStatus_NODE_STATUS_READY && cur.GetAgentVersion() == agentVersion &&
			cur.GetGossipAddr() == gossipAddr && proto.Equal(cur.GetInventory(), inventory) {
			out = clone(cur)
			return target, details, nil
		}
		n := shallowCopy(cur)
		n.Inventory = clone(inventory)
		n.AgentVersion = agentVersion
		n.GossipAddr = gossipAddr
		n.ModifyIndex = idx
		if prev != droverv1.NodeStatus_NODE_STATUS_READY {
			details["previous"] = statusName(prev)
			n.Status = droverv1.NodeStatus_NODE_STATUS_READY
			appendHistory(n, idx, meta, n.Status, "registered")
		}
		s.t.nodes[nodeID] = n
		out = clone(n)
		return target, details, nil
	})
	return out, err
}

// SetNodeStatus applies a set-node-status command: the status transitions
// the leader observed, for many nodes at once. The whole batch is refused
// with [ErrInvalid] only when an update is malformed (a status other than
// READY, DOWN or LEFT, or an overlong reason). Otherwise each update is
// applied on its own, in order: one for an unknown node, for a revoked
// node to READY, or for a node that left is skipped, and the
// audit event's details list it ("not_found", "refused") beside the nodes
// that changed ("changed") and those already in that status
// ("unchanged"). Only a real transition adds to a node's history, which
// keeps the last [MaxNodeHistory] entries.
func (s *Store) SetNodeStatus(idx uint64, meta *droverv1.CommandMeta, updates []*droverv1.NodeStatusUpdate) error {
	return s.write(idx, meta, ActionNodeStatus, func() (string, map[string]string, error) {
		target := nodesTarget
		if len(updates) > 0 {
			target = nodeTarget(updates[0].GetNodeId())
			for _, u := range updates[1:] {
				if u.GetNodeId() != updates[0].GetNodeId() {
					target = nodesTarget
					break
				}
			}
		}
		for i, u := range updates {
			if err := validateStatusUpdate(i, u); err != nil {
				return target, nil, err
			}
		}
		var changed, unchanged, notFound, refused []string
		for _, u := range updates {
			id, status := u.GetNodeId(), u.GetStatus()
			cur, ok := s.t.nodes[id]
			switch {
			case !ok:
				notFound = append(notFound, id)
				continue
			case cur.GetStatus() == status:
				unchanged = append(unchanged, id)
				continue
			case cur.GetStatus() == droverv1.NodeStatus_NODE_STATUS_LEFT:
				refused = append(refused, id+" (left)")
				continue
			case cur.GetRevoked() && status == droverv1.NodeStatus_NODE_STATUS_READY:
				refused = append(refused, id+" (revoked)")
				continue
			}
			n := shallowCopy(cur)
			n.Status = status
			n.ModifyIndex = idx
			appendHistory(n, idx, meta, status, u.GetReason())
			s.t.nodes[id] = n
			if status == droverv1.NodeStatus_NODE_STATUS_LEFT {
				if s.t.nodeNames[n.GetName()] == id {
					delete(s.t.nodeNames, n.GetName())
				}
				if k := keyOf(n.GetPublicKeySha256()); s.t.nodeKeys[k] == id {
					delete(s.t.nodeKeys, k)
				}
			}
			changed = append(changed, id+"="+statusName(status))
		}
		details := map[string]string{}
		for k, ids := range map[string][]string{"changed": changed, "unchanged": unchanged, "not_found": notFound, "refused": refused} {
			if len(ids) > 0 {
				details[k] = strings.Join(ids, ",")
			}
		}
		return target, details, nil
	})
}

func validateStatusUpdate(i int, u *droverv1.NodeStatusUpdate) error {
	switch u.GetStatus() {
	case droverv1.NodeStatus_NODE_STATUS_READY, droverv1.NodeStatus_NODE_STATUS_DOWN, droverv1.NodeStatus_NODE_STATUS_LEFT:
	default:
		return fmt.Errorf("status update %d (node %q) is %w: status %v is not one a node can be set to; use READY, DOWN or LEFT",
			i, u.GetNodeId(), ErrInvalid, u.GetStatus())
	}
	if n := len(u.GetReason()); n > MaxReasonBytes {
		return fmt.Errorf("status update %d (node %q) is %w: its reason is %d bytes, more than the %d allowed", i, u.GetNodeId(), ErrInvalid, n, MaxReasonBytes)
	}
	return nil
}

// SetNodeDrain applies a drain or undrain command (audit action
// node.drain or node.undrain) and returns the node. Setting the value the
// node already has changes nothing but is still recorded in the audit log.
func (s *Store) SetNodeDrain(idx uint64, meta *droverv1.CommandMeta, nodeID string, draining bool) (*droverv1.Node, error) {
	action := ActionNodeUndrain
	if draining {
		action = ActionNodeDrain
	}
	var out *droverv1.Node
	err := s.write(idx, meta, action, func() (string, map[string]string, error) {
		target := nodeTarget(nodeID)
		cur, ok := s.t.nodes[nodeID]
		if !ok {
			return target, nil, fmt.Errorf("node %q %w", nodeID, ErrNotFound)
		}
		if cur.GetDraining() != draining {
			cur = shallowCopy(cur)
			cur.Draining = draining
			cur.ModifyIndex = idx
			s.t.nodes[nodeID] = cur
		}
		out = clone(cur)
		return target, nil, nil
	})
	return out, err
}

// SetNodeLabels applies a set-node-labels command: the labels in set are
// set, then the keys in remove are removed (removing a key the node does
// not have is fine). It returns the node. The labels are checked like a
// join token's (see [ValidateLabels]), keys in sorted order; the result
// may hold at most [MaxLabels].
func (s *Store) SetNodeLabels(idx uint64, meta *droverv1.CommandMeta, nodeID string, set map[string]string, remove []string) (*droverv1.Node, error) {
	var out *droverv1.Node
	err := s.write(idx, meta, ActionNodeLabel, func() (string, map[string]string, error) {
		target := nodeTarget(nodeID)
		if err := ValidateLabels(set); err != nil {
			return target, nil, err
		}
		removed := slices.Compact(slices.Sorted(slices.Values(remove)))
		for _, k := range removed {
			if err := ValidateLabelKey(k); err != nil {
				return target, nil, err
			}
		}
		cur, ok := s.t.nodes[nodeID]
		if !ok {
			return target, nil, fmt.Errorf("node %q %w", nodeID, ErrNotFound)
		}
		labels := maps.Clone(cur.GetLabels())
		if labels == nil {
			labels = make(map[string]string, len(set))
		}
		maps.Copy(labels, set)
		for _, k := range removed {
			delete(labels, k)
		}
		if n := len(labels); n > MaxLabels {
			return target, nil, fmt.Errorf("node %q labels are %w: the change leaves %d labels, more than the %d allowed", nodeID, ErrInvalid, n, MaxLabels)
		}
		if !maps.Equal(labels, cur.GetLabels()) {
			cur = shallowCopy(cur)
			cur.Labels = labels
			cur.ModifyIndex = idx
			s.t.nodes[nodeID] = cur
		}
		out = clone(cur)
		details := map[string]string{}
		if len(set) > 0 {
			pairs := make([]string, 0, len(set))
			for _, k := range slices.Sorted(maps.Keys(set)) {
				pairs = append(pairs, k+"="+set[k])
			}
			details["set"] = strings.Join(pairs, ",")
		}
		if len(removed) > 0 {
			details["remove"] = strings.Join(removed, ",")
		}
		return target, details, nil
	})
	return out, err
}

// RevokeNode applies a revoke-node command and returns the node. A revoked
// node is refused by RegisterNode and by status changes to READY; it keeps
// running what it runs until an operator drains it. Its status stays as it
// is here: the leader marks it DOWN when its heartbeat deadline passes,
// since its heartbeats are refused from now on.
// Revoking a revoked node changes nothing but is still recorded in the
// audit log.
func (s *Store) RevokeNode(idx uint64, meta *droverv1.CommandMeta, nodeID string) (*droverv1.Node, error) {
	var out *droverv1.Node
	err := s.write(idx, meta, ActionNodeRevoke, func() (string, map[string]string, error) {
		target := nodeTarget(nodeID)
		cur, ok := s.t.nodes[nodeID]
		if !ok {
			return target, nil, fmt.Errorf("node %q %w", nodeID, ErrNotFound)
		}
		var details map[string]string
		if cur.GetRevoked() {
			details = map[string]string{"already_revoked": "true"}
		} else {
			cur = shallowCopy(cur)
			cur.Revoked = true
			cur.ModifyIndex = idx
			s.t.nodes[nodeID] = cur
		}
		out = clone(cur)
		return target, details, nil
	})
	return out, err
}

func revokedNode(id string) error {
	return &refusal{
		msg:  fmt.Sprintf("node %q is revoked: its agent must enroll again with a new join token", id),
		kind: ErrNodeRevoked,
	}
}

// appendHistory records a status change on n, a copy the caller owns, and
// keeps the last MaxNodeHistory entries. The entries themselves may be
// shared with older copies of the node; only the slice is new.
func appendHistory(n *droverv1.Node, idx uint64, meta *droverv1.CommandMeta, status droverv1.NodeStatus, reason string) {
	c := &droverv1.NodeStatusChange{Status: status, Reason: reason, Index: idx}
	if t := meta.GetTime(); t != nil {
		c.Time = clone(t)
	}
	h := n.GetHistory()
	if over := len(h) + 1 - MaxNodeHistory; over > 0 {
		h = h[over:]
	}
	n.History = append(append(make([]*droverv1.NodeStatusChange, 0, len(h)+1), h...), c)
}

// statusName is a status as audit details and messages spell it: "READY".
func statusName(st droverv1.NodeStatus) string {
	return strings.TrimPrefix(st.String(), "NODE_STATUS_")
}

// Node returns the node with the given id.
func (s *Store) Node(id string) (*droverv1.Node, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n, ok := s.t.nodes[id]
	if !ok {
		return nil, fmt.Errorf("node %q %w", id, ErrNotFound)
	}
	return clone(n), nil
}

// NodeSummary returns node id's identity and status alone: a Node with
// only its id, name, site, status, draining, cordoned and revoked flags,
// conditions, gossip address and requested pull set, none of its labels,
// inventory or history. It is for the
// hot path of agent calls, which check who is calling on every heartbeat
// and must not copy a whole inventory each time.
func (s *Store) NodeSummary(id string) (*droverv1.Node, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n, ok := s.t.nodes[id]
	if !ok {
		return nil, fmt.Errorf("node %q %w", id, ErrNotFound)
	}
	return &droverv1.Node{
		Id:         n.GetId(),
		Name:       n.GetName(),
		Site:       n.GetSite(),
		Status:     n.GetStatus(),
		Draining:   n.GetDraining(),
		Cordoned:   n.GetCordoned(),
		Revoked:    n.GetRevoked(),
		GossipAddr: n.GetGossipAddr(),
		// Usually none; heartbeats compare what they report with them.
		Conditions: cloneConditions(n.GetConditions()),
		// Small, and what a heartbeat answers with.
		RequestedPull: clone(n.GetRequestedPull()),
	}, nil
}

// Nodes returns every node, those that left included, sorted by name
// (then id, since a name can recur among nodes that left).
func (s *Store) Nodes() []*droverv1.Node {
	return s.NodesFiltered(NodeFilter{})
}

// NodeFilter selects nodes; the zero value selects all. A node matches
// when it matches every field that is set.
type NodeFilter struct {
	// Labels the node must have, each with exactly this value.
	Labels map[string]string
	// Site the node must be in.
	Site string
	// Status the node must have.
	Status droverv1.NodeStatus
	// GPUModelContains and MinGPUMemoryBytes select nodes with at least
	// one GPU (or MIG instance) that matches both: its name contains
	// GPUModelContains, ignoring case ("a100" matches "NVIDIA
	// A100-SXM4-80GB"), and it has at least MinGPUMemoryBytes of memory.
	GPUModelContains  string
	MinGPUMemoryBytes uint64
}

// Match reports whether n matches the filter.
func (f NodeFilter) Match(n *droverv1.Node) bool {
	for k, v := range f.Labels {
		if got, ok := n.GetLabels()[k]; !ok || got != v {
			return false
		}
	}
	if f.Site != "" && n.GetSite() != f.Site {
		return false
	}
	if f.Status != droverv1.NodeStatus_NODE_STATUS_UNSPECIFIED && n.GetStatus() != f.Status {
		return false
	}
	if f.GPUModelContains == "" && f.MinGPUMemoryBytes == 0 {
		return true
	}
	model := strings.ToLower(f.GPUModelContains)
	for _, g := range n.GetInventory().GetGpus() {
		if strings.Contains(strings.ToLower(g.GetName()), model) && g.GetMemoryTotalBytes() >= f.MinGPUMemoryBytes {
			return true
		}
	}
	return false
}

// NodesFiltered returns the nodes that match f, sorted like [Store.Nodes].
func (s *Store) NodesFiltered(f NodeFilter) []*droverv1.Node {
	s.mu.RLock()
	out := make([]*droverv1.Node, 0, len(s.t.nodes))
	for _, n := range s.t.nodes {
		if f.Match(n) {
			out = append(out, clone(n))
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, compareNodes)
	return out
}

func compareNodes(a, b *droverv1.Node) int {
	if c := strings.Compare(a.GetName(), b.GetName()); c != 0 {
		return c
	}
	return strings.Compare(a.GetId(), b.GetId())
}

// SetNodePull applies a set-node-pull command (audit action node.pull):
// the node is asked to pull version pull.version of pull.model, whose
// artifact digest must be pull.artifact_digest, and the request replaces
// any earlier one. The version must hold pushed bytes (a signed
// manifest): one registered by digest alone is refused, as is a digest
// that is not the version's, so a request never names bytes the cluster
// cannot serve. The request's index, time and requester are set here from
// idx and meta. It returns the node.
func (s *Store) SetNodePull(idx uint64, meta *droverv1.CommandMeta, nodeID string, pull *droverv1.NodePull) (*droverv1.Node, error) {
	var out *droverv1.Node
	err := s.write(idx, meta, ActionNodePull, func() (string, map[string]string, error) {
		target := nodeTarget(nodeID)
		details := map[string]string{
			"model":   pull.GetModel(),
			"version": strconv.FormatUint(pull.GetVersion(), 10),
		}
		cur, ok := s.t.nodes[nodeID]
		if !ok {
			return target, details, fmt.Errorf("node %q %w", nodeID, ErrNotFound)
		}
		if cur.GetStatus() == droverv1.NodeStatus_NODE_STATUS_LEFT {
			return target, details, fmt.Errorf("node %q left the fleet: it pulls nothing: %w", nodeID, ErrInvalid)
		}
		model := pull.GetModel()
		if _, ok := s.t.models[model]; !ok {
			return target, details, fmt.Errorf("model %q %w", model, ErrNotFound)
		}
		v := s.findVersionLocked(model, pull.GetVersion())
		if v == nil {
			return target, details, fmt.Errorf("model %q version %d %w: the model has %s", model, pull.GetVersion(), ErrNotFound, describeVersions(s.t.versions[model]))
		}
		if v.GetArtifact().GetSigned() == nil {
			return target, details, fmt.Errorf("version %d of %s was created from a bare digest, so the cluster holds no bytes for a node to pull: %w", v.GetVersion(), model, ErrInvalid)
		}
		if d := v.GetArtifact().GetDigest(); pull.GetArtifactDigest() != d {
			return target, details, fmt.Errorf("version %d of %s has artifact %s, not %q: %w", v.GetVersion(), model, d, pull.GetArtifactDigest(), ErrInvalid)
		}
		details["digest"] = pull.GetArtifactDigest()
		p := &droverv1.NodePull{
			Model:           model,
			Version:         v.GetVersion(),
			ArtifactDigest:  pull.GetArtifactDigest(),
			RequestedBy:     actorOf(meta),
			RequestedByName: meta.GetActorName(),
			RequestTime:     meta.GetTime(),
			RequestIndex:    idx,
		}
		cur = shallowCopy(cur)
		cur.RequestedPull = p
		cur.ModifyIndex = idx
		s.t.nodes[nodeID] = cur
		out = clone(cur)
		return target, details, nil
	})
	return out, err
}
