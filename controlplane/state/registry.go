package state

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// CreateModel applies a create-model command at Raft index idx and returns
// the new model.
func (s *Store) CreateModel(idx uint64, meta *droverv1.CommandMeta, req *droverv1.CreateModelRequest) (*droverv1.Model, error) {
	var out *droverv1.Model
	err := s.write(idx, meta, ActionModelCreate, func() (string, map[string]string, error) {
		name := req.GetName()
		target := modelTarget(name)
		if err := validateCreateModel(req); err != nil {
			return target, nil, err
		}
		if _, ok := s.t.models[name]; ok {
			return target, nil, fmt.Errorf("model %q %w", name, ErrAlreadyExists)
		}
		m := &droverv1.Model{
			Name:        name,
			Description: req.GetDescription(),
			Owner:       req.GetOwner(),
			Tags:        maps.Clone(req.GetTags()),
			CreatedBy:   actorOf(meta),
			CreateIndex: idx,
			ModifyIndex: idx,
		}
		if t := meta.GetTime(); t != nil {
			m.CreateTime = clone(t)
		}
		s.t.models[name] = m
		out = clone(m)
		return target, nil, nil
	})
	return out, err
}

// DeleteModel applies a delete-model command: the model and all its
// versions go. It is refused while a deployment uses the model, and while
// an alias points into the model, because an alias is what deployments
// follow; removing the deployment or the alias first is a deliberate,
// audited step. The highest version number the name was given
// stays behind as its version mark, so that a model created again under
// the name numbers on from there (see [Store.CreateVersion]).
func (s *Store) DeleteModel(idx uint64, meta *droverv1.CommandMeta, name string) error {
	return s.write(idx, meta, ActionModelDelete, func() (string, map[string]string, error) {
		target := modelTarget(name)
		m, ok := s.t.models[name]
		if !ok {
			return target, nil, fmt.Errorf("model %q %w", name, ErrNotFound)
		}
		if used := s.deploymentsUsingLocked(name, ""); len(used) > 0 {
			return target, nil, &refusal{
				msg: fmt.Sprintf("model %q is used by deployment %q: remove the deployment first with \"drover deploy rm %s\"",
					name, used[0], used[0]),
				kind: ErrInUse,
			}
		}
		if aliases := sortedAliases(m); len(aliases) > 0 {
			a := aliases[0]
			return target, nil, &refusal{
				msg: fmt.Sprintf("model %q is referenced by alias %q (version %d): remove the alias first with \"drover model alias rm %s %s\"",
					name, a, m.GetAliases()[a], name, a),
				kind: ErrInUse,
			}
		}
		n := len(s.t.versions[name])
		if latest := m.GetLatestVersion(); latest > s.t.versionMarks[name] {
			s.t.versionMarks[name] = latest
		}
		delete(s.t.models, name)
		delete(s.t.versions, name)
		return target, map[string]string{"versions": strconv.Itoa(n)}, nil
	})
}

// SetVersionReference gives a version that has no reference profile one:
// the leader's merge of its first canary windows. A reference, once set
// (from the push or the canary), never changes, so drift is always
// measured against what the version was first judged by.
func (s *Store) SetVersionReference(idx uint64, meta *droverv1.CommandMeta, c *droverv1.SetVersionReferenceCommand) error {
	return s.write(idx, meta, ActionVersionReference, func() (string, map[string]string, error) {
		name, n := c.GetModel(), c.GetVersion()
		target := versionTarget(name, n)
		vs := s.t.versions[name]
		i := slices.IndexFunc(vs, func(v *droverv1.ModelVersion) bool { return v.GetVersion() == n })
		if i < 0 {
			return target, nil, fmt.Errorf("model %q version %d %w", name, n, ErrNotFound)
		}
		if vs[i].GetReference() != nil {
			return target, nil, fmt.Errorf("model %q version %d already has a reference profile (from the %s) and keeps it: %w", name, n, vs[i].GetReferenceSource(), ErrConflict)
		}
		if c.GetReference() == nil || c.GetSource() == "" {
			return target, nil, fmt.Errorf("reference profile is %w: the command carries no profile or no source", ErrInvalid)
		}
		v := clone(vs[i])
		v.Reference = clone(c.GetReference())
		v.ReferenceSource = c.GetSource()
		v.ReferenceFeatures = uint32(len(v.GetReference().GetInputs()) + len(v.GetReference().GetOutputs()))
		v.ModifyIndex = idx
		if err := validateVersion(v); err != nil {
			return target, nil, err
		}
		// Replaced, not changed in place: readers hold the old one.
		vs = slices.Clone(vs)
		vs[i] = v
		s.t.versions[name] = vs
		return target, map[string]string{"source": c.GetSource(), "features": strconv.FormatUint(uint64(v.GetReferenceFeatures()), 10)}, nil
	})
}

