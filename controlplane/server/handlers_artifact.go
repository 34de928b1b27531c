package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/controlplane/acl"
	"github.com/droverhq/drover/controlplane/blobstore"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// artifactHandler serves ArtifactService: pushing a version's bytes into
// the cluster and reading them back (agents read them through it too). StartPush, UploadChunks and GetChunk
// are served by the server that receives them; FinishPush and
// GetManifest by the leader.
type artifactHandler struct {
	s *Server

	mu     sync.Mutex                        // guards chunks
	chunks map[string]map[blobstore.Key]bool // chunk sets by artifact digest
}

var _ droverv1connect.ArtifactServiceHandler = (*artifactHandler)(nil)

// maxChunkSetCache bounds the manifests whose chunk sets GetChunk keeps
// decoded: a large manifest takes tens of MB to decode, and agents fetch
// the chunks of a few versions at a time.
const maxChunkSetCache = 8

// pushedManifest is a manifest received from a pusher, checked.
type pushedManifest struct {
	signed   *droverv1.SignedManifest
	manifest *droverv1.Manifest
	digest   artifact.Digest
	sizes    map[blobstore.Key]int64 // each distinct chunk once
	keys     []blobstore.Key         // the same, in manifest order
}

// checkManifest decodes and validates a pushed manifest, and verifies its
// signatures when it carries any: each must be a good one by a key the
// cluster trusts (see checkPushSignatures).
func (s *Server) checkManifest(signed *droverv1.SignedManifest) (*pushedManifest, error) {
	limits := s.artifactLimits()
	b := signed.GetManifest()
	var (
		m   *droverv1.Manifest
		err error
	)
	if limits.MaxManifestBytes > 0 && len(b) > limits.MaxManifestBytes {
		// Refused before a signature is checked over it.
		_, err = artifact.DecodeManifest(b, limits)
	} else {
		if err := s.checkPushSignatures(signed); err != nil {
			return nil, err
		}
		m, err = artifact.DecodeManifest(b, limits)
	}
	if err != nil {
		hint := "build the manifest again with a current drover"
		if errors.Is(err, artifact.ErrTooLarge) {
			hint = fmt.Sprintf("this cluster takes versions of at most %d bytes (max_version_bytes); split the model or raise the limit", s.cfg.MaxVersionBytes)
		}
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error(), hint)
	}
	pm := &pushedManifest{signed: signed, manifest: m, digest: artifact.Sum(b), sizes: make(map[blobstore.Key]int64)}
	for _, f := range m.GetFiles() {
		for _, c := range f.GetChunks() {
			k := blobstore.Key(c.GetDigest())
			if _, ok := pm.sizes[k]; !ok {
				pm.sizes[k] = int64(c.GetSize())
				pm.keys = append(pm.keys, k)
			}
		}
	}
	return pm, nil
}

// modelLagWait is how long a server waits for a model it does not know
// yet to arrive in its state: a model created a moment ago through the
// leader reaches a follower with the next log entries it receives.
const modelLagWait = 3 * time.Second

// requireModel refuses a push to a model that does not exist.
func (s *Server) requireModel(ctx context.Context, model string) error {
	ctx, cancel := context.WithTimeout(ctx, modelLagWait)
	defer cancel()
	for {
		idx := s.state.Index()
		_, err := s.state.Model(model)
		if err == nil {
			return nil
		}
		e := toAPIError(err)
		if connect.CodeOf(e) != connect.CodeNotFound {
			return e
		}
		if ctx.Err() != nil || s.IsLeader() {
			return apiErr(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
				fmt.Sprintf("model %q does not exist", model), "create it first with `drover model create "+model+"`")
		}
		if _, err := s.state.WaitForIndex(ctx, idx); err != nil {
			return connect.NewError(connect.CodeCanceled, err) // the caller went away
		}
	}
}

func (h *artifactHandler) StartPush(ctx context.Context, req *connect.Request[droverv1.StartPushRequest]) (*connect.Response[droverv1.StartPushResponse], error) {
	pm, err := h.s.checkManifest(req.Msg.GetManifest())
	if err != nil {
		return nil, err
	}
	if err := h.s.requireModel(ctx, req.Msg.GetModel()); err != nil {
		return nil, err
	}
	id := pm.digest.String()
	// Pinned before Missing is asked, so that nothing reported present
	// can be collected before FinishPush.
	h.s.pushes.start(id, req.Msg.GetModel(), pm.sizes)
	out := &droverv1.StartPushResponse{PushId: id, ArtifactDigest: id}
	for _, k := range h.s.chunks.Missing(pm.keys) {
		out.Missing = append(out.Missing, k[:])
	}
	return connect.NewResponse(out), nil
}

