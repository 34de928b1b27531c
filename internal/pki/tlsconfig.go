package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"slices"
)

// ServerTLSConfig returns a TLS 1.3 server configuration presenting cert and
// verifying client certificates against pool as clientAuth says. It checks no
// role: handlers decide per request which roles they serve, with RoleOf on
// the verified peer certificate. Callers set NextProtos and anything else
// they need on the returned configuration.
func ServerTLSConfig(pool *x509.CertPool, cert tls.Certificate, clientAuth tls.ClientAuthType) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   clientAuth,
	}
}

// PeerTLSConfig returns a TLS 1.3 configuration for server-to-server mutual
// TLS, usable both to dial and to accept. Either way the peer must present a
// certificate that chains to pool and carries RoleServer; as a client it also
// checks the peer's certificate holds PeerServerName, whatever address was
// dialed. An agent or operator certificate is refused even though the same
// CA signed it.
func PeerTLSConfig(pool *x509.CertPool, cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		RootCAs:          pool,
		ClientCAs:        pool,
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ServerName:       PeerServerName,
		VerifyConnection: RequireRole(RoleServer),
	}
}

// RequireRole returns a tls.Config.VerifyConnection function that accepts a
// connection only if the peer's certificate chain was verified and its leaf
// carries one of roles. It is called on resumed sessions too, unlike
// VerifyPeerCertificate, so a resumed session cannot skip the check.
func RequireRole(roles ...string) func(tls.ConnectionState) error {
	roles = slices.Clone(roles)
	return func(cs tls.ConnectionState) error {
		// Without a verified chain the role is whatever the peer wrote
		// into its own certificate.
		if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("verify peer: no verified certificate: %w", ErrWrongRole)
		}
		leaf := cs.PeerCertificates[0]
		role := RoleOf(leaf)
		if !slices.Contains(roles, role) {
			return fmt.Errorf("verify peer %q: role %q, want one of %q: %w",
				leaf.Subject.CommonName, role, roles, ErrWrongRole)
		}
		return nil
	}
}

// ClientTLSConfig returns a TLS 1.3 client configuration that trusts the CA
// certificates in the PEM file caPEMFile, for the CLI. Callers add a client
// certificate and ServerName as needed.
func ClientTLSConfig(caPEMFile string) (*tls.Config, error) {
	data, err := os.ReadFile(caPEMFile)
	if err != nil {
		return nil, fmt.Errorf("load CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("load CA bundle %s: no certificates: %w", caPEMFile, ErrNotPEM)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
	}, nil
}