// Where a version's reference profile came from (ModelVersion.reference_source).
const (
	ReferenceFromPush   = "push"
	ReferenceFromCanary = "canary"
)

// CreateVersion applies a create-version command and returns the new
// version. Its number is one more than the highest the model's name was
// ever given: the model's latest_version, or the version mark a deleted
// model of the same name left, whichever is higher. Numbers are never
// reused, not even across a delete and create, so NAME@N always names the
// same bytes; versions are immutable once created.
func (s *Store) CreateVersion(idx uint64, meta *droverv1.CommandMeta, req *droverv1.CreateVersionRequest) (*droverv1.ModelVersion, error) {
	var out *droverv1.ModelVersion
	err := s.write(idx, meta, ActionVersionCreate, func() (string, map[string]string, error) {
		name := req.GetModel()
		target := modelTarget(name)
		m, ok := s.t.models[name]
		if !ok {
			return target, nil, fmt.Errorf("model %q %w", name, ErrNotFound)
		}
		// Copy the request first so the stored version shares nothing with
		// the caller's message.
		r := clone(req)
		v := &droverv1.ModelVersion{
			Model:       name,
			Version:     max(m.GetLatestVersion(), s.t.versionMarks[name]) + 1,
			Artifact:    r.GetArtifact(),
			Card:        r.GetCard(),
			Lineage:     r.GetLineage(),
			Metrics:     r.GetMetrics(),
			Tags:        r.GetTags(),
			Reference:   r.GetReference(),
			CreatedBy:   actorOf(meta),
			CreateIndex: idx,
			ModifyIndex: idx,
		}
		if t := meta.GetTime(); t != nil {
			v.CreateTime = clone(t)
		}
		if ref := v.GetReference(); ref != nil {
			v.ReferenceSource = ReferenceFromPush
			v.ReferenceFeatures = uint32(len(ref.GetInputs()) + len(ref.GetOutputs()))
		}
		if err := validateVersion(v); err != nil {
			return target, nil, err
		}
		if p := v.GetLineage().GetParentVersion(); p != 0 && s.findVersionLocked(name, p) == nil {
			return target, nil, fmt.Errorf("lineage parent version %d is %w: model %q has %s", p, ErrInvalid, name, describeVersions(s.t.versions[name]))
		}
		m = clone(m)
		m.LatestVersion = v.GetVersion()
		m.ModifyIndex = idx
		s.t.models[name] = m
		s.t.versions[name] = append(s.t.versions[name], v)
		// latest_version is past the mark now and carries it on.
		delete(s.t.versionMarks, name)
		out = clone(v)
		details := map[string]string{"version": strconv.FormatUint(v.GetVersion(), 10)}
		if d := v.GetArtifact().GetDigest(); d != "" {
			details["digest"] = d
		}
		// Which keys signed the bytes, so that the audit log says which
		// operator key published a version. The ids are as the request
		// gave them (a push has checked them), so a few are kept, cut
		// short.
		if sigs := v.GetArtifact().GetSigned().GetSignatures(); len(sigs) > 0 {
			var ids []string
			for _, sig := range sigs[:min(len(sigs), maxAuditKeyIDs)] {
				id := sig.GetKeyId()
				ids = append(ids, id[:min(len(id), maxAuditKeyIDBytes)])
			}
			details["signed_by"] = strings.Join(ids, ",")
		}
		return versionTarget(name, v.GetVersion()), details, nil
	})
	return out, err
}