func (h *artifactHandler) UploadChunks(ctx context.Context, stream *connect.ClientStream[droverv1.UploadChunksRequest]) (*connect.Response[droverv1.UploadChunksResponse], error) {
	var p *push
	var pushID string
	next := func() (piece, error) {
		if !stream.Receive() {
			if err := stream.Err(); err != nil {
				return piece{}, err
			}
			return piece{}, io.EOF
		}
		m := stream.Msg()
		if p == nil {
			pushID = m.GetPushId()
			if p = h.s.pushes.get(pushID); p == nil {
				return piece{}, apiErr(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
					fmt.Sprintf("push %q is not active on server %s: it expired, or was started on another server", pushID, h.s.cfg.Name),
					"start the push again (StartPush) on this server; chunks already stored are not sent again")
			}
			if err := h.mayWrite(ctx, p); err != nil {
				return piece{}, err
			}
		} else if id := m.GetPushId(); id != "" && id != pushID {
			return piece{}, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
				fmt.Sprintf("one upload names two pushes, %q and %q", pushID, id), "upload each push's chunks in its own stream")
		}
		h.s.pushes.touch(p)
		return piece{digest: m.GetDigest(), size: m.GetSize(), data: m.GetData()}, nil
	}
	n, bytes, err := receiveChunks(ctx, h.s.chunks, next, func(k blobstore.Key, size int64) error {
		want, ok := p.sizes[k]
		if !ok {
			return apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
				fmt.Sprintf("chunk %s is not in the manifest of push %s", artifact.Digest(k), pushID),
				"upload only the chunks StartPush reported missing")
		}
		if want != size {
			return apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
				fmt.Sprintf("chunk %s is %d bytes in the manifest of push %s, but the upload says %d", artifact.Digest(k), want, pushID, size),
				"the file changed since the manifest was built; build it again and push again")
		}
		return nil
	})
	if err != nil {
		return nil, h.s.chunkError(err)
	}
	return connect.NewResponse(&droverv1.UploadChunksResponse{Stored: n, Bytes: bytes}), nil
}

// mayWrite checks that the caller may write a model the push is for: the
// interceptor checked only that it may write some model, since a stream's
// first message, which names the push, arrives after it ran.
func (h *artifactHandler) mayWrite(ctx context.Context, p *push) error {
	c := callerFrom(ctx)
	if c == nil {
		// Unreachable: the interceptor admits only operator tokens.
		return apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING,
			"this call needs a token", "pass --token or set DROVER_TOKEN")
	}
	h.s.pushes.mu.Lock()
	models := make([]string, 0, len(p.models))
	for m := range p.models {
		models = append(models, m)
	}
	h.s.pushes.mu.Unlock()
	slices.Sort(models)
	for _, m := range models {
		if c.allows(droverv1.ACLResource_ACL_RESOURCE_MODEL, droverv1.ACLAccess_ACL_ACCESS_WRITE, acl.Object{Name: m}) {
			return nil
		}
	}
	proc := droverv1connect.ArtifactServiceUploadChunksProcedure
	capability, _ := acl.ForProcedure(proc)
	ref := acl.Ref{Name: models[0]}
	err := permissionDenied(c, capability, ref)
	h.s.denials.add(h.s.denial(c, proc, capability, ref, err))
	return err
}

