package pki

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func mustCA(t testing.TB, cn string) *CA {
	t.Helper()
	ca, err := NewCA(cn, 24*time.Hour)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func mustServer(t testing.TB, ca *CA, name string, hosts ...string) tls.Certificate {
	t.Helper()
	cert, err := ca.IssueServerCert(name, hosts, time.Hour)
	if err != nil {
		t.Fatalf("IssueServerCert: %v", err)
	}
	return cert
}

func mustClient(t testing.TB, ca *CA, name, role string) tls.Certificate {
	t.Helper()
	cert, err := ca.IssueClientCert(name, role, time.Hour)
	if err != nil {
		t.Fatalf("IssueClientCert: %v", err)
	}
	return cert
}

func TestNewCA(t *testing.T) {
	ca := mustCA(t, "drover test CA")
	cert := ca.Certificate()
	if !cert.IsCA || !cert.BasicConstraintsValid {
		t.Errorf("IsCA = %v, BasicConstraintsValid = %v; want both true", cert.IsCA, cert.BasicConstraintsValid)
	}
	if cert.Subject.CommonName != "drover test CA" {
		t.Errorf("CommonName = %q", cert.Subject.CommonName)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T is not P-256", cert.PublicKey)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Errorf("CA is not self-signed: %v", err)
	}
	fp := ca.Fingerprint()
	if len(fp) != 64 || strings.ToLower(fp) != fp {
		t.Errorf("Fingerprint = %q, want 64 lowercase hex digits", fp)
	}
	if _, err := hex.DecodeString(fp); err != nil {
		t.Errorf("Fingerprint not hex: %v", err)
	}
	if ca.Fingerprint() != Fingerprint(cert) {
		t.Error("CA.Fingerprint differs from Fingerprint(cert)")
	}
	block, _ := pem.Decode(ca.CertPEM())
	if block == nil || block.Type != "CERTIFICATE" || !bytes.Equal(block.Bytes, cert.Raw) {
		t.Error("CertPEM does not hold the CA certificate")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool()}); err != nil {
		t.Errorf("CA does not verify against its own pool: %v", err)
	}

	for _, tc := range []struct {
		name     string
		cn       string
		validity time.Duration
	}{
		{"empty name", "", time.Hour},
		{"zero validity", "ca", 0},
		{"negative validity", "ca", -time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewCA(tc.cn, tc.validity); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("NewCA(%q, %v) error = %v, want ErrInvalidArgument", tc.cn, tc.validity, err)
			}
		})
	}
}

func TestPoolIsFresh(t *testing.T) {
	ca := mustCA(t, "ca")
	other := mustCA(t, "other")
	p := ca.Pool()
	p.AddCert(other.Certificate())
	leaf := mustServer(t, other, "s1").Leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool()}); err == nil {
		t.Error("adding to one Pool changed another")
	}
}

