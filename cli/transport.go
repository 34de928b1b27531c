package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// clients are the API clients of one server, all sharing one HTTP/2
// connection pool and the same headers.
type clients struct {
	address string
	model   droverv1connect.ModelServiceClient
	acl     droverv1connect.ACLServiceClient
	audit   droverv1connect.AuditServiceClient
	cluster droverv1connect.ClusterServiceClient
	token   droverv1connect.TokenServiceClient
	node    droverv1connect.NodeServiceClient
	key     droverv1connect.KeyServiceClient
	deploy  droverv1connect.DeploymentServiceClient
	rollout droverv1connect.RolloutServiceClient
	// telemetry answers fleet-wide queries over agents' windows.
	telemetry droverv1connect.TelemetryServiceClient
	// artifact moves model bytes; agent is used only for its public
	// GetClusterInfo, which lists the keys manifests are signed with.
	artifact droverv1connect.ArtifactServiceClient
	agent    droverv1connect.AgentServiceClient
}

// Request headers the server reads.
const (
	headerConsistency = "Drover-Consistency"
	consistencyStale  = "stale"
)

func newClients(cfg ClientConfig, stale bool) (*clients, error) {
	hc, err := newHTTPClient(cfg.CACert)
	if err != nil {
		return nil, err
	}
	h := http.Header{}
	if cfg.Token != "" {
		h.Set("Authorization", "Bearer "+cfg.Token)
	}
	if stale {
		h.Set(headerConsistency, consistencyStale)
	}
	// Connect's default codec is binary protobuf, which is what we want: it
	// is smaller and faster than JSON, and -o json renders locally.
	opts := []connect.ClientOption{connect.WithInterceptors(headerInterceptor{header: h}, writeOutcomeInterceptor{})}
	return &clients{
		address:   cfg.Address,
		model:     droverv1connect.NewModelServiceClient(hc, cfg.Address, opts...),
		acl:       droverv1connect.NewACLServiceClient(hc, cfg.Address, opts...),
		audit:     droverv1connect.NewAuditServiceClient(hc, cfg.Address, opts...),
		cluster:   droverv1connect.NewClusterServiceClient(hc, cfg.Address, opts...),
		token:     droverv1connect.NewTokenServiceClient(hc, cfg.Address, opts...),
		node:      droverv1connect.NewNodeServiceClient(hc, cfg.Address, opts...),
		key:       droverv1connect.NewKeyServiceClient(hc, cfg.Address, opts...),
		deploy:    droverv1connect.NewDeploymentServiceClient(hc, cfg.Address, opts...),
		rollout:   droverv1connect.NewRolloutServiceClient(hc, cfg.Address, opts...),
		telemetry: droverv1connect.NewTelemetryServiceClient(hc, cfg.Address, opts...),
		// Model weights barely compress, so gzip on chunks would cost both
		// ends CPU for nothing.
		artifact: droverv1connect.NewArtifactServiceClient(hc, cfg.Address, append(slices.Clone(opts),
			connect.WithReadMaxBytes(maxArtifactMessage), connect.WithAcceptCompression("gzip", nil, nil))...),
		agent: droverv1connect.NewAgentServiceClient(hc, cfg.Address, opts...),
	}, nil
}

// newHTTPClient makes a client that speaks HTTP/2 over TLS 1.3, trusting the
// CAs in caFile, or the system's roots when caFile is empty. HTTP/2 is not
// an optimisation here: snapshot restore is a client stream, which needs a
// full-duplex transport.
//
// There is no overall timeout: blocking queries and snapshots legitimately
// take minutes, and the command's context (cancelled by Ctrl-C) ends them.
func newHTTPClient(caFile string) (*http.Client, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS13}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA bundle: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, withHint(fmt.Errorf("read CA bundle %s: no PEM certificates in it", caFile),
				"--ca-cert and "+envCACert+" take a PEM file of CA certificates, such as the cluster's ca.pem")
		}
		tlsConf.RootCAs = pool
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		// A custom TLS config turns off net/http's automatic HTTP/2; this
		// turns it back on.
		ForceAttemptHTTP2: true,
	}
	return &http.Client{Transport: tr}, nil
}