// SetAlias applies a set-alias command: alias now points to version. It
// returns the model and the version the alias pointed to before (0 if the
// alias is new). Setting an alias to the version it already points to
// changes nothing but is still recorded in the audit log.
func (s *Store) SetAlias(idx uint64, meta *droverv1.CommandMeta, model, alias string, version uint64) (m *droverv1.Model, previous uint64, err error) {
	err = s.write(idx, meta, ActionAliasSet, func() (string, map[string]string, error) {
		target := aliasTarget(model, alias)
		if err := ValidateAlias(alias); err != nil {
			return target, nil, err
		}
		cur, ok := s.t.models[model]
		if !ok {
			return target, nil, fmt.Errorf("model %q %w", model, ErrNotFound)
		}
		if version == 0 {
			return target, nil, fmt.Errorf("version 0 is %w: version numbers start at 1", ErrInvalid)
		}
		if s.findVersionLocked(model, version) == nil {
			return target, nil, fmt.Errorf("model %q version %d %w: the model has %s", model, version, ErrNotFound, describeVersions(s.t.versions[model]))
		}
		previous = cur.GetAliases()[alias]
		details := map[string]string{"version": strconv.FormatUint(version, 10)}
		if previous != 0 {
			details["previous"] = strconv.FormatUint(previous, 10)
		}
		if previous != version {
			cur = clone(cur)
			if cur.Aliases == nil {
				cur.Aliases = make(map[string]uint64)
			}
			cur.Aliases[alias] = version
			cur.ModifyIndex = idx
			s.t.models[model] = cur
			// Deployments that follow the alias roll out its new target.
			if moved := s.followAliasLocked(idx, meta, model, alias, version); len(moved) > 0 {
				details["rollouts"] = strings.Join(moved, ",")
			}
		}
		m = clone(cur)
		return target, details, nil
	})
	if err != nil {
		return nil, 0, err
	}
	return m, previous, nil
}

// DeleteAlias applies a delete-alias command. It is refused while a
// deployment follows the alias, which would leave it naming nothing.
func (s *Store) DeleteAlias(idx uint64, meta *droverv1.CommandMeta, model, alias string) error {
	return s.write(idx, meta, ActionAliasDelete, func() (string, map[string]string, error) {
		target := aliasTarget(model, alias)
		cur, ok := s.t.models[model]
		if !ok {
			return target, nil, fmt.Errorf("model %q %w", model, ErrNotFound)
		}
		v, ok := cur.GetAliases()[alias]
		if !ok {
			return target, nil, fmt.Errorf("model %q alias %q %w: the model has %s", model, alias, ErrNotFound, describeAliases(cur))
		}
		if used := s.deploymentsUsingLocked(model, alias); len(used) > 0 {
			return target, nil, &refusal{
				msg: fmt.Sprintf("model %q alias %q is followed by deployment %q: point the deployment at another alias or version (drover deploy apply), or remove it (drover deploy rm %s), first",
					model, alias, used[0], used[0]),
				kind: ErrInUse,
			}
		}
		cur = clone(cur)
		delete(cur.Aliases, alias)
		cur.ModifyIndex = idx
		s.t.models[model] = cur
		return target, map[string]string{"version": strconv.FormatUint(v, 10)}, nil
	})
}

// Model returns the named model.
func (s *Store) Model(name string) (*droverv1.Model, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m, ok := s.t.models[name]
	if !ok {
		return nil, fmt.Errorf("model %q %w", name, ErrNotFound)
	}
	return clone(m), nil
}