func TestIssueServerCert(t *testing.T) {
	ca := mustCA(t, "ca")
	cert := mustServer(t, ca, "s1", "10.0.0.7", "s1.example.com", "localhost", "127.0.0.1", "", "fe80::1")
	leaf := cert.Leaf
	if leaf == nil {
		t.Fatal("Leaf not set")
	}
	if got := RoleOf(leaf); got != RoleServer {
		t.Errorf("RoleOf = %q, want %q", got, RoleServer)
	}
	if leaf.Subject.CommonName != "s1" {
		t.Errorf("CommonName = %q, want s1", leaf.Subject.CommonName)
	}
	wantDNS := []string{"localhost", PeerServerName, "s1.example.com"}
	if !slices.Equal(leaf.DNSNames, wantDNS) {
		t.Errorf("DNSNames = %q, want %q", leaf.DNSNames, wantDNS)
	}
	var ips []string
	for _, ip := range leaf.IPAddresses {
		ips = append(ips, ip.String())
	}
	wantIPs := []string{"127.0.0.1", "::1", "10.0.0.7", "fe80::1"}
	if !slices.Equal(ips, wantIPs) {
		t.Errorf("IPAddresses = %q, want %q", ips, wantIPs)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	if leaf.NotAfter.After(time.Now().Add(time.Hour + time.Minute)) {
		t.Errorf("NotAfter = %v, longer than requested", leaf.NotAfter)
	}

	for _, tc := range []struct {
		name  string
		usage x509.ExtKeyUsage
		host  string
	}{
		{"server auth by fixed name", x509.ExtKeyUsageServerAuth, PeerServerName},
		{"server auth by DNS host", x509.ExtKeyUsageServerAuth, "s1.example.com"},
		{"server auth by IP", x509.ExtKeyUsageServerAuth, "10.0.0.7"},
		{"server auth by loopback", x509.ExtKeyUsageServerAuth, "::1"},
		{"client auth", x509.ExtKeyUsageClientAuth, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := leaf.Verify(x509.VerifyOptions{
				Roots:     ca.Pool(),
				DNSName:   tc.host,
				KeyUsages: []x509.ExtKeyUsage{tc.usage},
			})
			if err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}

	t.Run("not for another name", func(t *testing.T) {
		if err := leaf.VerifyHostname("s2.example.com"); err == nil {
			t.Error("verified for a host it was not issued for")
		}
	})
	t.Run("another CA", func(t *testing.T) {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: mustCA(t, "other").Pool()}); err == nil {
			t.Error("verified against an unrelated CA")
		}
	})
	t.Run("capped at CA expiry", func(t *testing.T) {
		short, err := NewCA("short", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c := mustServer(t, short, "s1")
		if c.Leaf.NotAfter.After(short.Certificate().NotAfter) {
			t.Errorf("leaf NotAfter %v after CA NotAfter %v", c.Leaf.NotAfter, short.Certificate().NotAfter)
		}
		c, err = short.IssueServerCert("s1", nil, 1000*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if !c.Leaf.NotAfter.Equal(short.Certificate().NotAfter) {
			t.Errorf("leaf NotAfter %v, want CA NotAfter %v", c.Leaf.NotAfter, short.Certificate().NotAfter)
		}
	})

	for _, tc := range []struct {
		name     string
		cn       string
		validity time.Duration
	}{
		{"empty name", "", time.Hour},
		{"zero validity", "s1", 0},
	} {
		t.Run("invalid "+tc.name, func(t *testing.T) {
			if _, err := ca.IssueServerCert(tc.cn, nil, tc.validity); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("error = %v, want ErrInvalidArgument", err)
			}
		})
	}
}

func TestIssueClientCert(t *testing.T) {
	ca := mustCA(t, "ca")
	for _, tc := range []struct {
		role    string
		wantErr error
	}{
		{RoleOperator, nil},
		{RoleAgent, nil},
		{RoleServer, ErrUnknownRole},
		{"", ErrUnknownRole},
		{"admin", ErrUnknownRole},
	} {
		t.Run("role "+tc.role, func(t *testing.T) {
			cert, err := ca.IssueClientCert("n1", tc.role, time.Hour)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if got := RoleOf(cert.Leaf); got != tc.role {
				t.Errorf("RoleOf = %q, want %q", got, tc.role)
			}
			if cert.Leaf.Subject.CommonName != "n1" {
				t.Errorf("CommonName = %q", cert.Leaf.Subject.CommonName)
			}
			if _, err := cert.Leaf.Verify(x509.VerifyOptions{
				Roots:     ca.Pool(),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			}); err != nil {
				t.Errorf("client auth Verify: %v", err)
			}
			// A client certificate must never pass as a server.
			if _, err := cert.Leaf.Verify(x509.VerifyOptions{
				Roots:     ca.Pool(),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}); err == nil {
				t.Error("client certificate verified for server auth")
			}
		})
	}
}

func makeCSR(t *testing.T, key any, subject pkix.Name) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  subject,
		DNSNames: []string{PeerServerName},
	}, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return der
}

