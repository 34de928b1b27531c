package server

import (
	"context"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/controlplane/acl"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// modelHandler serves the model registry. Writes are checked here first so
// malformed requests never reach the log; the state machine checks again
// on apply, because only it sees the state the write lands on.
type modelHandler struct{ s *Server }

var _ droverv1connect.ModelServiceHandler = (*modelHandler)(nil)

func (h *modelHandler) CreateModel(ctx context.Context, req *connect.Request[droverv1.CreateModelRequest]) (*connect.Response[droverv1.CreateModelResponse], error) {
	if err := state.ValidateName("model", req.Msg.GetName()); err != nil {
		return nil, toAPIError(err)
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_CREATE_MODEL,
		&droverv1.CreateModelCommand{Meta: commandMeta(ctx), Request: req.Msg})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.CreateModelResponse{
		Model: res.Value.(*droverv1.Model),
		Meta:  &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

func (h *modelHandler) ListModels(ctx context.Context, req *connect.Request[droverv1.ListModelsRequest]) (*connect.Response[droverv1.ListModelsResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	models := readable(ctx, h.s.state.Models(), droverv1.ACLResource_ACL_RESOURCE_MODEL,
		func(m *droverv1.Model) acl.Object { return acl.Object{Name: m.GetName()} })
	return connect.NewResponse(&droverv1.ListModelsResponse{Models: models, Meta: meta}), nil
}

func (h *modelHandler) GetModel(ctx context.Context, req *connect.Request[droverv1.GetModelRequest]) (*connect.Response[droverv1.GetModelResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	m, err := h.s.state.Model(req.Msg.GetName())
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.GetModelResponse{Model: m, Meta: meta}), nil
}

func (h *modelHandler) DeleteModel(ctx context.Context, req *connect.Request[droverv1.DeleteModelRequest]) (*connect.Response[droverv1.DeleteModelResponse], error) {
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_DELETE_MODEL,
		&droverv1.DeleteModelCommand{Meta: commandMeta(ctx), Name: req.Msg.GetName()})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.DeleteModelResponse{Meta: &droverv1.WriteMeta{Index: res.Index}}), nil
}

func (h *modelHandler) CreateVersion(ctx context.Context, req *connect.Request[droverv1.CreateVersionRequest]) (*connect.Response[droverv1.CreateVersionResponse], error) {
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_CREATE_VERSION,
		&droverv1.CreateVersionCommand{Meta: commandMeta(ctx), Request: req.Msg})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.CreateVersionResponse{
		Version: res.Value.(*droverv1.ModelVersion),
		Meta:    &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

func (h *modelHandler) ListVersions(ctx context.Context, req *connect.Request[droverv1.ListVersionsRequest]) (*connect.Response[droverv1.ListVersionsResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	vs, err := h.s.state.Versions(req.Msg.GetModel())
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.ListVersionsResponse{Versions: vs, Meta: meta}), nil
}

func (h *modelHandler) GetVersion(ctx context.Context, req *connect.Request[droverv1.GetVersionRequest]) (*connect.Response[droverv1.GetVersionResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	ref := req.Msg.GetRef()
	if ref == "" {
		ref = "latest"
	}
	v, err := h.s.state.Version(req.Msg.GetModel(), ref)
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.GetVersionResponse{Version: v, Meta: meta}), nil
}

func (h *modelHandler) SetAlias(ctx context.Context, req *connect.Request[droverv1.SetAliasRequest]) (*connect.Response[droverv1.SetAliasResponse], error) {
	if err := state.ValidateName("alias", req.Msg.GetAlias()); err != nil {
		return nil, toAPIError(err)
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_SET_ALIAS, &droverv1.SetAliasCommand{
		Meta: commandMeta(ctx), Model: req.Msg.GetModel(), Alias: req.Msg.GetAlias(), Version: req.Msg.GetVersion(),
	})
	if err != nil {
		return nil, toAPIError(err)
	}
	out := res.Value.(*droverv1.SetAliasResponse)
	out.Meta = &droverv1.WriteMeta{Index: res.Index}
	return connect.NewResponse(out), nil
}

func (h *modelHandler) DeleteAlias(ctx context.Context, req *connect.Request[droverv1.DeleteAliasRequest]) (*connect.Response[droverv1.DeleteAliasResponse], error) {
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_DELETE_ALIAS, &droverv1.DeleteAliasCommand{
		Meta: commandMeta(ctx), Model: req.Msg.GetModel(), Alias: req.Msg.GetAlias(),
	})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.DeleteAliasResponse{Meta: &droverv1.WriteMeta{Index: res.Index}}), nil
}
