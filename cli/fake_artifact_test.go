package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/artifact"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

var (
	_ droverv1connect.ArtifactServiceHandler = (*fakeArtifact)(nil)
	_ droverv1connect.AgentServiceHandler    = fakeAgentService{}
)

// fakeArtifact is the fake's chunk store and push protocol, checked as
// strictly as a server would: pieces of at most 1 MiB, chunks whose bytes
// match their digest, a push finished only once every chunk is stored.
type fakeArtifact struct {
	f   *fakeServer
	key artifact.SigningKey // the cluster key FinishPush signs with

	mu     sync.Mutex // guards the fields below
	chunks map[artifact.Digest][]byte
	pushes map[string]*droverv1.Manifest // by push id
	keys   map[string][]byte             // GetClusterInfo's manifest_keys
	// signingKeys are the keys KeyService registered, in order.
	signingKeys []*droverv1.SigningKey
	pieces      []int                       // the size of every piece received
	received    []artifact.Digest           // chunks received, in order
	finish      *droverv1.FinishPushRequest // the last FinishPush
	corrupt     map[artifact.Digest]bool    // GetChunk serves these with a byte flipped
	getChunk    int                         // GetChunk calls
	// failAfter, when not 0, makes UploadChunks store that many chunks in
	// all and then fail, as a server going away would.
	failAfter int
}

func newFakeArtifact(f *fakeServer) *fakeArtifact {
	key, err := artifact.SigningKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	if err != nil {
		panic(err)
	}
	return &fakeArtifact{
		f: f, key: key,
		chunks:  map[artifact.Digest][]byte{},
		pushes:  map[string]*droverv1.Manifest{},
		keys:    map[string][]byte{string(key.ID()): key.Public()},
		corrupt: map[artifact.Digest]bool{},
	}
}

// fakeAgentService answers GetClusterInfo from the fake's keys; the CLI
// makes no other AgentService call. It is a type of its own because both
// services have a GetManifest and a GetChunk.
type fakeAgentService struct {
	droverv1connect.UnimplementedAgentServiceHandler // all but GetClusterInfo

	a *fakeArtifact
}

func (s fakeAgentService) GetClusterInfo(context.Context, *connect.Request[droverv1.GetClusterInfoRequest]) (*connect.Response[droverv1.GetClusterInfoResponse], error) {
	a := s.a
	a.mu.Lock()
	defer a.mu.Unlock()
	return connect.NewResponse(&droverv1.GetClusterInfoResponse{ClusterId: "c-7f3a", ManifestKeys: maps.Clone(a.keys)}), nil
}

func invalidArgument(format string, args ...any) error {
	return apiError(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "", format, args...)
}

func (a *fakeArtifact) StartPush(_ context.Context, req *connect.Request[droverv1.StartPushRequest]) (*connect.Response[droverv1.StartPushResponse], error) {
	b := req.Msg.GetManifest().GetManifest()
	m, err := artifact.DecodeManifest(b, artifact.DefaultLimits())
	if err != nil {
		return nil, invalidArgument("%v", err)
	}
	id := artifact.Sum(b).String()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, sig := range req.Msg.GetManifest().GetSignatures() {
		pub, ok := a.keys[sig.GetKeyId()]
		if !ok {
			return nil, apiError(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
				"register it", "the manifest is signed by key %q, which is not registered with this cluster", sig.GetKeyId())
		}
		if err := artifact.VerifySignature(b, sig, pub); err != nil {
			return nil, invalidArgument("%v", err)
		}
	}
	a.pushes[id] = m
	resp := &droverv1.StartPushResponse{PushId: id, ArtifactDigest: id}
	seen := map[artifact.Digest]bool{}
	for _, f := range m.GetFiles() {
		for _, c := range f.GetChunks() {
			d := artifact.Digest(c.GetDigest())
			if a.chunks[d] == nil && !seen[d] {
				seen[d] = true
				resp.Missing = append(resp.Missing, d[:])
			}
		}
	}
	return connect.NewResponse(resp), nil
}