func TestSignCSR(t *testing.T) {
	ca := mustCA(t, "ca")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// The requester asks to be a server; only the caller decides.
	greedy := makeCSR(t, key, pkix.Name{CommonName: "root", OrganizationalUnit: []string{RoleServer}})
	tampered := slices.Clone(greedy)
	tampered[len(tampered)-5] ^= 0xff

	for _, tc := range []struct {
		name    string
		csr     []byte
		role    string
		wantErr error
		wantAny bool // some error, not a sentinel
	}{
		{name: "agent", csr: greedy, role: RoleAgent},
		{name: "operator", csr: greedy, role: RoleOperator},
		{name: "server", csr: greedy, role: RoleServer},
		{name: "unknown role", csr: greedy, role: "root", wantErr: ErrUnknownRole},
		{name: "P-384 key", csr: makeCSR(t, p384, pkix.Name{}), role: RoleAgent, wantErr: ErrUnsupportedKey},
		{name: "garbage", csr: []byte("not a csr"), role: RoleAgent, wantAny: true},
		{name: "bad signature", csr: tampered, role: RoleAgent, wantAny: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			der, err := ca.SignCSR(tc.csr, "edge-7", tc.role, time.Hour)
			switch {
			case tc.wantAny:
				if err == nil {
					t.Fatal("SignCSR succeeded, want error")
				}
				return
			case !errors.Is(err, tc.wantErr):
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			case err != nil:
				return
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if got := RoleOf(cert); got != tc.role {
				t.Errorf("RoleOf = %q, want %q", got, tc.role)
			}
			if cert.Subject.CommonName != "edge-7" {
				t.Errorf("CommonName = %q, want the caller's name", cert.Subject.CommonName)
			}
			if !key.PublicKey.Equal(cert.PublicKey) {
				t.Error("certificate is not for the CSR's key")
			}
			usage := x509.ExtKeyUsageClientAuth
			if tc.role == RoleServer {
				usage = x509.ExtKeyUsageServerAuth
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				t.Errorf("Verify: %v", err)
			}
			if tc.role != RoleServer && slices.Contains(cert.DNSNames, PeerServerName) {
				t.Error("non-server certificate copied the requested server name")
			}
		})
	}
}

func TestRoleOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		ous  []string
		want string
	}{
		{"server", []string{"server"}, RoleServer},
		{"agent", []string{"agent"}, RoleAgent},
		{"operator with other OU", []string{"team-ml", "operator"}, RoleOperator},
		{"repeated role", []string{"agent", "agent"}, RoleAgent},
		{"none", nil, ""},
		{"unknown", []string{"admin"}, ""},
		{"two roles", []string{"agent", "server"}, ""},
		{"case matters", []string{"Server"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert := &x509.Certificate{Subject: pkix.Name{OrganizationalUnit: tc.ous}}
			if got := RoleOf(cert); got != tc.want {
				t.Errorf("RoleOf(%q) = %q, want %q", tc.ous, got, tc.want)
			}
		})
	}
	if got := RoleOf(nil); got != "" {
		t.Errorf("RoleOf(nil) = %q", got)
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoadCA(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, "ca")
	caCert, caKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := ca.WriteFiles(caCert, caKey); err != nil {
		t.Fatal(err)
	}
	other := mustCA(t, "other")
	otherKey := filepath.Join(dir, "other-key.pem")
	if err := other.WriteFiles(filepath.Join(dir, "other.pem"), otherKey); err != nil {
		t.Fatal(err)
	}
	leafCert, leafKey := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "leaf-key.pem")
	if err := WriteCertKeyFiles(mustServer(t, ca, "s1"), leafCert, leafKey); err != nil {
		t.Fatal(err)
	}
	expired, err := newCA("old", time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	expCert, expKey := filepath.Join(dir, "exp.pem"), filepath.Join(dir, "exp-key.pem")
	if err := expired.WriteFiles(expCert, expKey); err != nil {
		t.Fatal(err)
	}
	future, err := newCA("future", time.Now().Add(24*time.Hour), time.Now().Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	futCert, futKey := filepath.Join(dir, "fut.pem"), filepath.Join(dir, "fut-key.pem")
	if err := future.WriteFiles(futCert, futKey); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, []byte("hello, not PEM\n"))
	// A SEC 1 key, as openssl ecparam writes it, is accepted too.
	sec1Key := filepath.Join(dir, "sec1-key.pem")
	sec1, err := x509.MarshalECPrivateKey(ca.key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, sec1Key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}))
	missing := filepath.Join(dir, "missing.pem")

	for _, tc := range []struct {
		name      string
		cert, key string
		wantErr   error
		wantMsg   string
	}{
		{name: "ok", cert: caCert, key: caKey},
		{name: "ok SEC 1 key", cert: caCert, key: sec1Key},
		{name: "cert missing", cert: missing, key: caKey, wantErr: fs.ErrNotExist, wantMsg: "read certificate"},
		{name: "key missing", cert: caCert, key: missing, wantErr: fs.ErrNotExist, wantMsg: "read key"},
		{name: "cert not PEM", cert: garbage, key: caKey, wantErr: ErrNotPEM, wantMsg: "garbage.pem"},
		{name: "key not PEM", cert: caCert, key: garbage, wantErr: ErrNotPEM, wantMsg: "garbage.pem"},
		{name: "key is a certificate", cert: caCert, key: caCert, wantErr: ErrNotPEM},
		{name: "key mismatch", cert: caCert, key: otherKey, wantErr: ErrKeyMismatch, wantMsg: "other-key.pem"},
		{name: "not a CA", cert: leafCert, key: leafKey, wantErr: ErrNotCA, wantMsg: `"s1"`},
		{name: "expired", cert: expCert, key: expKey, wantErr: ErrExpired},
		{name: "not yet valid", cert: futCert, key: futKey, wantErr: ErrExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LoadCA(tc.cert, tc.key)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("LoadCA error = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				if !strings.HasPrefix(err.Error(), "load CA: ") || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("error %q lacks %q", err, tc.wantMsg)
				}
				return
			}
			if got.Fingerprint() != ca.Fingerprint() {
				t.Errorf("Fingerprint after load = %s, want %s", got.Fingerprint(), ca.Fingerprint())
			}
			if !bytes.Equal(got.CertPEM(), ca.CertPEM()) {
				t.Error("CertPEM changed across write and load")
			}
		})
	}
}

