package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"slices"
	"time"
)

// IssueServerCert issues a certificate for the control-plane server name,
// valid for validity (cut short at the CA's own expiry). It is valid for both
// server and client auth, because servers dial each other. Its SANs are the
// IP addresses and DNS names in hosts plus localhost, 127.0.0.1, ::1 and
// PeerServerName.
func (c *CA) IssueServerCert(name string, hosts []string, validity time.Duration) (tls.Certificate, error) {
	cert, err := c.issue(name, RoleServer, hosts, validity)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue server certificate: %w", err)
	}
	return cert, nil
}

// IssueClientCert issues a client-auth certificate for name with role
// RoleOperator or RoleAgent, valid for validity (cut short at the CA's own
// expiry).
func (c *CA) IssueClientCert(name, role string, validity time.Duration) (tls.Certificate, error) {
	if role != RoleOperator && role != RoleAgent {
		return tls.Certificate{}, fmt.Errorf("issue client certificate: role %q: %w", role, ErrUnknownRole)
	}
	cert, err := c.issue(name, role, nil, validity)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue client certificate: %w", err)
	}
	return cert, nil
}

func (c *CA) issue(name, role string, hosts []string, validity time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate key: %w", err)
	}
	der, err := c.sign(&key.PublicKey, name, role, hosts, validity)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parse certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// SignCSR signs a PKCS #10 certificate request (DER) for name and role and
// returns the certificate's DER. Only the request's public key is used: the
// name, role and SANs come from the caller, because a requester must never
// choose its own identity. The key must be ECDSA P-256. A RoleServer
// certificate gets the same SANs as IssueServerCert with no extra hosts.
func (c *CA) SignCSR(csrDER []byte, name, role string, validity time.Duration) ([]byte, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("sign CSR: parse: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("sign CSR: check signature: %w", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("sign CSR: %w", ErrUnsupportedKey)
	}
	if !knownRole(role) {
		return nil, fmt.Errorf("sign CSR: role %q: %w", role, ErrUnknownRole)
	}
	der, err := c.sign(pub, name, role, nil, validity)
	if err != nil {
		return nil, fmt.Errorf("sign CSR: %w", err)
	}
	return der, nil
}

// sign makes a leaf certificate for pub. Servers get server and client auth
// and the fixed SANs; other roles get client auth only, so an agent or
// operator certificate can never pass as a server.
func (c *CA) sign(pub *ecdsa.PublicKey, name, role string, hosts []string, validity time.Duration) ([]byte, error) {
	if name == "" {
		return nil, fmt.Errorf("empty name: %w", ErrInvalidArgument)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("validity %s: %w", validity, ErrInvalidArgument)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	// A leaf that outlives its CA fails verification from then on anyway;
	// capping it makes the certificate say so.
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         name,
			OrganizationalUnit: []string{role},
		},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if role == RoleServer {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.DNSNames, tmpl.IPAddresses = serverSANs(hosts)
	} else if len(hosts) > 0 {
		tmpl.DNSNames, tmpl.IPAddresses = splitHosts(hosts)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		return nil, fmt.Errorf("create certificate: %w", err)
	}
	return der, nil
}

// serverSANs returns hosts split into DNS names and IPs, plus the names every
// server certificate carries, without duplicates.
func serverSANs(hosts []string) ([]string, []net.IP) {
	all := append([]string{"localhost", "127.0.0.1", "::1", PeerServerName}, hosts...)
	return splitHosts(all)
}

func splitHosts(hosts []string) ([]string, []net.IP) {
	var (
		dns []string
		ips []net.IP
	)
	for _, h := range hosts {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(ips, ip.Equal) {
				ips = append(ips, ip)
			}
			continue
		}
		if !slices.Contains(dns, h) {
			dns = append(dns, h)
		}
	}
	return dns, ips
}

// RoleOf returns the role a certificate carries, or "" if it carries none of
// RoleServer, RoleOperator and RoleAgent. The answer is only as trustworthy
// as the certificate: call it on certificates whose chain was verified.
func RoleOf(cert *x509.Certificate) string {
	if cert == nil {
		return ""
	}
	// Exactly one known role: a certificate naming two roles was not made
	// by this package and is treated as having none.
	role := ""
	for _, ou := range cert.Subject.OrganizationalUnit {
		if knownRole(ou) {
			if role != "" && role != ou {
				return ""
			}
			role = ou
		}
	}
	return role
}

func knownRole(role string) bool {
	return role == RoleServer || role == RoleOperator || role == RoleAgent
}