func (h *artifactHandler) FinishPush(ctx context.Context, req *connect.Request[droverv1.FinishPushRequest]) (*connect.Response[droverv1.FinishPushResponse], error) {
	pm, err := h.s.checkManifest(req.Msg.GetManifest())
	if err != nil {
		return nil, err
	}
	if err := h.s.requireModel(ctx, req.Msg.GetModel()); err != nil {
		return nil, err
	}
	if a := req.Msg.GetAlias(); a != "" {
		// Checked before any chunk is copied.
		if err := state.ValidateName("alias", a); err != nil {
			return nil, toAPIError(err)
		}
	}
	// Kept from GC on this server while chunks are copied through it.
	release := h.s.chunks.Pin(pm.keys...)
	defer release()
	durable, err := h.s.replicate(ctx, pm)
	if err != nil {
		return nil, err
	}

	// The cluster countersigns what an operator signed: the version stays
	// trusted by agents after the operator's key is revoked, since it was
	// pushed while the key was good. Only a copy of the manifest that
	// leaves the cluster without the countersignature loses trust.
	signed := pm.signed
	if !hasSignatureBy(signed, h.s.signingKey.ID()) {
		sig, err := artifact.Sign(signed.GetManifest(), h.s.signingKey)
		if err != nil {
			return nil, apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, err.Error(), "")
		}
		signed = &droverv1.SignedManifest{
			Manifest:   signed.GetManifest(),
			Signatures: append(slices.Clone(signed.GetSignatures()), sig),
		}
	}
	am := &droverv1.ArtifactManifest{
		Digest:    pm.digest.String(),
		SizeBytes: pm.manifest.GetTotalSize(),
		Format:    guessFormat(pm.manifest),
		Signed:    signed,
	}
	for _, f := range pm.manifest.GetFiles() {
		am.Files = append(am.Files, &droverv1.ArtifactFile{Path: f.GetPath(), SizeBytes: f.GetSize()})
	}
	cv := &droverv1.CreateVersionRequest{
		Model: req.Msg.GetModel(), Artifact: am, Card: req.Msg.GetCard(),
		Lineage: req.Msg.GetLineage(), Metrics: req.Msg.GetMetrics(), Tags: req.Msg.GetTags(),
		Reference: req.Msg.GetReference(),
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_CREATE_VERSION,
		&droverv1.CreateVersionCommand{Meta: commandMeta(ctx), Request: cv})
	if err != nil {
		return nil, toAPIError(err)
	}
	v := res.Value.(*droverv1.ModelVersion)
	index := res.Index
	// The version now holds its chunks against garbage collection; a push
	// this server received ends here (elsewhere it expires when idle).
	h.s.pushes.finish(pm.digest.String())
	if a := req.Msg.GetAlias(); a != "" {
		res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_SET_ALIAS, &droverv1.SetAliasCommand{
			Meta: commandMeta(ctx), Model: req.Msg.GetModel(), Alias: a, Version: v.GetVersion(),
		})
		if err != nil {
			e := toAPIError(err)
			return nil, apiErr(connect.CodeOf(e), droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED,
				fmt.Sprintf("version %d of %s was created, but alias %q was not set: %v", v.GetVersion(), req.Msg.GetModel(), a, err),
				fmt.Sprintf("set it with `drover model alias set %s %s %d`", req.Msg.GetModel(), a, v.GetVersion()))
		}
		index = res.Index
	}
	return connect.NewResponse(&droverv1.FinishPushResponse{
		Version: v, DurableOn: durable, Meta: &droverv1.WriteMeta{Index: index},
	}), nil
}