func TestWriteFiles(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, "ca")
	certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	// Existing files are replaced, permissions included.
	writeFile(t, keyFile, []byte("old"))
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFiles(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file string
		perm os.FileMode
	}{
		{certFile, 0o644},
		{keyFile, 0o600},
	} {
		fi, err := os.Stat(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tc.perm {
			t.Errorf("%s mode = %v, want %v", filepath.Base(tc.file), fi.Mode().Perm(), tc.perm)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("directory holds %d entries, want 2 (temporary files left behind?)", len(entries))
	}
	loaded, err := LoadCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Fingerprint() != ca.Fingerprint() {
		t.Error("fingerprint not stable across write and load")
	}
	if err := ca.WriteFiles(filepath.Join(dir, "no", "such", "ca.pem"), filepath.Join(dir, "no", "key.pem")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("WriteFiles into a missing directory: error = %v, want fs.ErrNotExist", err)
	}
}

func TestCertKeyFiles(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, "ca")
	cert := mustClient(t, ca, "op", RoleOperator)
	certFile, keyFile := filepath.Join(dir, "op.pem"), filepath.Join(dir, "op-key.pem")
	if err := WriteCertKeyFiles(cert, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	got, err := LoadCertKeyFiles(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if got.Leaf == nil || !bytes.Equal(got.Leaf.Raw, cert.Leaf.Raw) {
		t.Error("loaded leaf differs")
	}
	if len(got.Certificate) != 1 {
		t.Errorf("chain length %d, want 1", len(got.Certificate))
	}
	if RoleOf(got.Leaf) != RoleOperator {
		t.Errorf("role %q after load", RoleOf(got.Leaf))
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v, %v", fi.Mode().Perm(), err)
	}

	otherCert, otherKey := filepath.Join(dir, "other.pem"), filepath.Join(dir, "other-key.pem")
	if err := WriteCertKeyFiles(mustClient(t, ca, "other", RoleAgent), otherCert, otherKey); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		cert, key string
		wantErr   error
	}{
		{"cert missing", filepath.Join(dir, "nope.pem"), keyFile, fs.ErrNotExist},
		{"key missing", certFile, filepath.Join(dir, "nope.pem"), fs.ErrNotExist},
		{"cert not PEM", keyFile, keyFile, ErrNotPEM},
		{"mismatch", certFile, otherKey, ErrKeyMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := LoadCertKeyFiles(tc.cert, tc.key); !errors.Is(err, tc.wantErr) {
				t.Errorf("error = %v, want %v", err, tc.wantErr)
			}
		})
	}
	t.Run("write empty", func(t *testing.T) {
		err := WriteCertKeyFiles(tls.Certificate{}, filepath.Join(dir, "e.pem"), filepath.Join(dir, "e-key.pem"))
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("error = %v, want ErrInvalidArgument", err)
		}
	})
}

