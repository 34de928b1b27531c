package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"
	"testing"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func TestRenderError(t *testing.T) {
	t.Parallel()
	notFound := apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
		"list models with `drover model ls`", "model %q not found", "resnet")
	noHint := apiError(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER, "", "no leader")
	// What net/http and connect wrap a refused dial in.
	refused := connect.NewError(connect.CodeUnavailable, &url.Error{
		Op: "Post", URL: "https://127.0.0.1:7400/drover.v1.ClusterService/GetStatus",
		Err: &net.OpError{
			Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7400},
			Err: os.NewSyscallError("connect", syscall.ECONNREFUSED),
		},
	})
	noHost := connect.NewError(connect.CodeUnavailable, &url.Error{
		Op: "Post", URL: "https://nowhere.invalid:7400/x",
		Err: &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "nowhere.invalid", IsNotFound: true}},
	})
	unknownCA := connect.NewError(connect.CodeUnavailable, &url.Error{
		Op: "Post", URL: "https://10.0.0.1:7400/x",
		Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}},
	})
	wrongName := connect.NewError(connect.CodeUnavailable, &tls.CertificateVerificationError{
		Err: x509.HostnameError{Certificate: &x509.Certificate{}, Host: "10.0.0.9"},
	})
	usage := usageErr(&cobra.Command{Use: "show NAME"}, errors.New("missing NAME"))

	tests := []struct {
		name   string
		err    error
		target ClientConfig
		want   string
		code   int
	}{
		{"server error with hint", notFound, ClientConfig{},
			"Error: model \"resnet\" not found\nHint: list models with `drover model ls`\n", exitError},
		{"wrapped server error keeps context, drops code", fmt.Errorf("resolve alias: %w", notFound), ClientConfig{},
			"Error: resolve alias: model \"resnet\" not found\nHint: list models with `drover model ls`\n", exitError},
		{"server error without hint", noHint, ClientConfig{}, "Error: no leader\n", exitError},
		{"error without detail keeps its code", connect.NewError(connect.CodeUnavailable, errors.New("upstream reset")), ClientConfig{},
			"Error: unavailable: upstream reset\n", exitError},
		{"connection refused", refused, ClientConfig{Address: "https://127.0.0.1:7400"},
			"Error: cannot reach a drover server at https://127.0.0.1:7400: dial tcp 127.0.0.1:7400: connect: connection refused; " +
				"start one with `drover dev` or point --address/DROVER_ADDR at a server\n", exitError},
		{"unknown host", noHost, ClientConfig{Address: "https://nowhere.invalid:7400"},
			"Error: cannot reach a drover server at https://nowhere.invalid:7400: dial tcp: lookup nowhere.invalid: no such host; " +
				"start one with `drover dev` or point --address/DROVER_ADDR at a server\n", exitError},
		{"unknown CA, none given", unknownCA, ClientConfig{Address: "https://10.0.0.1:7400"},
			"Error: " + unknownCA.Error() + "\nHint: the server's certificate is not signed by a CA this system trusts; " +
				"pass --ca-cert or set DROVER_CACERT to the cluster's CA bundle (PEM)\n", exitError},
		{"unknown CA, wrong one given", unknownCA, ClientConfig{CACert: "/etc/drover/ca.pem"},
			"Error: " + unknownCA.Error() + "\nHint: the server's certificate is not signed by a CA in /etc/drover/ca.pem; " +
				"check --ca-cert or DROVER_CACERT\n", exitError},
		{"host name not in certificate", wrongName, ClientConfig{},
			"Error: " + wrongName.Error() + "\nHint: the server's certificate does not cover this host name; " +
				"use an address it names, as `drover dev` prints\n", exitError},
		{"plain HTTP server", connect.NewError(connect.CodeUnavailable, http.ErrSchemeMismatch), ClientConfig{},
			"Error: unavailable: " + http.ErrSchemeMismatch.Error() + "\nHint: the server at this address does not speak TLS, so it is not a Drover API server (those speak only HTTPS); check the host and port\n", exitError},
		{"client-side hint", fmt.Errorf("save: %w", withHint(errors.New("x exists"), "pass --force")), ClientConfig{},
			"Error: save: x exists\nHint: pass --force\n", exitError},
		{"usage", usage, ClientConfig{},
			"Error: missing NAME\nUsage: show NAME\nRun 'show --help' for details.\n", exitUsage},
		{"interrupted", connect.NewError(connect.CodeCanceled, context.Canceled), ClientConfig{}, "Error: interrupted\n", exitInterrupted},
		{"anything else", errors.New("boom"), ClientConfig{}, "Error: boom\n", exitError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			code := renderError(&buf, tt.err, tt.target)
			if buf.String() != tt.want || code != tt.code {
				t.Errorf("renderError =\n%q, exit %d\nwant\n%q, exit %d", buf.String(), code, tt.want, tt.code)
			}
		})
	}
}
