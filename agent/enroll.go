package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/internal/jointoken"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// enroll trades the join token for a node identity. It tries the
// configured servers in turn, in rounds with backoff between them, until
// one enrolls the node, a server refuses in a way retrying cannot fix, or
// ctx ends. It returns the identity and the address of the server that
// made it.
//
// The secret is sent only to a server that proved it holds the CA the
// token pins: the cluster info (the CA) is fetched without trusting
// anything, checked against the token's hash, and only then is a
// connection that trusts that CA alone opened for Enroll. The node key is
// made here and never leaves the machine; the server sees a CSR.
func (a *Agent) enroll(ctx context.Context, tok jointoken.Token, inv *droverv1.NodeInventory) (*identity, string, error) {
	key, csr, err := newNodeKey(a.cfg.Name)
	if err != nil {
		return nil, "", fmt.Errorf("enroll: %w", err)
	}
	// Nothing is trusted for this one call: the CA it returns is checked
	// against the token before anything else happens.
	insecure := a.newTransport(&tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         pki.PeerServerName,
		InsecureSkipVerify: true,
	})
	defer insecure.Close()
	var (
		ca     *x509.Certificate
		info   *droverv1.GetClusterInfoResponse
		pinned *http3.Transport
	)
	defer func() {
		if pinned != nil {
			_ = pinned.Close()
		}
	}()
	for round := 0; ; round++ {
		for _, addr := range a.cfg.Servers {
			if ca == nil {
				ca, info, err = a.clusterInfo(ctx, insecure, addr, tok)
				if err != nil {
					if errors.Is(err, jointoken.ErrCAMismatch) || errors.Is(err, ErrBadResponse) {
						return nil, "", err
					}
					a.noteFailure(ctx, "cluster info", addr, err)
					continue
				}
				pinned = a.newTransport(pinnedTLS(ca, nil))
			}
			id, err := a.enrollWith(ctx, pinned, addr, tok, key, csr, inv, ca, info)
			if err == nil {
				return id, addr, nil
			}
			if refusal := enrollRefusal(addr, tok, err); refusal != nil {
				return nil, "", refusal
			}
			if errors.Is(err, ErrBadResponse) {
				return nil, "", err
			}
			// A lost answer, or a leader lost mid-write, may hide an
			// enrollment that happened: the retry sends the same key, and
			// the server answers it with the same node.
			a.noteFailure(ctx, "enroll", addr, err)
		}
		if err := sleep(ctx, a.clk, backoff(round, a.randN)); err != nil {
			return nil, "", err
		}
	}
}

// clusterInfo fetches the cluster CA from addr without verifying the
// server, and checks it against the token. A CA that does not match wraps
// jointoken.ErrCAMismatch; the caller must then send nothing more.
func (a *Agent) clusterInfo(ctx context.Context, tr *http3.Transport, addr string, tok jointoken.Token) (*x509.Certificate, *droverv1.GetClusterInfoResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := newClient(tr, addr).GetClusterInfo(ctx, connect.NewRequest(&droverv1.GetClusterInfoRequest{}))
	if err != nil {
		return nil, nil, fmt.Errorf("get cluster info from %s: %w", addr, err)
	}
	ca, err := pki.ParseCertPEM(resp.Msg.GetCaPem())
	if err == nil && !ca.IsCA {
		err = errors.New("not a CA certificate")
	}
	if err != nil {
		return nil, nil, withHint(fmt.Errorf("enroll: server %s sent no usable CA certificate (%v): %w", addr, err, ErrBadResponse),
			"check --server: it must be the API address (HOST:PORT) of a drover server")
	}
	if err := jointoken.VerifyCA(tok, ca.Raw); err != nil {
		return nil, nil, withHint(fmt.Errorf("enroll: server %s: %w", addr, err),
			"the server at %s is not the cluster the join token was made for, or something is intercepting the connection; check --server, and the token with the operator who made it", addr)
	}
	a.log.Debug("cluster CA matches the join token", "server", addr, "cluster", resp.Msg.GetClusterId(),
		"ca", pki.Fingerprint(ca))
	return ca, resp.Msg, nil
}

// enrollWith sends the Enroll request to addr over the pinned transport
// and checks what comes back.
func (a *Agent) enrollWith(ctx context.Context, tr *http3.Transport, addr string, tok jointoken.Token,
	key *ecdsa.PrivateKey, csr []byte, inv *droverv1.NodeInventory, ca *x509.Certificate,
	info *droverv1.GetClusterInfoResponse) (*identity, error) {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	a.log.Info("enrolling", "server", addr, "name", a.cfg.Name, "token", tok)
	resp, err := newClient(tr, addr).Enroll(ctx, connect.NewRequest(&droverv1.EnrollRequest{
		Token:        tok.String(),
		Name:         a.cfg.Name,
		Labels:       a.cfg.Labels,
		Site:         a.cfg.Site,
		CsrDer:       csr,
		Inventory:    inv,
		AgentVersion: Version,
	}))
	if err != nil {
		return nil, fmt.Errorf("enroll with %s: %w", addr, err)
	}
	m := resp.Msg
	node := m.GetNode()
	leaf, err := pki.ParseCertPEM(m.GetCertificatePem())
	if err == nil {
		err = checkNodeCert(leaf, ca, &key.PublicKey, node.GetId())
	}
	if err == nil && node.GetId() == "" {
		err = errors.New("no node id")
	}
	if err != nil {
		return nil, fmt.Errorf("enroll with %s: node certificate: %v: %w", addr, err, ErrBadResponse)
	}
	servers := normalizeServers(m.GetServers())
	if len(servers) == 0 {
		servers = normalizeServers(append(append([]string{addr}, a.cfg.Servers...), info.GetServers()...))
	}
	return &identity{
		NodeID:    node.GetId(),
		Name:      node.GetName(),
		ClusterID: info.GetClusterId(),
		Servers:   servers,
		CA:        ca,
		Cert:      tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf},
		Site:      node.GetSite(),
		GossipKey: m.GetSiteGossipKey(),
	}, nil
}

// normalizeServers drops empty and repeated addresses, keeping the order.
func normalizeServers(in []string) []string {
	var out []string
	seen := make(map[string]bool, len(in))
	for _, s := range in {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