func TestDeriveKey(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, "ca")
	if err := ca.WriteFiles(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "key.pem")); err != nil {
		t.Fatal(err)
	}
	reloaded, err := LoadCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	other := mustCA(t, "ca")

	gossip := DeriveKey(ca, "gossip", 32)
	for _, tc := range []struct {
		name    string
		ca      *CA
		purpose string
		n       int
		same    bool
	}{
		{"same CA same purpose", ca, "gossip", 32, true},
		{"reloaded CA same purpose", reloaded, "gossip", 32, true},
		{"other purpose", ca, "gossip2", 32, false},
		{"empty purpose", ca, "", 32, false},
		{"other CA", other, "gossip", 32, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := DeriveKey(tc.ca, tc.purpose, tc.n)
			if len(got) != tc.n {
				t.Fatalf("len = %d, want %d", len(got), tc.n)
			}
			if bytes.Equal(got, gossip) != tc.same {
				t.Errorf("equal to the gossip key = %v, want %v", !tc.same, tc.same)
			}
		})
	}
	// A shorter key is a prefix of a longer one for the same purpose, as
	// HKDF defines; callers must not rely on lengths to separate keys.
	if !bytes.Equal(DeriveKey(ca, "gossip", 16), gossip[:16]) {
		t.Error("HKDF output not a prefix")
	}
	for _, n := range []int{0, -1, 255*32 + 1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("DeriveKey(n=%d) did not panic", n)
				}
			}()
			DeriveKey(ca, "x", n)
		}()
	}
}

// handshake runs a TLS handshake over a loopback TCP connection and returns
// each side's error. (net.Pipe has no buffering, so two sides that both
// write, as a failing side does with its alert, can block each other.) Each
// side then does a one-byte exchange, because in TLS 1.3 the client finishes
// its handshake before the server has checked the client's certificate.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		sc, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer sc.Close()
		srv := tls.Server(sc, serverCfg)
		err = srv.HandshakeContext(ctx)
		if err == nil {
			_, err = srv.Write([]byte{1})
		}
		if err == nil {
			_, err = io.ReadFull(srv, make([]byte, 1))
		}
		done <- err
	}()
	var d net.Dialer
	cc, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cli := tls.Client(cc, clientCfg)
	clientErr = cli.HandshakeContext(ctx)
	if clientErr == nil {
		_, clientErr = io.ReadFull(cli, make([]byte, 1))
	}
	if clientErr == nil {
		_, clientErr = cli.Write([]byte{2})
	}
	serverErr = <-done
	return serverErr, clientErr
}

