package fetch

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/internal/atomicfile"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// DefaultMaxManifestBytes is the largest signed manifest a Store accepts
// unless told otherwise: enough for a model of about a hundred thousand
// chunks, small enough that a hostile server cannot make a node decode
// hundreds of megabytes.
const DefaultMaxManifestBytes = 16 << 20

// Phase is where a pull stands, as Progress reports it.
type Phase string

// The phases of a pull, in order; it ends in PhaseDone or PhaseFailed.
const (
	PhaseVerifying  Phase = "verifying"
	PhaseFetching   Phase = "fetching"
	PhaseAssembling Phase = "assembling"
	PhaseDone       Phase = "done"
	PhaseFailed     Phase = "failed"
)

// Progress is a snapshot of a pull.
type Progress struct {
	Phase Phase
	// BytesDone of BytesTotal are the bytes of the version's distinct
	// chunks now in the cache.
	BytesDone, BytesTotal int64
	// BytesFromServers and BytesFromPeers are the bytes this pull fetched,
	// split by kind of source (see PeerSource).
	BytesFromServers, BytesFromPeers int64
}

// PeerSource is a Source that is another node rather than a control-plane
// server; Progress counts its bytes apart. Sources that do not implement
// it count as servers.
type PeerSource interface {
	Source
	Peer() bool
}

// StoreOptions shape a Store; zero fields take their defaults.
type StoreOptions struct {
	// MaxManifestBytes bounds a signed manifest's bytes. Zero means
	// DefaultMaxManifestBytes.
	MaxManifestBytes int
	// BytesPerSecond caps the bytes a pull reads from all its sources;
	// zero means no cap.
	BytesPerSecond int64
	// Now is the clock trust records are stamped with; nil means
	// time.Now.
	Now func() time.Time
	// FreeSpace is as in Options; nil means the operating system's
	// figure.
	FreeSpace func(path string) (free, device uint64, err error)
}

// Validate checks the options.
func (o StoreOptions) Validate() error {
	switch {
	case o.MaxManifestBytes < 0:
		return fmt.Errorf("manifest size limit %d is negative", o.MaxManifestBytes)
	case o.BytesPerSecond < 0:
		return fmt.Errorf("bandwidth cap %d B/s is negative", o.BytesPerSecond)
	}
	return nil
}

// Installed is a version a Store assembled.
type Installed struct {
	Version uint64 `json:"version"`
	// Digest is the signed manifest's SHA-256, "sha256:<hex>".
	Digest string `json:"digest"`
	// Size is the bytes of its files.
	Size int64 `json:"size"`
	// Time is when it was assembled, on the node's clock.
	Time time.Time `json:"time"`
}

// modelState is what a Store keeps of one model, in
// <root>/models/<model>/state.json.
type modelState struct {
	Current  *Installed `json:"current,omitempty"`
	Previous *Installed `json:"previous,omitempty"`
}

// model is a Store's view of one model; the manifests are those of its
// current and previous versions, by version, decoded.
type model struct {
	state     modelState
	trust     TrustRecord
	manifests map[uint64]*droverv1.Manifest
}

// Store keeps the versions a node pulled: each in
// <root>/versions/<model>/<version>, assembled from the chunk cache in one
// atomic step; the current and previous version of each model, whose
// chunks it keeps protected in the cache so a rollback or the next delta
// pull finds them; and a trust record per model (TrustRecord) that
// refuses a manifest that would roll the node back. What it knows is
// written under <root>/models before Pull returns, so a restarted agent
// knows its versions, and a pull interrupted by a crash fetches only the
// chunks the cache lacks when it is made again.
//
// A Store is safe for concurrent use; pulls run one at a time. Two Stores
// must not share a root.
type Store struct {
	root  string
	cache *Cache
	opts  StoreOptions

	pullMu sync.Mutex // held for the whole of a pull

	mu     sync.Mutex // guards the fields below
	models map[string]*model
}

