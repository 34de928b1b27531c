package server

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

var errACLPending = errors.New("operator tokens and policies are being built")

func (h *aclHandler) CreateToken(context.Context, *connect.Request[droverv1.CreateACLTokenRequest]) (*connect.Response[droverv1.CreateACLTokenResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errACLPending)
}
func (h *aclHandler) ListTokens(context.Context, *connect.Request[droverv1.ListACLTokensRequest]) (*connect.Response[droverv1.ListACLTokensResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errACLPending)
}
func (h *aclHandler) GetToken(context.Context, *connect.Request[droverv1.GetACLTokenRequest]) (*connect.Response[droverv1.GetACLTokenResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errACLPending)
}
func (h *aclHandler) GetTokenSelf(context.Context, *connect.Request[droverv1.GetACLTokenSelfRequest]) (*connect.Response[droverv1.GetACLTokenResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errACLPending)
}
func (h *aclHandler) RevokeToken(context.Context, *connect.Request[droverv1.RevokeACLTokenRequest]) (*connect.Response[droverv1.RevokeACLTokenResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errACLPending)
}
func (h *aclHandler) RotateToken(context.Context, *connect.Request[droverv1.RotateACLTokenRequest]) (*connect.Response[droverv1.RotateACLTokenResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errACLPending)
}
func (h *aclHandler) ApplyPolicy(context.Context, *connect.Request[droverv1.ApplyACLPolicyRequest]) (*connect.Response[droverv1.ApplyACLPolicyResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errACLPending)
}
func (h *aclHandler) ListPolicies(context.Context, *connect.Request[droverv1.ListACLPoliciesRequest]) (*connect.Response[droverv1.ListACLPoliciesResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errACLPending)
}
func (h *aclHandler) GetPolicy(context.Context, *connect.Request[droverv1.GetACLPolicyRequest]) (*connect.Response[droverv1.GetACLPolicyResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errACLPending)
}
func (h *aclHandler) DeletePolicy(context.Context, *connect.Request[droverv1.DeleteACLPolicyRequest]) (*connect.Response[droverv1.DeleteACLPolicyResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errACLPending)
}
func (h *clusterHandler) RecordDenials(context.Context, *connect.Request[droverv1.RecordDenialsRequest]) (*connect.Response[droverv1.RecordDenialsResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errACLPending)
}