// normalizeAddress turns what a person types into the base URL of the API:
// a bare HOST:PORT gets https://, and a trailing slash is dropped. Drover
// servers speak only HTTPS, so http:// is refused with the address to use
// instead of failing later with a transport error.
func normalizeAddress(s string) (string, error) {
	in := s
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("server address is empty")
	}
	// Checked before parsing: url.Parse reads "localhost:7400" as scheme
	// "localhost".
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("server address %q: %w", in, err)
	}
	switch {
	case u.Scheme == "http" && u.Host != "":
		return "", fmt.Errorf("server address %q: Drover servers speak only HTTPS: use https://%s", in, u.Host)
	case u.Scheme != "https":
		return "", fmt.Errorf("server address %q: scheme must be https, not %q", in, u.Scheme)
	case u.Host == "" || u.Hostname() == "":
		return "", fmt.Errorf("server address %q: no host", in)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("server address %q: want only scheme, host and port", in)
	case strings.Trim(u.Path, "/") != "":
		return "", fmt.Errorf("server address %q: want only scheme, host and port, not the path %q", in, u.Path)
	}
	return u.Scheme + "://" + u.Host, nil
}

// checkToken refuses a token that cannot go in an HTTP header, which would
// otherwise fail later with an obscure transport error; it is usually a
// stray newline from pasting.
func checkToken(token string) error {
	for _, r := range token {
		if r <= ' ' || r == 0x7f {
			return withHint(errors.New("the token contains a space or control character"),
				"check --token, "+envToken+" or the config file for a stray newline or quote")
		}
	}
	return nil
}

// headerInterceptor adds fixed headers (token, consistency) to every call,
// unary or streaming, so no command can forget them.
type headerInterceptor struct {
	header http.Header
}

var _ connect.Interceptor = headerInterceptor{}

func (i headerInterceptor) set(h http.Header) {
	for k, vs := range i.header {
		h[k] = vs
	}
}

func (i headerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		i.set(req.Header())
		return next(ctx, req)
	}
}

func (i headerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		// Headers go out with the first message, so setting them now is in
		// time.
		i.set(conn.RequestHeader())
		return conn
	}
}

func (i headerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// writeOutcomeInterceptor says so when a write's outcome is unknown: the
// request reached the server, and then the connection broke (the server
// crashed or restarted, a network cut) before any answer came. The write
// may have been committed or not, and retrying blindly can apply it twice,
// so the error says to look first. Reads (NO_SIDE_EFFECTS methods) and
// errors the server itself answered with are left as they are.
type writeOutcomeInterceptor struct{}

var _ connect.Interceptor = writeOutcomeInterceptor{}

// outcomeUnknownHint is the advice for a write whose outcome is unknown.
const outcomeUnknownHint = "check whether it took effect before retrying: read the object back, " +
	"or look for it in `drover audit ls`, which lists every applied change"

func (writeOutcomeInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IdempotencyLevel == connect.IdempotencyNoSideEffects {
			return next(ctx, req)
		}
		var sent atomic.Bool
		traced := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteRequest: func(i httptrace.WroteRequestInfo) {
				if i.Err == nil {
					sent.Store(true)
				}
			},
		})
		resp, err := next(traced, req)
		if err != nil && sent.Load() && ctx.Err() == nil && outcomeUnknown(err) {
			err = withHint(fmt.Errorf("the connection to the server broke after the request was sent, "+
				"so the change may or may not have been applied: %w", err), outcomeUnknownHint)
		}
		return resp, err
	}
}

func (writeOutcomeInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (writeOutcomeInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// outcomeUnknown reports whether err is a transport failure rather than
// an answer: no Drover error detail, and a code a broken connection
// produces.
func outcomeUnknown(err error) bool {
	var cerr *connect.Error
	if errors.As(err, &cerr) && serverDetail(cerr) != nil {
		return false
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeInternal, connect.CodeDeadlineExceeded:
		return true
	}
	return false
}