// OpenStore opens or creates the store in root, using cache for chunks.
// It reads what earlier runs recorded and protects the chunks of every
// model's current and previous version in the cache.
func OpenStore(root string, cache *Cache, opts StoreOptions) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("open version store %s: %w", root, err)
	}
	if cache == nil {
		return nil, fmt.Errorf("open version store %s: no chunk cache", root)
	}
	if opts.MaxManifestBytes == 0 {
		opts.MaxManifestBytes = DefaultMaxManifestBytes
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Store{root: root, cache: cache, opts: opts, models: make(map[string]*model)}
	if err := os.MkdirAll(filepath.Join(root, "models"), 0o700); err != nil {
		return nil, fmt.Errorf("open version store: %w", err)
	}
	entries, err := os.ReadDir(filepath.Join(root, "models"))
	if err != nil {
		return nil, fmt.Errorf("open version store: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() || checkModelName(e.Name()) != nil {
			continue
		}
		m, err := s.loadModel(e.Name())
		if err != nil {
			return nil, fmt.Errorf("open version store %s: model %s: %w", root, e.Name(), err)
		}
		s.models[e.Name()] = m
	}
	s.protectLocked()
	return s, nil
}

// Cache is the chunk cache the store assembles versions from.
func (s *Store) Cache() *Cache { return s.cache }

func (s *Store) modelDir(name string) string { return filepath.Join(s.root, "models", name) }

func (s *Store) manifestPath(name string, v uint64) string {
	return filepath.Join(s.modelDir(name), "manifests", strconv.FormatUint(v, 10)+".pb")
}

// VersionDir is where version v of model is (or would be) assembled.
func (s *Store) VersionDir(model string, v uint64) string {
	return filepath.Join(s.root, "versions", model, strconv.FormatUint(v, 10))
}

func (s *Store) loadModel(name string) (*model, error) {
	m := &model{trust: TrustRecord{Model: name}, manifests: make(map[uint64]*droverv1.Manifest)}
	if err := loadJSON(filepath.Join(s.modelDir(name), "state.json"), &m.state); err != nil {
		return nil, err
	}
	if err := loadJSON(filepath.Join(s.modelDir(name), "trust.json"), &m.trust); err != nil {
		return nil, err
	}
	m.trust.Model = name
	for _, in := range []*Installed{m.state.Current, m.state.Previous} {
		if in == nil {
			continue
		}
		b, err := os.ReadFile(s.manifestPath(name, in.Version))
		if err != nil {
			return nil, err
		}
		var signed droverv1.SignedManifest
		if err := proto.Unmarshal(b, &signed); err != nil {
			return nil, fmt.Errorf("manifest of version %d: %w", in.Version, err)
		}
		// Verified when it was pulled; decoded again only to know its
		// chunks.
		man, err := artifact.DecodeManifest(signed.GetManifest(), artifact.Limits{})
		if err != nil {
			return nil, fmt.Errorf("manifest of version %d: %w", in.Version, err)
		}
		m.manifests[in.Version] = man
	}
	return m, nil
}

// protectLocked protects the chunks of every model's current and previous
// version.
func (s *Store) protectLocked() {
	var ms []*droverv1.Manifest
	for _, m := range s.models {
		for _, man := range m.manifests {
			ms = append(ms, man)
		}
	}
	s.cache.Protect(ms...)
}

// Current returns the version of model the last successful pull
// assembled.
func (s *Store) Current(model string) (Installed, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.models[model]; m != nil && m.state.Current != nil {
		return *m.state.Current, true
	}
	return Installed{}, false
}

// Previous returns the version of model that was current before the
// current one.
func (s *Store) Previous(model string) (Installed, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.models[model]; m != nil && m.state.Previous != nil {
		return *m.state.Previous, true
	}
	return Installed{}, false
}

// Trust returns a copy of model's trust record.
func (s *Store) Trust(model string) TrustRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := TrustRecord{Model: model}
	if m := s.models[model]; m != nil {
		r.Versions = append(r.Versions, m.trust.Versions...)
	}
	return r
}

// KeyFunc returns the manifest signing keys to trust. refresh asks for
// them afresh, as when a manifest is signed by a key the last answer did
// not hold.
type KeyFunc func(ctx context.Context, refresh bool) (map[artifact.KeyID]ed25519.PublicKey, error)

// PullRequest says which version to pull and how.
type PullRequest struct {
	Model   string
	Version uint64
	// ArtifactDigest is the signed manifest's digest the control plane
	// recorded for the version, "sha256:<hex>"; the manifest fetched must
	// have it.
	ArtifactDigest string
	// Manifest fetches the version's signed manifest.
	Manifest func(ctx context.Context) (*droverv1.SignedManifest, error)
	// Keys returns the keys manifests must be signed by.
	Keys KeyFunc
	// Sources serve the chunks, in order of preference.
	Sources []Source
	// Progress, if set, is called as the pull moves on; calls never
	// overlap and must return quickly.
	Progress func(Progress)
}