func (a *fakeArtifact) UploadChunks(_ context.Context, stream *connect.ClientStream[droverv1.UploadChunksRequest]) (*connect.Response[droverv1.UploadChunksResponse], error) {
	var (
		cur    artifact.Digest
		size   uint64
		data   []byte
		stored uint32
		total  uint64
	)
	for stream.Receive() {
		msg := stream.Msg()
		a.mu.Lock()
		a.pieces = append(a.pieces, len(msg.GetData()))
		_, known := a.pushes[msg.GetPushId()]
		a.mu.Unlock()
		if !known {
			return nil, invalidArgument("no push %q", msg.GetPushId())
		}
		if len(msg.GetData()) > 1<<20 {
			return nil, invalidArgument("piece of %d bytes, over 1 MiB", len(msg.GetData()))
		}
		if data == nil {
			if len(msg.GetDigest()) != artifact.DigestSize || msg.GetSize() == 0 {
				return nil, invalidArgument("a chunk's first piece must name its digest and size")
			}
			cur, size, data = artifact.Digest(msg.GetDigest()), msg.GetSize(), []byte{}
		} else if len(msg.GetDigest()) != 0 {
			return nil, invalidArgument("chunk %s started before %s ended", artifact.Digest(msg.GetDigest()), cur)
		}
		data = append(data, msg.GetData()...)
		switch {
		case uint64(len(data)) > size:
			return nil, invalidArgument("chunk %s: more than its %d bytes", cur, size)
		case uint64(len(data)) < size:
			continue
		}
		if artifact.Sum(data) != cur {
			return nil, invalidArgument("chunk %s: bytes do not match", cur)
		}
		a.mu.Lock()
		if a.failAfter > 0 && len(a.received) >= a.failAfter {
			a.mu.Unlock()
			return nil, connect.NewError(connect.CodeUnavailable, errors.New("server shutting down"))
		}
		a.chunks[cur] = data
		a.received = append(a.received, cur)
		a.mu.Unlock()
		stored++
		total += size
		data = nil
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	if data != nil {
		return nil, invalidArgument("chunk %s: stream ended after %d of its %d bytes", cur, len(data), size)
	}
	return connect.NewResponse(&droverv1.UploadChunksResponse{Stored: stored, Bytes: total}), nil
}

func (a *fakeArtifact) FinishPush(ctx context.Context, req *connect.Request[droverv1.FinishPushRequest]) (*connect.Response[droverv1.FinishPushResponse], error) {
	r := req.Msg
	b := r.GetManifest().GetManifest()
	digest := artifact.Sum(b)
	a.mu.Lock()
	a.finish = proto.Clone(r).(*droverv1.FinishPushRequest)
	m, ok := a.pushes[digest.String()]
	if !ok {
		a.mu.Unlock()
		return nil, apiError(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "start the push first", "no push %s", digest)
	}
	for _, f := range m.GetFiles() {
		for _, c := range f.GetChunks() {
			if a.chunks[artifact.Digest(c.GetDigest())] == nil {
				a.mu.Unlock()
				return nil, apiError(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
					"upload it", "chunk %s is missing", artifact.Digest(c.GetDigest()))
			}
		}
	}
	a.mu.Unlock()
	sig, err := artifact.Sign(b, a.key)
	if err != nil {
		return nil, err
	}
	signed := &droverv1.SignedManifest{Manifest: b, Signatures: append(slices.Clone(r.GetManifest().GetSignatures()), sig)}

	f := a.f
	f.mu.Lock()
	defer f.mu.Unlock()
	model, err := f.modelLocked(r.GetModel())
	if err != nil {
		return nil, err
	}
	model.LatestVersion++
	idx := f.commitLocked("version.create", "model/"+model.Name)
	v := &droverv1.ModelVersion{
		Model: model.Name, Version: model.LatestVersion,
		Artifact: &droverv1.ArtifactManifest{Digest: digest.String(), SizeBytes: m.GetTotalSize(), Signed: signed},
		Card:     r.GetCard(), Lineage: r.GetLineage(), Metrics: r.GetMetrics(), Tags: r.GetTags(), CreatedBy: "anonymous",
		CreateTime: timestamppb.New(f.created), CreateIndex: idx, ModifyIndex: idx,
	}
	f.versions[model.Name] = append(f.versions[model.Name], v)
	if r.GetAlias() != "" {
		if model.Aliases == nil {
			model.Aliases = map[string]uint64{}
		}
		model.Aliases[r.GetAlias()] = v.Version
	}
	return connect.NewResponse(&droverv1.FinishPushResponse{
		Version: v, DurableOn: []string{"s1", "s2"}, Meta: &droverv1.WriteMeta{Index: idx},
	}), nil
}

func (a *fakeArtifact) GetManifest(ctx context.Context, req *connect.Request[droverv1.GetManifestRequest]) (*connect.Response[droverv1.GetManifestResponse], error) {
	vr, err := a.f.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{Model: req.Msg.GetModel(), Ref: req.Msg.GetRef()}))
	if err != nil {
		return nil, err
	}
	v := vr.Msg.GetVersion()
	return connect.NewResponse(&droverv1.GetManifestResponse{
		Version: v, Manifest: v.GetArtifact().GetSigned(), Meta: vr.Msg.GetMeta(),
	}), nil
}

