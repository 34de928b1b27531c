// Package apierror reads the ErrorDetail that Drover servers attach to
// every API error, for the programs that call the API: the CLI, the agent,
// and the tests and scenarios that check refusals.
package apierror

import (
	"errors"

	"connectrpc.com/connect"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Detail returns the Connect error in err and the ErrorDetail the server
// attached to it. Either may be nil: an error from the transport is no
// Connect error, and one from a proxy or an older server carries no
// detail.
func Detail(err error) (*connect.Error, *droverv1.ErrorDetail) {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return nil, nil
	}
	for _, d := range ce.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if ed, ok := v.(*droverv1.ErrorDetail); ok {
			return ce, ed
		}
	}
	return ce, nil
}

// Reason returns the stable reason of err's ErrorDetail, or
// ERROR_REASON_UNSPECIFIED when it carries none.
func Reason(err error) droverv1.ErrorReason {
	_, d := Detail(err)
	return d.GetReason()
}