// replicate makes every chunk of pm durable on a quorum of the Raft
// voters, copying chunks through this server where too few hold them, and
// returns the voters that hold every chunk.
func (s *Server) replicate(ctx context.Context, pm *pushedManifest) ([]string, error) {
	voters, err := s.voters()
	if err != nil {
		return nil, s.raftError(err)
	}
	quorum := len(voters)/2 + 1
	missing := make(map[string]map[blobstore.Key]bool, len(voters))
	reachable := make([]voter, 0, len(voters))
	for _, v := range voters {
		m, err := s.missingOn(ctx, v, pm.keys)
		if err != nil {
			s.logger.Warn("push: cannot ask a server which chunks it lacks", "peer", v.name, "err", err)
			continue
		}
		missing[v.name] = m
		reachable = append(reachable, v)
	}
	if len(reachable) < quorum {
		return nil, apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
			fmt.Sprintf("only %d of %d servers answered, and the chunks must be on %d", len(reachable), len(voters), quorum),
			"start or reconnect servers, then finish the push again")
	}
	holders := func(k blobstore.Key) []voter {
		var out []voter
		for _, v := range reachable {
			if !missing[v.name][k] {
				out = append(out, v)
			}
		}
		return out
	}

	var self voter
	for _, v := range reachable {
		if v.self {
			self = v
		}
	}
	// What this server must fetch first, by the peer it fetches from.
	fetch := make(map[string][]blobstore.Key)
	// Where each under-replicated chunk goes, by target.
	put := make(map[string][]blobstore.Key)
	lost := 0
	for _, k := range pm.keys {
		hs := holders(k)
		if len(hs) >= quorum {
			continue
		}
		if len(hs) == 0 {
			lost++
			continue
		}
		if self.name != "" && missing[self.name][k] {
			fetch[hs[0].apiAddr] = append(fetch[hs[0].apiAddr], k)
			hs = append(hs, self) // once fetched
		}
		for _, v := range reachable {
			if len(hs) >= quorum {
				break
			}
			if missing[v.name][k] && !v.self {
				put[v.name] = append(put[v.name], k)
				hs = append(hs, v)
			}
		}
	}
	if lost > 0 {
		return nil, apiErr(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			fmt.Sprintf("%d of the manifest's %d chunks are on no server", lost, len(pm.keys)),
			"push again: the upload did not finish")
	}
	if self.name == "" && len(put) > 0 {
		return nil, apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_INTERNAL,
			"this server cannot read its own chunk store", "finish the push again")
	}
	for addr, keys := range fetch {
		if err := s.fetchChunks(ctx, addr, keys); err != nil {
			return nil, s.copyError("fetch chunks from "+addr, err)
		}
		for _, k := range keys {
			delete(missing[self.name], k)
		}
		s.logger.Info("push: fetched chunks to replicate them", "from", addr, "chunks", len(keys))
	}
	for name, keys := range put {
		var addr string
		for _, v := range reachable {
			if v.name == name {
				addr = v.apiAddr
			}
		}
		if err := s.putChunks(ctx, addr, keys); err != nil {
			return nil, s.copyError("copy chunks to "+name, err)
		}
		for _, k := range keys {
			delete(missing[name], k)
		}
		s.logger.Info("push: copied chunks to reach a quorum", "to", name, "chunks", len(keys))
	}
	var durable []string
	for _, v := range reachable {
		if len(missing[v.name]) == 0 {
			durable = append(durable, v.name)
		}
	}
	return durable, nil
}

// copyError reports a failed copy between servers.
func (s *Server) copyError(what string, err error) error {
	if ce := s.chunkError(err); connect.CodeOf(ce) == connect.CodeResourceExhausted {
		return ce
	}
	return apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED,
		fmt.Sprintf("%s: %v", what, err), "finish the push again; chunks already copied are not copied again")
}

// guessFormat names the model format from the files' extensions.
func guessFormat(m *droverv1.Manifest) string {
	has := make(map[string]bool)
	for _, f := range m.GetFiles() {
		has[strings.ToLower(path.Ext(f.GetPath()))] = true
	}
	for _, ext := range []string{".onnx", ".gguf", ".safetensors"} {
		if has[ext] {
			return ext[1:]
		}
	}
	return "files"
}

func (h *artifactHandler) GetManifest(ctx context.Context, req *connect.Request[droverv1.GetManifestRequest]) (*connect.Response[droverv1.GetManifestResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	v, signed, err := h.manifest(req.Msg.GetModel(), req.Msg.GetRef())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&droverv1.GetManifestResponse{Version: v, Manifest: signed, Meta: meta}), nil
}

// manifest resolves a version reference ("latest" when empty) and returns
// the version with its signed manifest; operators and agents share it.
func (h *artifactHandler) manifest(model, ref string) (*droverv1.ModelVersion, *droverv1.SignedManifest, error) {
	if ref == "" {
		ref = "latest"
	}
	v, err := h.s.state.Version(model, ref)
	if err != nil {
		return nil, nil, toAPIError(err)
	}
	signed := v.GetArtifact().GetSigned()
	if signed == nil {
		return nil, nil, apiErr(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			fmt.Sprintf("version %d of %s was created from a bare digest; its bytes are not in the cluster", v.GetVersion(), model),
			"push the model's files with `drover model push` to make a version the cluster can serve")
	}
	return v, signed, nil
}

