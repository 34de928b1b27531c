package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// aclHandler serves operator-token management.
type aclHandler struct{ s *Server }

var _ droverv1connect.ACLServiceHandler = (*aclHandler)(nil)

// Bootstrap mints the management token. The secret is generated here, on
// the leader, and only its hash enters the log; the state machine refuses
// a second bootstrap, so two racing callers cannot both get a token.
func (h *aclHandler) Bootstrap(ctx context.Context, _ *connect.Request[droverv1.BootstrapRequest]) (*connect.Response[droverv1.BootstrapResponse], error) {
	secret, err := randomID()
	if err != nil {
		return nil, err
	}
	accessor, err := randomID()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(secret))
	now := timestamppb.Now()
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_BOOTSTRAP_ACL, &droverv1.BootstrapACLCommand{
		Meta: &droverv1.CommandMeta{Time: now, Actor: "anonymous"},
		Token: &droverv1.ACLToken{
			AccessorId:   accessor,
			SecretSha256: sum[:],
			Description:  "Bootstrap management token",
			Policies:     []string{"management"},
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