// Result is what a successful pull made.
type Result struct {
	// Dir is the version directory.
	Dir       string
	Installed Installed
	// AlreadyCurrent is set when the version was current already and
	// nothing was fetched.
	AlreadyCurrent bool
	Stats          Stats
}

// Pull makes version req.Version of req.Model the model's current one,
// assembled in VersionDir. A version already current (with the same
// digest, its directory present) is not pulled again. Otherwise Pull gets
// the signed manifest and refuses it, before a chunk is fetched, when:
//
//   - it is larger than StoreOptions.MaxManifestBytes (ErrManifestTooLarge);
//   - no trusted key signed it, after asking Keys afresh once
//     (artifact.ErrUnknownKey), or a signature does not verify, or it
//     breaks the format, such as a path outside the version directory
//     (artifact errors);
//   - its digest is not req.ArtifactDigest, or it names another model
//     (ErrManifestMismatch);
//   - the trust record rules it out (ErrManifestConflict,
//     ErrManifestReplay; see TrustRecord.Check).
//
// Then it records the manifest as trusted and fetches what the cache
// lacks (see the package's Pull; a full disk is ErrNoSpace). On any
// failure the model's current and previous versions are as they were.
// On success the new version becomes current, the one current before
// becomes previous, and version directories of the model that are
// neither are removed.
func (s *Store) Pull(ctx context.Context, req PullRequest) (Result, error) {
	res, err := s.pull(ctx, req)
	if err != nil {
		return res, fmt.Errorf("pull %s@%d: %w", req.Model, req.Version, err)
	}
	return res, nil
}

func (s *Store) pull(ctx context.Context, req PullRequest) (Result, error) {
	if err := checkModelName(req.Model); err != nil {
		return Result{}, err
	}
	if req.Version == 0 {
		return Result{}, errors.New("no version: versions count from 1")
	}
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	dir := s.VersionDir(req.Model, req.Version)
	progress := func(p Progress) {
		if req.Progress != nil {
			req.Progress(p)
		}
	}

	if cur, ok := s.Current(req.Model); ok && cur.Version == req.Version &&
		(req.ArtifactDigest == "" || req.ArtifactDigest == cur.Digest) {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			progress(Progress{Phase: PhaseDone, BytesDone: cur.Size, BytesTotal: cur.Size})
			return Result{Dir: dir, Installed: cur, AlreadyCurrent: true}, nil
		}
	}

	progress(Progress{Phase: PhaseVerifying})
	signed, man, digest, err := s.verify(ctx, req)
	if err != nil {
		return Result{}, err
	}

	peers := make(map[string]bool)
	for _, src := range req.Sources {
		if p, ok := src.(PeerSource); ok && p.Peer() {
			peers[src.Name()] = true
		}
	}
	var cur Progress
	opts := Options{
		Cache:          s.cache,
		BytesPerSecond: s.opts.BytesPerSecond,
		// The agents of a site pulling the same version at once would
		// otherwise all ask the same chunks' owners at the same moment.
		RandomOrder: len(peers) > 0,
		FreeSpace:   s.opts.FreeSpace,
		Progress: func(done, total int64) {
			cur.BytesDone, cur.BytesTotal = done, total
			cur.Phase = PhaseFetching
			if done == total {
				cur.Phase = PhaseAssembling
			}
			progress(cur)
		},
		Fetched: func(source string, n int64) {
			if peers[source] {
				cur.BytesFromPeers += n
			} else {
				cur.BytesFromServers += n
			}
		},
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return Result{}, err
	}
	st, err := Pull(ctx, man, dir, req.Sources, opts)
	if err != nil {
		return Result{Stats: st}, err
	}
	in := Installed{Version: req.Version, Digest: digest.String(), Size: int64(man.GetTotalSize()), Time: s.opts.Now()}
	if err := s.install(req.Model, in, signed, man); err != nil {
		return Result{Stats: st}, err
	}
	cur.Phase = PhaseDone
	cur.BytesDone = cur.BytesTotal
	progress(cur)
	return Result{Dir: dir, Installed: in, Stats: st}, nil
}