func TestHandshake(t *testing.T) {
	ca := mustCA(t, "ca")
	other := mustCA(t, "other")
	s1, s2 := mustServer(t, ca, "s1"), mustServer(t, ca, "s2")
	agent := mustClient(t, ca, "edge-1", RoleAgent)
	operator := mustClient(t, ca, "alice", RoleOperator)
	foreign := mustServer(t, other, "s9")

	// An impostor: signed by the right CA and valid for server auth, but
	// carrying the agent role. Only the role check can refuse it.
	impKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	impDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: mustSerial(t),
		Subject:      pkix.Name{CommonName: "imp", OrganizationalUnit: []string{RoleAgent}},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{PeerServerName},
	}, ca.Certificate(), &impKey.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	impostor := tls.Certificate{Certificate: [][]byte{impDER}, PrivateKey: impKey}

	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	writeFile(t, caFile, ca.CertPEM())
	cliCfg, err := ClientTLSConfig(caFile)
	if err != nil {
		t.Fatal(err)
	}
	withCert := func(cfg *tls.Config, cert tls.Certificate, serverName string) *tls.Config {
		cfg = cfg.Clone()
		cfg.Certificates = []tls.Certificate{cert}
		cfg.ServerName = serverName
		return cfg
	}
	noCert := cliCfg.Clone()
	noCert.ServerName = "localhost"

	pool := ca.Pool()
	for _, tc := range []struct {
		name          string
		server        *tls.Config
		client        *tls.Config
		wantServerErr error // nil: must succeed; errAny: any error
		wantClientErr error
	}{
		{
			name:   "peer to peer",
			server: PeerTLSConfig(pool, s1),
			client: PeerTLSConfig(pool, s2),
		},
		{
			name:          "peer refuses agent client",
			server:        PeerTLSConfig(pool, s1),
			client:        withCert(cliCfg, agent, PeerServerName),
			wantServerErr: ErrWrongRole,
			wantClientErr: errAny,
		},
		{
			name:          "peer refuses operator client",
			server:        PeerTLSConfig(pool, s1),
			client:        withCert(cliCfg, operator, PeerServerName),
			wantServerErr: ErrWrongRole,
			wantClientErr: errAny,
		},
		{
			name:          "peer refuses impostor client",
			server:        PeerTLSConfig(pool, s1),
			client:        PeerTLSConfig(pool, impostor),
			wantServerErr: ErrWrongRole,
			wantClientErr: errAny,
		},
		{
			name:          "peer refuses impostor server",
			server:        PeerTLSConfig(pool, impostor),
			client:        PeerTLSConfig(pool, s1),
			wantServerErr: errAny,
			wantClientErr: ErrWrongRole,
		},
		{
			name:          "peer refuses agent posing as server",
			server:        PeerTLSConfig(pool, agent),
			client:        PeerTLSConfig(pool, s1),
			wantServerErr: errAny,
			wantClientErr: errAny,
		},
		{
			name:          "peer refuses server of another CA",
			server:        PeerTLSConfig(other.Pool(), foreign),
			client:        PeerTLSConfig(pool, s1),
			wantServerErr: errAny,
			wantClientErr: errAny,
		},
		{
			name:          "peer refuses client of another CA",
			server:        PeerTLSConfig(pool, s1),
			client:        PeerTLSConfig(pool, foreign),
			wantServerErr: errAny,
			wantClientErr: errAny,
		},
		{
			name:          "peer refuses client without certificate",
			server:        PeerTLSConfig(pool, s1),
			client:        withCert(noCert, tls.Certificate{}, PeerServerName),
			wantServerErr: errAny,
			wantClientErr: errAny,
		},
		{
			name:   "API server accepts operator",
			server: ServerTLSConfig(pool, s1, tls.RequireAndVerifyClientCert),
			client: withCert(cliCfg, operator, "localhost"),
		},
		{
			name:   "API server accepts agent by IP",
			server: ServerTLSConfig(pool, s1, tls.RequireAndVerifyClientCert),
			client: withCert(cliCfg, agent, "127.0.0.1"),
		},
		{
			name:   "API server optional client cert",
			server: ServerTLSConfig(pool, s1, tls.VerifyClientCertIfGiven),
			client: noCert,
		},
		{
			name:          "API server requires client cert",
			server:        ServerTLSConfig(pool, s1, tls.RequireAndVerifyClientCert),
			client:        noCert,
			wantServerErr: errAny,
			wantClientErr: errAny,
		},
		{
			name:          "API server refuses client of another CA",
			server:        ServerTLSConfig(pool, s1, tls.RequireAndVerifyClientCert),
			client:        withCert(cliCfg, mustClient(t, other, "mallory", RoleOperator), "localhost"),
			wantServerErr: errAny,
			wantClientErr: errAny,
		},
		{
			name:          "CLI refuses wrong host name",
			server:        ServerTLSConfig(pool, s1, tls.NoClientCert),
			client:        withCert(noCert, tls.Certificate{}, "evil.example.com"),
			wantServerErr: errAny,
			wantClientErr: errAny,
		},
		{
			name:          "CLI refuses server of another CA",
			server:        ServerTLSConfig(other.Pool(), foreign, tls.NoClientCert),
			client:        noCert,
			wantServerErr: errAny,
			wantClientErr: errAny,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.client.Certificates != nil && len(tc.client.Certificates[0].Certificate) == 0 {
				tc.client.Certificates = nil
			}
			serverErr, clientErr := handshake(t, tc.server, tc.client)
			check := func(side string, got, want error) {
				t.Helper()
				switch {
				case want == nil && got != nil:
					t.Errorf("%s: unexpected error: %v", side, got)
				case want == errAny && got == nil:
					t.Errorf("%s: succeeded, want an error", side)
				case want != nil && want != errAny && !errors.Is(got, want):
					t.Errorf("%s: error = %v, want %v", side, got, want)
				}
			}
			check("server", serverErr, tc.wantServerErr)
			check("client", clientErr, tc.wantClientErr)
		})
	}
}

