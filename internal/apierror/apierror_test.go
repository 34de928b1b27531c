package apierror

import (
	"errors"
	"fmt"
	"testing"

	"connectrpc.com/connect"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func TestDetail(t *testing.T) {
	withDetail := connect.NewError(connect.CodeNotFound, errors.New("model \"x\" not found"))
	d, err := connect.NewErrorDetail(&droverv1.ErrorDetail{Reason: droverv1.ErrorReason_ERROR_REASON_NOT_FOUND, Hint: "list models"})
	if err != nil {
		t.Fatal(err)
	}
	withDetail.AddDetail(d)
	bare := connect.NewError(connect.CodeUnavailable, errors.New("proxy says no"))

	for _, tc := range []struct {
		name       string
		err        error
		wantCE     bool
		wantReason droverv1.ErrorReason
		wantHint   string
	}{
		{"detail", withDetail, true, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND, "list models"},
		{"wrapped", fmt.Errorf("get model: %w", withDetail), true, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND, "list models"},
		{"no detail", bare, true, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED, ""},
		{"not connect", errors.New("dial: refused"), false, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED, ""},
		{"nil", nil, false, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED, ""},
	} {
		ce, ed := Detail(tc.err)
		if (ce != nil) != tc.wantCE || ed.GetReason() != tc.wantReason || ed.GetHint() != tc.wantHint {
			t.Errorf("%s: Detail = %v, %v", tc.name, ce, ed)
		}
		if got := Reason(tc.err); got != tc.wantReason {
			t.Errorf("%s: Reason = %s, want %s", tc.name, got, tc.wantReason)
		}
	}
}
