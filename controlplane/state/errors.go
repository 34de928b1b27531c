package state

import (
	"context"
	"errors"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Sentinel errors. Every error the store's writes, reads and restores
// return wraps exactly one of them (WaitForIndex returns the context's), so
// callers branch with errors.Is (or map to the wire with [Reason]) and never
// on message text. Messages are deterministic: refusals are recorded
// verbatim in the replicated audit log, which must be identical on every
// server.
var (
	// ErrNotFound: the model, version, alias, token, join token or node
	// does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: an object with that name already exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrInvalid: the request breaks a validation rule; the message names
	// the rule.
	ErrInvalid = errors.New("invalid")
	// ErrInUse: the object is still referenced (a model by an alias) and
	// cannot be deleted yet; the message says what to remove first.
	ErrInUse = errors.New("in use")
	// ErrACLBootstrapped: the management token was already created.
	ErrACLBootstrapped = errors.New("ACL system already bootstrapped")
	// ErrClusterInitialized: the cluster identity is set once and for all.
	ErrClusterInitialized = errors.New("cluster already initialized")
	// ErrSnapshotInvalid: a snapshot stream is truncated, garbled,
	// inconsistent or in a format this server does not read.
	ErrSnapshotInvalid = errors.New("invalid snapshot")
	// ErrTokenInvalid: an enrollment named a join token that does not
	// exist or gave the wrong secret. The two are deliberately one error,
	// so that an agent learns nothing about which token ids exist; the
	// audit event's details tell an operator which it was.
	ErrTokenInvalid = errors.New("invalid join token")
	// ErrTokenRevoked: the join token was revoked.
	ErrTokenRevoked = errors.New("join token revoked")
	// ErrTokenExpired: the join token's expire_time is not after the
	// enrollment command's time.
	ErrTokenExpired = errors.New("join token expired")
	// ErrTokenUsedUp: the join token has been used max_uses times.
	ErrTokenUsedUp = errors.New("join token used up")
	// ErrConflict: a conditional write found the object at another
	// revision than the caller expected.
	ErrConflict = errors.New("conflict")
	// ErrNodeRevoked: the node was revoked; its agent must enroll again
	// with a new join token.
	ErrNodeRevoked = errors.New("node revoked")
)

// Reason maps an error from this package to the stable wire reason that
// clients branch on. A nil error maps to ERROR_REASON_UNSPECIFIED, an error
// that wraps none of the sentinels to ERROR_REASON_INTERNAL.
func Reason(err error) droverv1.ErrorReason {
	switch {
	case err == nil:
		return droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED
	case errors.Is(err, ErrNotFound):
		return droverv1.ErrorReason_ERROR_REASON_NOT_FOUND
	case errors.Is(err, ErrAlreadyExists), errors.Is(err, ErrClusterInitialized):
		// The wire has no reason of its own for a second cluster init; to a
		// client it is one more thing that already exists.
		return droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS
	case errors.Is(err, ErrInvalid):
		return droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT
	case errors.Is(err, ErrInUse):
		return droverv1.ErrorReason_ERROR_REASON_IN_USE
	case errors.Is(err, ErrACLBootstrapped):
		return droverv1.ErrorReason_ERROR_REASON_ACL_ALREADY_BOOTSTRAPPED
	case errors.Is(err, ErrSnapshotInvalid):
		return droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID
	case errors.Is(err, ErrTokenInvalid):
		// An unknown token id and a wrong secret share one reason, as
		// they share one error.
		return droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID
	case errors.Is(err, ErrTokenExpired):
		return droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED
	case errors.Is(err, ErrTokenRevoked):
		return droverv1.ErrorReason_ERROR_REASON_TOKEN_REVOKED
	case errors.Is(err, ErrTokenUsedUp):
		return droverv1.ErrorReason_ERROR_REASON_TOKEN_USED_UP
	case errors.Is(err, ErrNodeRevoked):
		return droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED
	case errors.Is(err, ErrConflict):
		return droverv1.ErrorReason_ERROR_REASON_CONFLICT
	case errors.Is(err, context.DeadlineExceeded):
		return droverv1.ErrorReason_ERROR_REASON_TIMEOUT
	default:
		return droverv1.ErrorReason_ERROR_REASON_INTERNAL
	}
}

// refusal is an error whose message is written out in full for the operator
// (for example the exact command that fixes it) and would only be cluttered
// by the sentinel's text; it still unwraps to the sentinel.
type refusal struct {
	msg  string
	kind error
}

func (e *refusal) Error() string { return e.msg }
func (e *refusal) Unwrap() error { return e.kind }