func (a *fakeArtifact) GetChunk(ctx context.Context, req *connect.Request[droverv1.GetChunkRequest]) (*connect.Response[droverv1.GetChunkResponse], error) {
	vr, err := a.f.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{
		Model: req.Msg.GetModel(), Ref: fmt.Sprint(req.Msg.GetVersion()),
	}))
	if err != nil {
		return nil, err
	}
	m, err := artifact.DecodeManifest(vr.Msg.GetVersion().GetArtifact().GetSigned().GetManifest(), artifact.Limits{})
	if err != nil {
		return nil, err
	}
	d, err := artifact.DigestFromBytes(req.Msg.GetDigest())
	if err != nil {
		return nil, invalidArgument("%v", err)
	}
	listed := slices.ContainsFunc(m.GetFiles(), func(f *droverv1.ManifestFile) bool {
		return slices.ContainsFunc(f.GetChunks(), func(c *droverv1.ManifestChunk) bool { return bytes.Equal(c.GetDigest(), d[:]) })
	})
	a.mu.Lock()
	defer a.mu.Unlock()
	a.getChunk++
	data := a.chunks[d]
	if !listed || data == nil {
		return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND, "", "chunk %s not found", d)
	}
	if a.corrupt[d] {
		data = slices.Clone(data)
		data[len(data)/2] ^= 1
	}
	return connect.NewResponse(&droverv1.GetChunkResponse{Data: data}), nil
}

// fakeKeys serves KeyService: registered keys that are not revoked join
// the fake's manifest keys, which StartPush checks signatures against.
type fakeKeys struct{ a *fakeArtifact }

var _ droverv1connect.KeyServiceHandler = fakeKeys{}

func (k fakeKeys) RegisterKey(_ context.Context, req *connect.Request[droverv1.RegisterKeyRequest]) (*connect.Response[droverv1.RegisterKeyResponse], error) {
	pub := req.Msg.GetPublicKey()
	if len(pub) != ed25519.PublicKeySize {
		return nil, invalidArgument("public key of %d bytes", len(pub))
	}
	id := string(artifact.KeyIDOf(pub))
	a := k.a
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, sk := range a.signingKeys {
		if sk.GetKeyId() == id || (sk.GetName() == req.Msg.GetName() && sk.GetRevokeIndex() == 0) {
			return nil, apiError(connect.CodeAlreadyExists, droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS, "", "signing key %q already exists", req.Msg.GetName())
		}
	}
	f := a.f
	f.mu.Lock()
	idx := f.commitLocked("key.register", "key/"+id)
	f.mu.Unlock()
	sk := &droverv1.SigningKey{
		Name: req.Msg.GetName(), KeyId: id, PublicKey: pub, Description: req.Msg.GetDescription(),
		CreateIndex: idx, CreateTime: timestamppb.New(f.created), CreatedByName: "bootstrap",
	}
	a.signingKeys = append(a.signingKeys, sk)
	a.keys[id] = pub
	return connect.NewResponse(&droverv1.RegisterKeyResponse{Key: proto.Clone(sk).(*droverv1.SigningKey), Meta: &droverv1.WriteMeta{Index: idx}}), nil
}

func (k fakeKeys) ListKeys(context.Context, *connect.Request[droverv1.ListKeysRequest]) (*connect.Response[droverv1.ListKeysResponse], error) {
	a := k.a
	a.mu.Lock()
	defer a.mu.Unlock()
	out := &droverv1.ListKeysResponse{}
	for _, sk := range a.signingKeys {
		out.Keys = append(out.Keys, proto.Clone(sk).(*droverv1.SigningKey))
	}
	return connect.NewResponse(out), nil
}

func (k fakeKeys) RevokeKey(_ context.Context, req *connect.Request[droverv1.RevokeKeyRequest]) (*connect.Response[droverv1.RevokeKeyResponse], error) {
	a := k.a
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, sk := range a.signingKeys {
		if sk.GetKeyId() == req.Msg.GetKey() || (sk.GetName() == req.Msg.GetKey() && sk.GetRevokeIndex() == 0) {
			f := a.f
			f.mu.Lock()
			idx := f.commitLocked("key.revoke", "key/"+sk.GetKeyId())
			f.mu.Unlock()
			sk.RevokeIndex = idx
			sk.RevokeTime = timestamppb.New(f.created.Add(time.Hour))
			delete(a.keys, sk.GetKeyId())
			return connect.NewResponse(&droverv1.RevokeKeyResponse{Key: proto.Clone(sk).(*droverv1.SigningKey), Meta: &droverv1.WriteMeta{Index: idx}}), nil
		}
	}
	return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND, "list them with drover key ls", "signing key %q not found", req.Msg.GetKey())
}