// verify gets, checks and trusts the manifest of req's version.
func (s *Store) verify(ctx context.Context, req PullRequest) (*droverv1.SignedManifest, *droverv1.Manifest, artifact.Digest, error) {
	signed, err := req.Manifest(ctx)
	if err != nil {
		return nil, nil, artifact.Digest{}, fmt.Errorf("get manifest: %w", err)
	}
	if n := len(signed.GetManifest()); n > s.opts.MaxManifestBytes {
		return nil, nil, artifact.Digest{}, fmt.Errorf("the manifest is %d bytes, over this node's limit of %d (--max-manifest-size): %w",
			n, s.opts.MaxManifestBytes, ErrManifestTooLarge)
	}
	limits := artifact.DefaultLimits()
	limits.MaxManifestBytes = s.opts.MaxManifestBytes
	var man *droverv1.Manifest
	var digest artifact.Digest
	for refresh := false; ; refresh = true {
		keys, err := req.Keys(ctx, refresh)
		if err != nil {
			return nil, nil, artifact.Digest{}, fmt.Errorf("get manifest signing keys: %w", err)
		}
		man, digest, err = artifact.Verify(signed, keys, limits)
		if err == nil {
			break
		}
		if refresh || !errors.Is(err, artifact.ErrUnknownKey) {
			return nil, nil, digest, err
		}
	}
	if req.ArtifactDigest != "" && digest.String() != req.ArtifactDigest {
		return nil, nil, digest, fmt.Errorf("the manifest served is %s, but the control plane recorded %s for the version: %w",
			digest, req.ArtifactDigest, ErrManifestMismatch)
	}
	if m := man.GetModel(); m != "" && m != req.Model {
		return nil, nil, digest, fmt.Errorf("the manifest was signed for model %s: %w", m, ErrManifestMismatch)
	}
	created := man.GetCreateTime().AsTime()
	if man.GetCreateTime() == nil {
		created = time.Time{}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.modelLocked(req.Model)
	if err := m.trust.Check(req.Version, digest.String(), created); err != nil {
		return nil, nil, digest, err
	}
	next := TrustRecord{Model: req.Model, Versions: append([]TrustedManifest(nil), m.trust.Versions...)}
	if next.add(TrustedManifest{Version: req.Version, Digest: digest.String(), CreateTime: created, TrustTime: s.opts.Now()}) {
		if err := saveJSON(filepath.Join(s.modelDir(req.Model), "trust.json"), &next); err != nil {
			return nil, nil, digest, fmt.Errorf("record the manifest as trusted: %w", err)
		}
		m.trust = next
	}
	return signed, man, digest, nil
}

func (s *Store) modelLocked(name string) *model {
	m := s.models[name]
	if m == nil {
		m = &model{trust: TrustRecord{Model: name}, manifests: make(map[uint64]*droverv1.Manifest)}
		s.models[name] = m
	}
	return m
}

// install records in as the model's current version, keeping the one
// before as previous, and removes what neither needs.
func (s *Store) install(name string, in Installed, signed *droverv1.SignedManifest, man *droverv1.Manifest) error {
	b, err := proto.Marshal(signed)
	if err != nil {
		return err
	}
	path := s.manifestPath(name, in.Version)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("keep the manifest: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.modelLocked(name)
	next := modelState{Current: &in, Previous: m.state.Previous}
	if c := m.state.Current; c != nil && c.Version != in.Version {
		next.Previous = c
	}
	if err := saveJSON(filepath.Join(s.modelDir(name), "state.json"), &next); err != nil {
		return fmt.Errorf("record the version: %w", err)
	}
	m.state = next
	keep := map[uint64]bool{in.Version: true}
	if next.Previous != nil {
		keep[next.Previous.Version] = true
	}
	manifests := map[uint64]*droverv1.Manifest{in.Version: man}
	if p := next.Previous; p != nil {
		manifests[p.Version] = m.manifests[p.Version]
	}
	m.manifests = manifests
	s.protectLocked()
	// What no version needs any more goes; failing that costs disk only.
	s.removeExceptLocked(filepath.Join(s.root, "versions", name), "", keep)
	s.removeExceptLocked(filepath.Join(s.modelDir(name), "manifests"), ".pb", keep)
	return nil
}

// removeExceptLocked removes the entries of dir named <version><suffix>
// whose version is not in keep.
func (s *Store) removeExceptLocked(dir, suffix string, keep map[uint64]bool) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		v, err := strconv.ParseUint(strings.TrimSuffix(e.Name(), suffix), 10, 64)
		if err != nil || keep[v] || !strings.HasSuffix(e.Name(), suffix) {
			continue
		}
		_ = os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// checkModelName refuses a model name that is not one path component:
// it names directories.
func checkModelName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) || !filepath.IsLocal(name) {
		return fmt.Errorf("model name %q cannot name a directory", name)
	}
	return nil
}
