package agent

import (
	"errors"
	"fmt"
)

// Errors returned by this package, wrapped with what failed and where;
// test for them with errors.Is, and show Hint(err) to the person running
// the agent. A refused join token whose CA does not match wraps
// jointoken.ErrCAMismatch instead of a sentinel of its own.
var (
	// ErrInvalidConfig means Config.Validate rejected the configuration;
	// the message names the flag to fix.
	ErrInvalidConfig = errors.New("invalid agent configuration")
	// ErrNotEnrolled means the data directory holds no identity and no
	// join token was given to make one.
	ErrNotEnrolled = errors.New("agent is not enrolled")
	// ErrIdentityCorrupt means the identity file in the data directory
	// cannot be read back; removing it makes the agent enroll again.
	ErrIdentityCorrupt = errors.New("agent identity is corrupt")
	// ErrWrongCluster means the join token pins a different cluster CA from
	// the one the agent is already enrolled with.
	ErrWrongCluster = errors.New("join token is for another cluster")
	// ErrTokenRefused means a server refused the join token: unknown or
	// wrong secret, expired, revoked or used up. The message carries the
	// server's words, which say which.
	ErrTokenRefused = errors.New("join token refused")
	// ErrRefused means a server refused a request in a way that retrying
	// cannot fix: a name already taken, an invalid label, a node that has
	// left the fleet.
	ErrRefused = errors.New("refused by the control plane")
	// ErrRevoked means the control plane refuses the node's certificate:
	// the node was revoked. The agent stops and does not enroll again by
	// itself.
	ErrRevoked = errors.New("node revoked")
	// ErrCertificateExpired means the node's certificate expired before it
	// could be renewed, so no server will accept it.
	ErrCertificateExpired = errors.New("node certificate expired")
	// ErrBadResponse means a server answered with something the agent
	// cannot use, such as a certificate for another key.
	ErrBadResponse = errors.New("unusable response from server")
	// ErrRunning means Run was called while another Run of the same Agent
	// had not returned.
	ErrRunning = errors.New("agent already running")
)

// hinted is an error with advice for the person running the agent.
type hinted struct {
	err  error
	hint string
}

func (e *hinted) Error() string { return e.err.Error() }
func (e *hinted) Unwrap() error { return e.err }

// withHint attaches advice to err; Hint finds it again.
func withHint(err error, format string, args ...any) error {
	return &hinted{err: err, hint: fmt.Sprintf(format, args...)}
}

// Hint returns advice for the person running the agent about err, such as
// the flag or file to fix, or "" when there is none. The advice is kept
// out of the error message so that a command line can print it on a line
// of its own.
func Hint(err error) string {
	var h *hinted
	if errors.As(err, &h) {
		return h.hint
	}
	return ""
}
