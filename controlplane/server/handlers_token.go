package server

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/acl"
	"github.com/droverhq/drover/internal/jointoken"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// defaultJoinTokenTTL is how long a join token lives when the request
// does not say.
const defaultJoinTokenTTL = time.Hour

// tokenHandler serves join-token management.
type tokenHandler struct{ s *Server }

var _ droverv1connect.TokenServiceHandler = (*tokenHandler)(nil)

// CreateToken makes a join token. The secret is generated here and only
// its hash enters the log; the token string is returned this once.
func (h *tokenHandler) CreateToken(ctx context.Context, req *connect.Request[droverv1.CreateTokenRequest]) (*connect.Response[droverv1.CreateTokenResponse], error) {
	ttl := defaultJoinTokenTTL
	if d := req.Msg.GetTtl(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
				"ttl is not a valid duration: "+err.Error(), "")
		}
		ttl = d.AsDuration()
	}
	if ttl < 0 {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			"ttl "+ttl.String()+" is negative", "use 0 for a token that never expires")
	}
	tok, err := jointoken.New(h.s.ca.Fingerprint())
	if err != nil {
		return nil, apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, err.Error(), "")
	}
	meta := commandMeta(ctx)
	sum := tok.SecretHash()
	jt := &droverv1.JoinToken{
		Id:           tok.ID,
		SecretSha256: sum[:],
		Description:  req.Msg.GetDescription(),
		Labels:       req.Msg.GetLabels(),
		Site:         req.Msg.GetSite(),
		CreateTime:   meta.GetTime(),
		MaxUses:      req.Msg.GetMaxUses(),
	}
	if ttl > 0 {
		jt.ExpireTime = timestamppb.New(meta.GetTime().AsTime().Add(ttl))
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_CREATE_JOIN_TOKEN,
		&droverv1.CreateJoinTokenCommand{Meta: meta, Token: jt})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.CreateTokenResponse{
		Token:       publicJoinToken(res.Value.(*droverv1.JoinToken)),
		TokenString: tok.String(),
		Meta:        &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

func (h *tokenHandler) ListTokens(ctx context.Context, req *connect.Request[droverv1.ListTokensRequest]) (*connect.Response[droverv1.ListTokensResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	tokens := readable(ctx, h.s.state.JoinTokens(), droverv1.ACLResource_ACL_RESOURCE_JOIN_TOKEN,
		func(t *droverv1.JoinToken) acl.Object { return acl.Object{Site: t.GetSite()} })
	for _, t := range tokens {
		publicJoinToken(t)
	}
	return connect.NewResponse(&droverv1.ListTokensResponse{Tokens: tokens, Meta: meta}), nil
}

func (h *tokenHandler) RevokeToken(ctx context.Context, req *connect.Request[droverv1.RevokeTokenRequest]) (*connect.Response[droverv1.RevokeTokenResponse], error) {
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_REVOKE_JOIN_TOKEN,
		&droverv1.RevokeJoinTokenCommand{Meta: commandMeta(ctx), Id: req.Msg.GetId()})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.RevokeTokenResponse{Meta: &droverv1.WriteMeta{Index: res.Index}}), nil
}

// publicJoinToken is what the API shows of a join token: everything but
// the hash of its secret, which only the server needs. Like publicToken it
// changes the caller's own copy.
func publicJoinToken(t *droverv1.JoinToken) *droverv1.JoinToken {
	t.SecretSha256 = nil
	return t
}
