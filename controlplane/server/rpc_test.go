package server

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Each credential refusal of the state reaches the wire with a reason and
// a hint of its own, and the code a client expects: Unauthenticated for a
// join token, PermissionDenied for a node that was revoked.
func TestToAPIErrorCredentialRefusals(t *testing.T) {
	tests := []struct {
		err    error
		code   connect.Code
		reason droverv1.ErrorReason
		hint   string // in the hint
	}{
		{state.ErrTokenInvalid, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID, "whole token string"},
		{state.ErrTokenExpired, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED, "--ttl"},
		{state.ErrTokenRevoked, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_REVOKED, "revoked by an operator"},
		{state.ErrTokenUsedUp, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_USED_UP, "--max-uses"},
		{state.ErrNodeRevoked, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED, "identity file"},
	}
	hints := map[string]error{}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			in := fmt.Errorf("join token %q: %w", "abcdefgh", tt.err)
			var ce *connect.Error
			if !errors.As(toAPIError(in), &ce) {
				t.Fatalf("toAPIError(%v) is no connect error", in)
			}
			var detail *droverv1.ErrorDetail
			for _, d := range ce.Details() {
				if v, err := d.Value(); err == nil {
					detail, _ = v.(*droverv1.ErrorDetail)
				}
			}
			if ce.Code() != tt.code || detail.GetReason() != tt.reason {
				t.Errorf("toAPIError(%v) = %v %v, want %v %v", in, ce.Code(), detail.GetReason(), tt.code, tt.reason)
			}
			if ce.Message() != in.Error() {
				t.Errorf("message %q, want the state's %q", ce.Message(), in)
			}
			if h := detail.GetHint(); !strings.Contains(h, tt.hint) {
				t.Errorf("hint %q does not say %q", h, tt.hint)
			}
			if prev, dup := hints[detail.GetHint()]; dup {
				t.Errorf("%v and %v share the hint %q", prev, tt.err, detail.GetHint())
			}
			hints[detail.GetHint()] = tt.err
		})
	}
}
