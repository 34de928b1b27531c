package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/acl"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// bootstrapTokenName names the management token bootstrap creates.
const bootstrapTokenName = "bootstrap"

// aclHandler serves operator tokens and policies.
type aclHandler struct{ s *Server }

var _ droverv1connect.ACLServiceHandler = (*aclHandler)(nil)

// newSecret returns a token's accessor id, its secret, and the secret's
// hash, the only form of it that enters the log.
func newSecret() (accessor, secret string, sum [32]byte, err error) {
	if accessor, err = randomID(); err != nil {
		return "", "", sum, err
	}
	if secret, err = randomID(); err != nil {
		return "", "", sum, err
	}
	return accessor, secret, sha256.Sum256([]byte(secret)), nil
}

// Bootstrap mints the management token. The secret is generated here, on
// the leader, and only its hash enters the log; the state machine refuses
// a second bootstrap, so two racing callers cannot both get a token.
func (h *aclHandler) Bootstrap(ctx context.Context, _ *connect.Request[droverv1.BootstrapRequest]) (*connect.Response[droverv1.BootstrapResponse], error) {
	accessor, secret, sum, err := newSecret()
	if err != nil {
		return nil, err
	}
	now := timestamppb.Now()
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_BOOTSTRAP_ACL, &droverv1.BootstrapACLCommand{
		Meta: &droverv1.CommandMeta{Time: now, Actor: "anonymous"},
		Token: &droverv1.ACLToken{
			AccessorId:   accessor,
			SecretSha256: sum[:],
			Name:         bootstrapTokenName,
			Description:  "Bootstrap management token",
			Policies:     []string{acl.PolicyManagement},
			CreateTime:   now,
		},
	})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.BootstrapResponse{
		AccessorId: accessor,
		SecretId:   secret,
		Meta:       &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

func (h *aclHandler) CreateToken(ctx context.Context, req *connect.Request[droverv1.CreateACLTokenRequest]) (*connect.Response[droverv1.CreateACLTokenResponse], error) {
	m := req.Msg
	if ttl := m.GetTtl(); ttl != nil && (ttl.CheckValid() != nil || ttl.AsDuration() < 0) {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			fmt.Sprintf("ttl %s is not a valid duration of zero or more", ttl.AsDuration()), "give --ttl as 24h, 30m, …; 0 never expires")
	}
	accessor, secret, sum, err := newSecret()
	if err != nil {
		return nil, err
	}
	meta := commandMeta(ctx)
	tok := &droverv1.ACLToken{
		AccessorId:   accessor,
		SecretSha256: sum[:],
		Name:         m.GetName(),
		Description:  m.GetDescription(),
		Policies:     m.GetPolicies(),
		CreateTime:   meta.GetTime(),
		CreatedBy:    meta.GetActor(),
	}
	if d := m.GetTtl().AsDuration(); d > 0 {
		tok.ExpireTime = timestamppb.New(meta.GetTime().AsTime().Add(d))
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_CREATE_ACL_TOKEN,
		&droverv1.CreateACLTokenCommand{Meta: meta, Token: tok})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.CreateACLTokenResponse{
		Token:    publicToken(res.Value),
		SecretId: secret,
		Meta:     &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

// publicToken is what the API shows of a token: everything but the hash of
// its secret, which would let anyone who reads it guess offline. The
// token is the caller's own copy (state reads and write results are), so
// it is changed in place.
func publicToken(v any) *droverv1.ACLToken {
	t, _ := v.(*droverv1.ACLToken)
	if t != nil {
		t.SecretSha256 = nil
	}
	return t
}

func (h *aclHandler) ListTokens(ctx context.Context, req *connect.Request[droverv1.ListACLTokensRequest]) (*connect.Response[droverv1.ListACLTokensResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	tokens := h.s.state.ACLTokens()
	for _, t := range tokens {
		publicToken(t)
	}
	return connect.NewResponse(&droverv1.ListACLTokensResponse{Tokens: tokens, Meta: meta}), nil
}

func (h *aclHandler) GetToken(ctx context.Context, req *connect.Request[droverv1.GetACLTokenRequest]) (*connect.Response[droverv1.GetACLTokenResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	t, err := h.s.state.ACLToken(req.Msg.GetId())
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.GetACLTokenResponse{Token: publicToken(t), Meta: meta}), nil
}

func (h *aclHandler) GetTokenSelf(ctx context.Context, req *connect.Request[droverv1.GetACLTokenSelfRequest]) (*connect.Response[droverv1.GetACLTokenResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	t, err := h.s.state.ACLToken(callerFrom(ctx).token.GetAccessorId())
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.GetACLTokenResponse{Token: publicToken(t), Meta: meta}), nil
}

// tokenAccessor resolves a token named by accessor id or name.
func (h *aclHandler) tokenAccessor(idOrName string) (string, error) {
	if idOrName == "" {
		return "", apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			"no token given", "name a token by accessor id or name; `drover acl token ls` lists them")
	}
	t, err := h.s.state.ACLToken(idOrName)
	if err != nil {
		return "", toAPIError(err)
	}
	return t.GetAccessorId(), nil
}

func (h *aclHandler) RevokeToken(ctx context.Context, req *connect.Request[droverv1.RevokeACLTokenRequest]) (*connect.Response[droverv1.RevokeACLTokenResponse], error) {
	accessor, err := h.tokenAccessor(req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_REVOKE_ACL_TOKEN,
		&droverv1.RevokeACLTokenCommand{Meta: commandMeta(ctx), AccessorId: accessor})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.RevokeACLTokenResponse{Meta: &droverv1.WriteMeta{Index: res.Index}}), nil
}

func (h *aclHandler) RotateToken(ctx context.Context, req *connect.Request[droverv1.RotateACLTokenRequest]) (*connect.Response[droverv1.RotateACLTokenResponse], error) {
	accessor, err := h.tokenAccessor(req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	_, secret, sum, err := newSecret()
	if err != nil {
		return nil, err
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_ROTATE_ACL_TOKEN,
		&droverv1.RotateACLTokenCommand{Meta: commandMeta(ctx), AccessorId: accessor, SecretSha256: sum[:]})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.RotateACLTokenResponse{
		Token:    publicToken(res.Value),
		SecretId: secret,
		Meta:     &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

func (h *aclHandler) ApplyPolicy(ctx context.Context, req *connect.Request[droverv1.ApplyACLPolicyRequest]) (*connect.Response[droverv1.ApplyACLPolicyResponse], error) {
	p := req.Msg.GetPolicy()
	// Checked here too, not only by the state machine, so a bad policy
	// never costs a log entry.
	if err := acl.ValidatePolicy(p); err != nil {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error(),
			"fix the policy file; `drover acl policy apply --help` shows the format")
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_APPLY_ACL_POLICY,
		&droverv1.ApplyACLPolicyCommand{Meta: commandMeta(ctx), Policy: p})
	if err != nil {
		return nil, toAPIError(err)
	}
	out, _ := res.Value.(*droverv1.ApplyACLPolicyResponse)
	return connect.NewResponse(&droverv1.ApplyACLPolicyResponse{
		Policy:   out.GetPolicy(),
		Replaced: out.GetReplaced(),
		Meta:     &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

func (h *aclHandler) ListPolicies(ctx context.Context, req *connect.Request[droverv1.ListACLPoliciesRequest]) (*connect.Response[droverv1.ListACLPoliciesResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	policies := append(acl.Builtin(), h.s.state.ACLPolicies()...)
	return connect.NewResponse(&droverv1.ListACLPoliciesResponse{Policies: policies, Meta: meta}), nil
}

func (h *aclHandler) GetPolicy(ctx context.Context, req *connect.Request[droverv1.GetACLPolicyRequest]) (*connect.Response[droverv1.GetACLPolicyResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	name := req.Msg.GetName()
	for _, p := range acl.Builtin() {
		if p.GetName() == name {
			return connect.NewResponse(&droverv1.GetACLPolicyResponse{Policy: p, Meta: meta}), nil
		}
	}
	p, err := h.s.state.ACLPolicy(name)
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.GetACLPolicyResponse{Policy: p, Meta: meta}), nil
}

func (h *aclHandler) DeletePolicy(ctx context.Context, req *connect.Request[droverv1.DeleteACLPolicyRequest]) (*connect.Response[droverv1.DeleteACLPolicyResponse], error) {
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_DELETE_ACL_POLICY,
		&droverv1.DeleteACLPolicyCommand{Meta: commandMeta(ctx), Name: req.Msg.GetName()})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.DeleteACLPolicyResponse{Meta: &droverv1.WriteMeta{Index: res.Index}}), nil
}

// randomID returns a random UUID-shaped string (version 4).
func randomID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random id: %w", err)
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}
