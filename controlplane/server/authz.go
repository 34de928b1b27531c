package server

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/controlplane/acl"
	"github.com/droverhq/drover/controlplane/state"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// caller is who made a call with an operator token: the token and what
// its policies allow. Agents and public calls have none.
type caller struct {
	token *droverv1.ACLToken
	authz *acl.Authorizer
}

type callerKey struct{}

// callerFrom returns the operator behind the call, or nil when the call
// carried no operator token (agents, public calls).
func callerFrom(ctx context.Context) *caller {
	c, _ := ctx.Value(callerKey{}).(*caller)
	return c
}

// allows reports whether the caller may access obj; listings use it to
// return only what the caller may read.
func (c *caller) allows(r droverv1.ACLResource, a droverv1.ACLAccess, obj acl.Object) bool {
	return c != nil && c.authz.Allowed(r, a, obj)
}

// actorFrom returns who made the request, as recorded in the audit log: the
// operator token's accessor id and name, "node/ID" for an agent, or
// anonymous.
func actorFrom(ctx context.Context) (id, name string) {
	if c := callerFrom(ctx); c != nil {
		return c.token.GetAccessorId(), c.token.GetName()
	}
	if n := agentNodeFrom(ctx); n != nil {
		return "node/" + n.GetId(), n.GetName()
	}
	return state.Anonymous, ""
}

// tokenCache keeps the authorizer of every token used since the last
// change to tokens or policies, so that a call costs a hash and a map
// lookup rather than building one. Only tokens that exist are cached, so
// it holds at most as many entries as the cluster has tokens.
type tokenCache struct {
	mu       sync.Mutex // guards the fields below
	aclIndex uint64     // state's ACL index the entries were built at
	entries  map[[32]byte]*caller
}

// resolveToken returns the operator token whose secret is given, with its
// authorizer, from this server's state.
func (s *Server) resolveToken(secret string) (*caller, bool) {
	h := sha256.Sum256([]byte(secret))
	idx := s.state.ACLIndex()
	c := &s.tokenCache
	c.mu.Lock()
	if c.aclIndex != idx || c.entries == nil {
		c.entries, c.aclIndex = make(map[[32]byte]*caller), idx
	}
	if e, ok := c.entries[h]; ok {
		c.mu.Unlock()
		return e, true
	}
	c.mu.Unlock()

	tok, stored, at, ok := s.state.ResolveACLToken(h)
	if !ok {
		return nil, false
	}
	policies := stored
	for _, p := range acl.Builtin() {
		for _, name := range tok.GetPolicies() {
			if name == p.GetName() {
				policies = append(policies, p)
			}
		}
	}
	e := &caller{token: tok, authz: acl.NewAuthorizer(policies)}
	c.mu.Lock()
	if c.aclIndex == at {
		c.entries[h] = e
	}
	c.mu.Unlock()
	return e, true
}

// bearer returns the secret of the request's bearer token, or "".
func bearer(h http.Header) string {
	secret, _ := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	return strings.TrimSpace(secret)
}

// authorize checks a call against the capability its procedure declares
// (controlplane/acl) and returns the context the handler runs with. req is
// the request message of a unary call, nil for a streaming one.
func (s *Server) authorize(ctx context.Context, procedure string, h http.Header, req any) (context.Context, error) {
	capability, ok := acl.ForProcedure(procedure)
	if !ok {
		// Unreachable while TestEveryMethodDeclaresACapability passes;
		// a call nobody declared is never served unchecked.
		return ctx, apiErr(connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_PERMISSION_DENIED,
			fmt.Sprintf("%s declares no capability, so nobody may call it", procedure), "")
	}
	switch capability.Auth {
	case acl.AuthPublic:
		return ctx, nil
	case acl.AuthAgent:
		if agentCertFrom(ctx) == nil && bearer(h) != "" {
			return ctx, apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_WRONG_CREDENTIAL,
				"this is an agent call: it takes a node's client certificate, and operator tokens are not accepted",
				"only drover-agent makes this call; enroll an agent with a join token (`drover token create`)")
		}
		return s.authenticateAgent(ctx)
	case acl.AuthServer:
		// A forwarded call arrives over the forwarding server's own
		// connection, so its certificate says nothing of the caller;
		// servers make these calls directly, never through another.
		if by := h.Get(forwardedHeader); by != "" {
			return ctx, apiErr(connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_WRONG_CREDENTIAL,
				fmt.Sprintf("only control-plane servers may make this call, directly: %s forwarded it for someone else", by), "")
		}
		return ctx, requireServerPeer(ctx)
	}

	c, err := s.operator(ctx, h)
	if err != nil {
		if capability.IsWrite() && isAccessRefusal(err) {
			s.denials.add(s.denial(nil, procedure, capability, acl.Ref{}, err))
		}
		return ctx, err
	}
	ctx = context.WithValue(ctx, callerKey{}, c)
	if capability.Auth == acl.AuthSelf {
		return ctx, nil
	}
	ref, obj, named := s.objectOf(capability, req)
	allowed := c.authz.AllowedSome(capability.Resource, capability.Access)
	if named {
		allowed = c.authz.Allowed(capability.Resource, capability.Access, obj)
	}
	if !allowed {
		err := permissionDenied(c, capability, ref)
		if capability.IsWrite() {
			s.denials.add(s.denial(c, procedure, capability, ref, err))
		}
		return ctx, err
	}
	return ctx, nil
}