var errAny = errors.New("any error")

func mustSerial(t *testing.T) *big.Int {
	t.Helper()
	s, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestLoopbackMutualTLS runs server-to-server mutual TLS over real TCP on
// loopback and checks both ends see the other's verified identity and can
// exchange data both ways.
func TestLoopbackMutualTLS(t *testing.T) {
	ca := mustCA(t, "ca")
	pool := ca.Pool()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", PeerTLSConfig(pool, mustServer(t, ca, "s1")))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	type result struct {
		peer string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		buf := make([]byte, 4)
		if _, err := io.ReadFull(tc, buf); err != nil {
			done <- result{err: err}
			return
		}
		if _, err := tc.Write(bytes.ToUpper(buf)); err != nil {
			done <- result{err: err}
			return
		}
		done <- result{peer: tc.ConnectionState().PeerCertificates[0].Subject.CommonName}
	}()

	d := tls.Dialer{Config: PeerTLSConfig(pool, mustServer(t, ca, "s2"))}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != "PING" {
		t.Errorf("echo = %q", buf)
	}
	cs := c.(*tls.Conn).ConnectionState()
	if got := cs.PeerCertificates[0].Subject.CommonName; got != "s1" {
		t.Errorf("client sees peer %q, want s1", got)
	}
	if cs.Version != tls.VersionTLS13 {
		t.Errorf("version %x, want TLS 1.3", cs.Version)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.peer != "s2" {
		t.Errorf("server sees peer %q, want s2", r.peer)
	}
}

func TestClientTLSConfig(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, []byte("nope"))
	for _, tc := range []struct {
		name    string
		file    string
		wantErr error
	}{
		{"missing", filepath.Join(dir, "missing.pem"), fs.ErrNotExist},
		{"not PEM", garbage, ErrNotPEM},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ClientTLSConfig(tc.file)
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("error = %v, want %v", err, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), filepath.Base(tc.file)) {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestRequireRole(t *testing.T) {
	ca := mustCA(t, "ca")
	server := mustServer(t, ca, "s1").Leaf
	agent := mustClient(t, ca, "a1", RoleAgent).Leaf
	verified := func(leaf *x509.Certificate) tls.ConnectionState {
		return tls.ConnectionState{
			PeerCertificates: []*x509.Certificate{leaf},
			VerifiedChains:   [][]*x509.Certificate{{leaf, ca.Certificate()}},
		}
	}
	for _, tc := range []struct {
		name  string
		roles []string
		cs    tls.ConnectionState
		ok    bool
	}{
		{"server wanted, server given", []string{RoleServer}, verified(server), true},
		{"agent or operator wanted, agent given", []string{RoleAgent, RoleOperator}, verified(agent), true},
		{"server wanted, agent given", []string{RoleServer}, verified(agent), false},
		{"unverified chain", []string{RoleServer}, tls.ConnectionState{PeerCertificates: []*x509.Certificate{server}}, false},
		{"no certificate", []string{RoleServer}, tls.ConnectionState{}, false},
		{"no roles wanted", nil, verified(server), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := RequireRole(tc.roles...)(tc.cs)
			if tc.ok != (err == nil) {
				t.Errorf("error = %v, want ok = %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrWrongRole) {
				t.Errorf("error %v does not wrap ErrWrongRole", err)
			}
		})
	}
}
