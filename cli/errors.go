package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/droverhq/drover/internal/apierror"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// usageError is a mistake in how a command was called. It exits with code 2
// and shows the command's usage line, unlike a failure of the command itself.
type usageError struct {
	err         error
	useLine     string // "drover model show NAME[@REF] [flags]"
	commandPath string // "drover model show"
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErr(cmd *cobra.Command, err error) error {
	useLine := cmd.UseLine()
	if cmd.HasAvailableSubCommands() {
		useLine = cmd.CommandPath() + " COMMAND"
	}
	return &usageError{err: err, useLine: useLine, commandPath: cmd.CommandPath()}
}

// hintError is a client-side failure with advice on what to do about it,
// rendered like a server error's hint.
type hintError struct {
	err  error
	hint string
}

func (e *hintError) Error() string { return e.err.Error() }
func (e *hintError) Unwrap() error { return e.err }

func withHint(err error, hint string) error { return &hintError{err: err, hint: hint} }

// renderError prints err for a person on w and returns the exit code. It is
// the only place that turns errors into text, so every command reports the
// same way:
//
//	Error: <message>
//	Hint: <what to do>            (when known)
//	Usage: <usage line>           (usage errors only)
//
// target is the connection in use, empty if none was resolved; it makes
// hints about reaching and trusting the server specific.
func renderError(w io.Writer, err error, target ClientConfig) int {
	msg, hint, code := err.Error(), "", exitError

	var (
		usage   *usageError
		cerr    *connect.Error
		hinted  *hintError
		unknown x509.UnknownAuthorityError
		badName x509.HostnameError
		record  tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &usage):
		fmt.Fprintf(w, "Error: %s\nUsage: %s\nRun '%s --help' for details.\n", msg, usage.useLine, usage.commandPath)
		return exitUsage
	case errors.Is(err, context.Canceled):
		msg, code = "interrupted", exitInterrupted
	case errors.As(err, &cerr) && serverDetail(cerr) != nil:
		// The server's message is written for people; the code prefix
		// ("not_found: ") adds nothing to it.
		if m := cerr.Message(); m != "" {
			msg = strings.Replace(msg, cerr.Error(), m, 1)
		}
		hint = serverDetail(cerr).GetHint()
	case dialError(err) != nil:
		address := target.Address
		if address == "" {
			address = "the configured address"
		}
		msg = fmt.Sprintf("cannot reach a drover server at %s: %v; start one with `drover dev` or point --address/%s at a server",
			address, dialError(err), envAddress)
	case errors.As(err, &unknown):
		if target.CACert == "" {
			hint = "the server's certificate is not signed by a CA this system trusts; pass --ca-cert or set " +
				envCACert + " to the cluster's CA bundle (PEM)"
		} else {
			hint = fmt.Sprintf("the server's certificate is not signed by a CA in %s; check --ca-cert or %s",
				target.CACert, envCACert)
		}
	case errors.As(err, &badName):
		hint = "the server's certificate does not cover this host name; use an address it names, as `drover dev` prints"
	case errors.Is(err, http.ErrSchemeMismatch), errors.As(err, &record):
		hint = "the server at this address does not speak TLS, so it is not a Drover API server (those speak only HTTPS); " +
			"check the host and port"
	case errors.As(err, &hinted):
		hint = hinted.hint
	}
	fmt.Fprintf(w, "Error: %s\n", msg)
	if hint != "" {
		fmt.Fprintf(w, "Hint: %s\n", hint)
	}
	return code
}

// serverDetail returns the ErrorDetail the server attaches to its errors, or
// nil when the error came from elsewhere (a proxy, the transport).
func serverDetail(cerr *connect.Error) *droverv1.ErrorDetail {
	_, d := apierror.Detail(cerr)
	return d
}

// dialError returns the error that kept the command from opening a
// connection at all (refused, unreachable, unknown host), or nil.
func dialError(err error) error {
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return opErr
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return dnsErr
	}
	return nil
}