// requireServerPeer refuses a call whose connection does not come from
// another server, with its server certificate.
func requireServerPeer(ctx context.Context) error {
	if pki.RoleOf(serverPeerFrom(ctx)) != pki.RoleServer {
		return apiErr(connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_WRONG_CREDENTIAL,
			"only control-plane servers may make this call, with their server certificate", "")
	}
	return nil
}

// operator resolves the call's operator token and checks that it is
// valid now.
func (s *Server) operator(ctx context.Context, h http.Header) (*caller, error) {
	secret := bearer(h)
	st := s.state
	if !st.ACLBootstrapped() && (st.Index() < s.raft.CommitIndex() || !s.caughtUp()) {
		// A restarted server replays its log before it knows the tokens;
		// "not bootstrapped" would send the operator the wrong way.
		return nil, apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
			fmt.Sprintf("this server is still replaying its log (at index %d of %d)", s.raft.AppliedIndex(), max(s.raft.CommitIndex(), s.replayTo)),
			"retry in a moment")
	}
	if !st.ACLBootstrapped() {
		return nil, apiErr(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_ACL_NOT_BOOTSTRAPPED,
			"ACLs are not bootstrapped: no token can be valid yet",
			"run \"drover acl bootstrap\" once and keep the token it prints")
	}
	if secret == "" {
		if agentCertFrom(ctx) != nil {
			return nil, apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_WRONG_CREDENTIAL,
				"this is an operator call: agent certificates are accepted only for agent calls",
				"pass an operator token with --token or DROVER_TOKEN")
		}
		return nil, apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING,
			"this call needs a token", "pass --token or set DROVER_TOKEN")
	}
	c, found := s.resolveToken(secret)
	if !found {
		return nil, apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID,
			"token not found: it is wrong, was revoked, or its secret was rotated", "check --token / DROVER_TOKEN")
	}
	if err := c.expired(time.Now()); err != nil {
		return nil, err
	}
	return c, nil
}

// expired returns the refusal of a token past its expiry, or nil.
func (c *caller) expired(now time.Time) error {
	exp := c.token.GetExpireTime()
	if exp == nil || now.Before(exp.AsTime()) {
		return nil
	}
	return apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED,
		fmt.Sprintf("token %q expired at %s", c.token.GetName(), exp.AsTime().UTC().Format(time.RFC3339)),
		"ask an operator for a new token (`drover acl token create`)")
}

// objectOf finds the object a call acts on, from its request: named is
// false when the call names none (listings, streaming calls).
func (s *Server) objectOf(c acl.Capability, req any) (ref acl.Ref, obj acl.Object, named bool) {
	if c.Object == nil || req == nil {
		return acl.Ref{}, acl.Object{}, false
	}
	ref = c.Object(req)
	obj = acl.Object{Name: ref.Name, Site: ref.Site}
	switch {
	case ref.Node != "":
		// An unknown node matches only rules that name no site or labels;
		// the handler then answers not found to those who may know.
		if n, err := s.findNode(ref.Node); err == nil {
			obj = nodeObject(n)
			ref.Node = n.GetId() // named as the audit log names nodes
		}
	case ref.JoinToken != "":
		if t, err := s.state.JoinToken(ref.JoinToken); err == nil {
			obj.Site = t.GetSite()
		}
	}
	return ref, obj, true
}

// isAccessRefusal reports whether err refuses the caller's credential, as
// opposed to a server not ready to judge it (still replaying its log, ACLs
// not bootstrapped yet): only the former is worth an audit event.
func isAccessRefusal(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated, connect.CodePermissionDenied:
		return true
	}
	return false
}

// target names an object as the audit log does ("model/resnet").
func target(c acl.Capability, ref acl.Ref) string {
	switch {
	case ref.Node != "":
		return "node/" + ref.Node
	case ref.JoinToken != "":
		return "token/" + ref.JoinToken
	case ref.Name != "":
		return acl.ResourceName(c.Resource) + "/" + ref.Name
	case ref.Site != "":
		return acl.ResourceName(c.Resource) + " in site " + ref.Site
	}
	return ""
}

