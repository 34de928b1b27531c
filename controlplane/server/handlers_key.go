package server

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"slices"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/artifact"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// keyHandler serves KeyService: the operators' manifest signing keys.
type keyHandler struct{ s *Server }

var _ droverv1connect.KeyServiceHandler = (*keyHandler)(nil)

// RegisterKey registers an operator's public key. The private half never
// reaches the cluster: the CLI generates it, or the operator brings the
// public half of a key kept elsewhere.
func (h *keyHandler) RegisterKey(ctx context.Context, req *connect.Request[droverv1.RegisterKeyRequest]) (*connect.Response[droverv1.RegisterKeyResponse], error) {
	pub := req.Msg.GetPublicKey()
	if len(pub) != ed25519.PublicKeySize {
		// Refused before it costs a log entry.
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			fmt.Sprintf("public key of %d bytes; an Ed25519 public key is %d", len(pub), ed25519.PublicKeySize),
			"send the 32-byte key: `drover key import` reads it from a PEM file")
	}
	if artifact.KeyIDOf(pub) == h.s.signingKey.ID() {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			fmt.Sprintf("key %s is the cluster's own signing key, which every agent trusts already", h.s.signingKey.ID()),
			"register an operator's key: make one with `drover key create NAME`")
	}
	meta := commandMeta(ctx)
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_REGISTER_SIGNING_KEY, &droverv1.RegisterSigningKeyCommand{
		Meta: meta,
		Key: &droverv1.SigningKey{
			Name: req.Msg.GetName(), PublicKey: pub, Description: req.Msg.GetDescription(), CreateTime: meta.GetTime(),
		},
	})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.RegisterKeyResponse{
		Key: res.Value.(*droverv1.SigningKey), Meta: &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

func (h *keyHandler) ListKeys(ctx context.Context, req *connect.Request[droverv1.ListKeysRequest]) (*connect.Response[droverv1.ListKeysResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&droverv1.ListKeysResponse{Keys: h.s.state.SigningKeys(), Meta: meta}), nil
}

// RevokeKey stops trusting a key for new pushes, and tells agents (through
// GetClusterInfo) to stop trusting manifests signed only by it.
func (h *keyHandler) RevokeKey(ctx context.Context, req *connect.Request[droverv1.RevokeKeyRequest]) (*connect.Response[droverv1.RevokeKeyResponse], error) {
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_REVOKE_SIGNING_KEY,
		&droverv1.RevokeSigningKeyCommand{Meta: commandMeta(ctx), Key: req.Msg.GetKey()})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.RevokeKeyResponse{
		Key: res.Value.(*droverv1.SigningKey), Meta: &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

// maxPushSignatures bounds the signatures a pushed manifest may carry:
// each costs a verification, and a manifest needs one or two.
const maxPushSignatures = 8

// checkPushSignatures refuses a pushed manifest unless every signature it
// carries is a good one by a key the cluster trusts now: its own, or an
// operator's key that is registered and not revoked. The server keeps the
// signatures with the version and countersigns, so it vouches for each;
// agents, which accept one good signature (artifact.Verify), never see a
// signature the cluster did not check when it was pushed.
func (s *Server) checkPushSignatures(signed *droverv1.SignedManifest) error {
	sigs := signed.GetSignatures()
	if len(sigs) > maxPushSignatures {
		return apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			fmt.Sprintf("the manifest carries %d signatures, more than the %d a push may", len(sigs), maxPushSignatures),
			"sign it with one key (--sign-key)")
	}
	trusted, _ := s.manifestTrust()
	for _, sig := range sigs {
		id := sig.GetKeyId()
		pub, ok := trusted[artifact.KeyID(id)]
		if !ok {
			k, err := s.state.SigningKey(id)
			if err == nil && k.GetKeyId() == id && k.GetRevokeIndex() != 0 {
				when := ""
				if t := k.GetRevokeTime(); t != nil {
					when = " at " + t.AsTime().UTC().Format("2006-01-02 15:04:05Z")
				}
				return apiErr(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
					fmt.Sprintf("the manifest is signed by key %q (%s), which was revoked%s", k.GetName(), id, when),
					"sign with a key that is not revoked (drover key ls), or make a new one with `drover key create NAME`")
			}
			return apiErr(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
				fmt.Sprintf("the manifest is signed by key %s, which is not registered with this cluster", quoteKeyID(id)),
				"register its public key with `drover key import NAME --public FILE`, or sign with a registered key (drover key ls)")
		}
		if err := artifact.VerifySignature(signed.GetManifest(), sig, pub); err != nil {
			return apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
				fmt.Sprintf("the manifest's signature by key %s does not verify: %v", quoteKeyID(id), err),
				"the manifest changed after it was signed, or the signature is not by that key: push again")
		}
	}
	return nil
}

// quoteKeyID quotes a key id from a request, cut short: it could be of any
// length.
func quoteKeyID(id string) string {
	const most = 32
	if len(id) > most {
		return fmt.Sprintf("%q…", id[:most])
	}
	return fmt.Sprintf("%q", id)
}

// manifestTrust returns the public keys a version's manifest may be signed
// with, by key id: the cluster's own key and the operators' keys that are
// not revoked; and the ids of the revoked operator keys, sorted.
func (s *Server) manifestTrust() (map[artifact.KeyID]ed25519.PublicKey, []string) {
	trusted, revoked := s.state.TrustedSigningKeys()
	trusted[s.signingKey.ID()] = s.signingKey.Public()
	// The cluster's key is never registered; should a snapshot say
	// otherwise, agents must still trust it.
	revoked = slices.DeleteFunc(revoked, func(id string) bool { return id == string(s.signingKey.ID()) })
	return trusted, revoked
}

// hasSignatureBy reports whether signed carries a signature by the key id.
func hasSignatureBy(signed *droverv1.SignedManifest, id artifact.KeyID) bool {
	return slices.ContainsFunc(signed.GetSignatures(), func(s *droverv1.ManifestSignature) bool {
		return s.GetKeyId() == string(id)
	})
}
