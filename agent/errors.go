package agent

import (
	"errors"
	"fmt"
)

// Errors returned by this package, wrapped with what failed and where;
// test for them with errors.Is, and show Hint(err) to the person running
// the agent.
//
// A server's refusal of the join token wraps ErrTokenRefused, and also the
// refusal's own error (ErrTokenExpired, ErrTokenRevoked, ErrTokenUsedUp,
// ErrTokenWrongCluster, ErrTokenInvalid) when the server said which. A
// refusal of the node's certificate wraps ErrRevoked, and also
// ErrNodeUnknown when the cluster has no record of the node.
//
// A server whose CA does not match the one the join token pins is caught
// by the agent itself, before the secret is sent: that error wraps
// jointoken.ErrCAMismatch, and neither ErrTokenRefused nor
// ErrTokenWrongCluster (no server refused anything).
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
	// wrong secret, expired, revoked, used up or made by another cluster.
	// Each of those has an error of its own below that also wraps this
	// one; the message carries the server's words.
	ErrTokenRefused = errors.New("join token refused")
	// ErrTokenInvalid means the server does not know the token, or the
	// secret is wrong (it does not say which). Wraps ErrTokenRefused.
	ErrTokenInvalid = refusalKind("join token invalid", ErrTokenRefused)
	// ErrTokenExpired means the join token's time to live has passed.
	// Wraps ErrTokenRefused.
	ErrTokenExpired = refusalKind("join token expired", ErrTokenRefused)
	// ErrTokenRevoked means an operator revoked the join token. Wraps
	// ErrTokenRefused.
	ErrTokenRevoked = refusalKind("join token revoked", ErrTokenRefused)
	// ErrTokenUsedUp means the join token's --max-uses are spent. Wraps
	// ErrTokenRefused.
	ErrTokenUsedUp = refusalKind("join token used up", ErrTokenRefused)
	// ErrTokenWrongCluster means the server refused the join token because
	// it pins another cluster's CA. Wraps ErrTokenRefused.
	ErrTokenWrongCluster = refusalKind("join token belongs to another cluster", ErrTokenRefused)
	// ErrRefused means a server refused a request in a way that retrying
	// cannot fix: a name already taken, an invalid label, a node that has
	// left the fleet.
	ErrRefused = errors.New("refused by the control plane")
	// ErrRevoked means the control plane refuses the node's certificate:
	// the node was revoked or left the fleet, or (ErrNodeUnknown) the
	// cluster does not know it. The agent stops and does not enroll again
	// by itself.
	ErrRevoked = errors.New("node revoked")
	// ErrNodeUnknown means the cluster has no record of the node in the
	// certificate, as after the cluster was rebuilt. Wraps ErrRevoked.
	ErrNodeUnknown = refusalKind("node unknown to the cluster", ErrRevoked)
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

// kindError is a sentinel that is also a case of a broader one, so that
// errors.Is matches both.
type kindError struct {
	msg    string
	parent error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.parent }

// refusalKind returns a sentinel with text msg that wraps parent.
func refusalKind(msg string, parent error) error { return &kindError{msg: msg, parent: parent} }

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