// permissionDenied words a refusal: which token, what it lacks, on what.
func permissionDenied(c *caller, capability acl.Capability, ref acl.Ref) *connect.Error {
	what := capability.String()
	if t := target(capability, ref); t != "" {
		what += " on " + t
	}
	return apiErr(connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_PERMISSION_DENIED,
		fmt.Sprintf("permission denied: token %q (policies %s) lacks %s",
			c.token.GetName(), strings.Join(c.token.GetPolicies(), ", "), what),
		"use a token whose policies grant it; `drover acl token self` shows what yours allows")
}

// denial describes a refused call for the audit log.
func (s *Server) denial(c *caller, procedure string, capability acl.Capability, ref acl.Ref, err error) *droverv1.AccessDenial {
	d := &droverv1.AccessDenial{
		Procedure:  procedure,
		Capability: capability.String(),
		Target:     target(capability, ref),
		Server:     s.cfg.Name,
	}
	if c != nil {
		d.AccessorId, d.TokenName = c.token.GetAccessorId(), c.token.GetName()
	}
	if ce, ok := err.(*connect.Error); ok && c == nil {
		// No token to name: say why the credential was refused.
		d.Capability += " (" + ce.Message() + ")"
	}
	return d
}

// precheck refuses a call this server is about to forward to the leader
// when its own state already shows the caller's token cannot make it, so
// a follower is never an open relay for calls that will fail. It decides
// only what it knows: a token this server has not seen yet (just created
// on the leader) goes on, and the leader checks every call again with
// the object the request names. A server-only call is checked here in
// full, since the leader sees it arrive with this server's certificate
// (and refuses it as forwarded).
func (s *Server) precheck(r *http.Request) error {
	capability, ok := acl.ForProcedure(r.URL.Path)
	if ok && capability.Auth == acl.AuthServer {
		// Only here can the caller's own certificate be checked.
		return requireServerPeer(r.Context())
	}
	if !ok || capability.Auth != acl.AuthToken {
		return nil
	}
	secret := bearer(r.Header)
	if secret == "" || !s.state.ACLBootstrapped() {
		return nil
	}
	c, found := s.resolveToken(secret)
	if !found {
		return nil
	}
	err := c.expired(time.Now())
	if err == nil && !c.authz.AllowedSome(capability.Resource, capability.Access) {
		err = permissionDenied(c, capability, acl.Ref{})
	}
	if err != nil && capability.IsWrite() {
		s.denials.add(s.denial(c, r.URL.Path, capability, acl.Ref{}, err))
	}
	return err
}

// telemetryRead is what a scrape of MetricsPath needs.
var telemetryRead = acl.Capability{Auth: acl.AuthToken,
	Resource: droverv1.ACLResource_ACL_RESOURCE_TELEMETRY, Access: droverv1.ACLAccess_ACL_ACCESS_READ}

// requireTelemetryRead serves next only to a bearer token with telemetry
// read. Prometheus sends one with `authorization: {credentials_file: …}`
// in its scrape config.
func (s *Server) requireTelemetryRead(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := s.operator(r.Context(), r.Header)
		if err == nil && !c.authz.AllowedSome(telemetryRead.Resource, telemetryRead.Access) {
			err = permissionDenied(c, telemetryRead, acl.Ref{})
		}
		if err == nil {
			next.ServeHTTP(w, r)
			return
		}
		status := http.StatusUnauthorized
		ce, _ := err.(*connect.Error)
		switch ce.Code() {
		case connect.CodePermissionDenied:
			status = http.StatusForbidden
		case connect.CodeUnavailable:
			status = http.StatusServiceUnavailable
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="drover"`)
		}
		msg := ce.Message()
		if hint := errorHint(ce); hint != "" {
			msg += "; " + hint
		}
		http.Error(w, msg, status)
	})
}

// errorHint returns the hint of an error made by apiErr, or "".
func errorHint(ce *connect.Error) string {
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if ed, ok := v.(*droverv1.ErrorDetail); ok {
				return ed.GetHint()
			}
		}
	}
	return ""
}

// readable keeps the items of a listing the caller may read: a token
// scoped to some models, sites or labels lists only those.
func readable[T any](ctx context.Context, items []T, r droverv1.ACLResource, object func(T) acl.Object) []T {
	c := callerFrom(ctx)
	if c != nil && c.authz.Management() {
		return items
	}
	out := items[:0]
	for _, it := range items {
		if c.allows(r, droverv1.ACLAccess_ACL_ACCESS_READ, object(it)) {
			out = append(out, it)
		}
	}
	return out
}

// nodeObject is what node rules match of a node.
func nodeObject(n *droverv1.Node) acl.Object {
	return acl.Object{Name: n.GetName(), Site: n.GetSite(), Labels: n.GetLabels()}
}