func (h *artifactHandler) GetChunk(ctx context.Context, req *connect.Request[droverv1.GetChunkRequest]) (*connect.Response[droverv1.GetChunkResponse], error) {
	data, err := h.chunk(ctx, req.Msg.GetModel(), req.Msg.GetVersion(), req.Msg.GetDigest())
	if err != nil {
		return nil, err
	}
	h.s.metrics.servedToOperators.Add(float64(len(data)))
	return connect.NewResponse(&droverv1.GetChunkResponse{Data: data}), nil
}

// chunk returns a chunk the version's manifest lists, copying it from a
// peer first when this server lacks it; operators and agents share it.
func (h *artifactHandler) chunk(ctx context.Context, model string, version uint64, digest []byte) ([]byte, error) {
	rc, size, err := h.openChunk(ctx, model, version, digest)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data := make([]byte, size)
	if _, err := io.ReadFull(rc, data); err != nil {
		return nil, h.s.chunkError(fmt.Errorf("read chunk %x: %w", digest, err))
	}
	return data, nil
}

// openChunk opens a chunk the version's manifest lists, copying it from a
// peer first when this server lacks it, and returns it with its size.
func (h *artifactHandler) openChunk(ctx context.Context, model string, version uint64, digest []byte) (io.ReadSeekCloser, int64, error) {
	d, err := artifact.DigestFromBytes(digest)
	if err != nil {
		return nil, 0, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error(), "send a 32-byte SHA-256 digest")
	}
	v, err := h.s.state.Version(model, strconv.FormatUint(version, 10))
	if err != nil {
		return nil, 0, toAPIError(err)
	}
	set, err := h.chunkSet(v)
	if err != nil {
		return nil, 0, err
	}
	k := blobstore.Key(d)
	if !set[k] {
		return nil, 0, apiErr(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			fmt.Sprintf("version %d of %s has no chunk %s", version, model, d), "ask for the chunks its manifest lists (GetManifest)")
	}
	if !h.s.chunks.Has(k) {
		if err := h.s.fetchFromPeers(ctx, k); err != nil {
			return nil, 0, err
		}
	}
	rc, size, err := h.s.chunks.Open(k)
	if err != nil {
		return nil, 0, h.s.chunkError(err)
	}
	return rc, size, nil
}

// chunkSet returns the chunks a version's manifest lists, decoded once
// per artifact.
func (h *artifactHandler) chunkSet(v *droverv1.ModelVersion) (map[blobstore.Key]bool, error) {
	signed := v.GetArtifact().GetSigned()
	if signed == nil {
		return nil, apiErr(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			fmt.Sprintf("version %d was created from a bare digest; its bytes are not in the cluster", v.GetVersion()), "")
	}
	id := v.GetArtifact().GetDigest()
	h.mu.Lock()
	set, ok := h.chunks[id]
	h.mu.Unlock()
	if ok {
		return set, nil
	}
	// The state checked the digest on apply; the limits were checked at
	// push time, and may have been lowered since, so none apply here.
	m, err := artifact.DecodeManifest(signed.GetManifest(), artifact.Limits{})
	if err != nil {
		return nil, apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, err.Error(), "")
	}
	set = make(map[blobstore.Key]bool)
	for _, f := range m.GetFiles() {
		for _, c := range f.GetChunks() {
			set[blobstore.Key(c.GetDigest())] = true
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.chunks == nil {
		h.chunks = make(map[string]map[blobstore.Key]bool)
	}
	if len(h.chunks) >= maxChunkSetCache {
		for old := range h.chunks {
			delete(h.chunks, old)
			break
		}
	}
	h.chunks[id] = set
	return set, nil
}

// fetchFromPeers copies a chunk this server lacks from the first voter
// that has it.
func (s *Server) fetchFromPeers(ctx context.Context, k blobstore.Key) error {
	voters, err := s.voters()
	if err != nil {
		return s.raftError(err)
	}
	var errs []error
	for _, v := range voters {
		if v.self || v.apiAddr == "" {
			continue
		}
		err := s.fetchChunks(ctx, v.apiAddr, []blobstore.Key{k})
		if err == nil {
			s.logger.Info("fetched a chunk from a peer to serve it", "chunk", artifact.Digest(k), "peer", v.name)
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", v.name, err))
	}
	return apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED,
		fmt.Sprintf("server %s lacks chunk %s and no other server gave it: %v", s.cfg.Name, artifact.Digest(k), errors.Join(errs...)),
		"retry against another server")
}