// Models returns every model, sorted by name.
func (s *Store) Models() []*droverv1.Model {
	s.mu.RLock()
	out := make([]*droverv1.Model, 0, len(s.t.models))
	for _, m := range s.t.models {
		out = append(out, clone(m))
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *droverv1.Model) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

// Version resolves ref to one version of model. ref is a version number
// ("3"), an alias ("prod") or "latest". The errors say what exists: the
// model's version range or its aliases.
func (s *Store) Version(model, ref string) (*droverv1.ModelVersion, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, err := s.versionLocked(model, ref)
	if err != nil {
		return nil, err
	}
	return clone(v), nil
}

// versionLocked is Version returning the stored version, not a copy.
// s.mu must be held.
func (s *Store) versionLocked(model, ref string) (*droverv1.ModelVersion, error) {
	m, ok := s.t.models[model]
	if !ok {
		return nil, fmt.Errorf("model %q %w", model, ErrNotFound)
	}
	var n uint64
	switch {
	case ref == refLatest:
		n = m.GetLatestVersion()
		if n == 0 {
			return nil, fmt.Errorf("model %q latest version %w: the model has no versions yet", model, ErrNotFound)
		}
	case isNumber(ref):
		var err error
		n, err = strconv.ParseUint(ref, 10, 64)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("model %q version %s %w: the model has %s", model, ref, ErrNotFound, describeVersions(s.t.versions[model]))
		}
	default:
		if ValidateName("alias", ref) != nil {
			return nil, fmt.Errorf("version reference %q is %w: use a version number, an alias or %q", ref, ErrInvalid, refLatest)
		}
		n, ok = m.GetAliases()[ref]
		if !ok {
			return nil, fmt.Errorf("model %q alias %q %w: the model has %s", model, ref, ErrNotFound, describeAliases(m))
		}
	}
	v := s.findVersionLocked(model, n)
	if v == nil {
		return nil, fmt.Errorf("model %q version %d %w: the model has %s", model, n, ErrNotFound, describeVersions(s.t.versions[model]))
	}
	return v, nil
}

// Versions returns every version of model in ascending order.
func (s *Store) Versions(model string) ([]*droverv1.ModelVersion, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, ok := s.t.models[model]; !ok {
		return nil, fmt.Errorf("model %q %w", model, ErrNotFound)
	}
	vs := s.t.versions[model]
	out := make([]*droverv1.ModelVersion, len(vs))
	for i, v := range vs {
		// A reference profile is up to MaxReferenceBytes: listings leave
		// it out (reference_features still says one exists).
		c := clone(v)
		c.Reference = nil
		out[i] = c
	}
	return out, nil
}

// findVersionLocked returns the stored version or nil. s.mu must be held.
func (s *Store) findVersionLocked(model string, n uint64) *droverv1.ModelVersion {
	return findVersion(s.t.versions[model], n)
}

// findVersion returns version n from vs, sorted ascending, or nil.
func findVersion(vs []*droverv1.ModelVersion, n uint64) *droverv1.ModelVersion {
	i, ok := slices.BinarySearchFunc(vs, n, func(v *droverv1.ModelVersion, n uint64) int { return cmp.Compare(v.GetVersion(), n) })
	if !ok {
		return nil
	}
	return vs[i]
}

func sortedAliases(m *droverv1.Model) []string {
	return slices.Sorted(maps.Keys(m.GetAliases()))
}

// describeAliases lists a model's aliases for error messages.
func describeAliases(m *droverv1.Model) string {
	names := sortedAliases(m)
	if len(names) == 0 {
		return "no aliases"
	}
	parts := make([]string, len(names))
	for i, a := range names {
		parts[i] = fmt.Sprintf("%q (v%d)", a, m.GetAliases()[a])
	}
	return "aliases " + strings.Join(parts, ", ")
}

func actorOf(meta *droverv1.CommandMeta) string {
	if a := meta.GetActor(); a != "" {
		return a
	}
	return Anonymous
}
