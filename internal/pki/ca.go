package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"time"

	"github.com/droverhq/drover/internal/atomicfile"
)

// clockSkew backdates NotBefore on every certificate this package makes, so a
// certificate issued on one machine is not "not yet valid" on a peer whose
// clock runs slightly behind.
const clockSkew = 5 * time.Minute

// CA is the cluster certificate authority: a self-signed certificate and its
// private key. It is immutable and safe for concurrent use.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewCA makes a new CA with a fresh key, valid from now for validity.
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	if validity <= 0 {
		return nil, fmt.Errorf("new CA: validity %s: %w", validity, ErrInvalidArgument)
	}
	now := time.Now()
	ca, err := newCA(commonName, now.Add(-clockSkew), now.Add(validity))
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	return ca, nil
}

// newCA is NewCA with explicit validity bounds, so tests can make CAs that
// are already expired.
func newCA(commonName string, notBefore, notAfter time.Time) (*CA, error) {
	if commonName == "" {
		return nil, fmt.Errorf("empty common name: %w", ErrInvalidArgument)
	}
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("validity must be positive: %w", ErrInvalidArgument)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs leaves only; an intermediate it signed by mistake
		// could not sign anything that verifies.
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return &CA{cert: cert, key: key}, nil
}

// LoadCA reads a CA from a PEM certificate file and a PEM private key file
// (PKCS #8 or SEC 1). It refuses a key that does not match the certificate,
// a certificate that is not a CA, and a CA outside its validity period.
func LoadCA(certPEMFile, keyPEMFile string) (*CA, error) {
	ca, err := loadCA(certPEMFile, keyPEMFile, time.Now())
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	return ca, nil
}

func loadCA(certFile, keyFile string, now time.Time) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", certFile, err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", keyFile, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("key %s for certificate %s: %w", keyFile, certFile, ErrKeyMismatch)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("certificate %s (subject %q): %w", certFile, cert.Subject.CommonName, ErrNotCA)
	}
	const stamp = time.RFC3339
	if now.After(cert.NotAfter) {
		return nil, fmt.Errorf("certificate %s expired at %s (now %s): %w",
			certFile, cert.NotAfter.UTC().Format(stamp), now.UTC().Format(stamp), ErrExpired)
	}
	if now.Before(cert.NotBefore) {
		return nil, fmt.Errorf("certificate %s not valid until %s (now %s): %w",
			certFile, cert.NotBefore.UTC().Format(stamp), now.UTC().Format(stamp), ErrExpired)
	}
	return &CA{cert: cert, key: key}, nil
}

// WriteFiles writes the CA certificate (mode 0644) and private key (mode
// 0600) as PEM. Each file is replaced atomically, so a crash never leaves a
// half-written key behind.
func (c *CA) WriteFiles(certFile, keyFile string) error {
	keyPEM, err := encodeKeyPEM(c.key)
	if err != nil {
		return fmt.Errorf("write CA files: %w", err)
	}
	// The key goes first: a certificate on disk without its key is an
	// unusable CA, but that state is easier to spot than the reverse.
	if err := atomicfile.Write(keyFile, keyPEM, 0o600); err != nil {
		return fmt.Errorf("write CA files: %w", err)
	}
	if err := atomicfile.Write(certFile, c.CertPEM(), 0o644); err != nil {
		return fmt.Errorf("write CA files: %w", err)
	}
	return nil
}

// Certificate returns the CA certificate. Callers must not modify it.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// CertPEM returns the CA certificate as PEM, as handed to clients and agents.
func (c *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})
}

// Fingerprint returns the lowercase hex SHA-256 of the CA certificate's DER
// encoding. Join tokens carry it so a new agent can pin the CA before it
// trusts anything the server says.
func (c *CA) Fingerprint() string {
	return Fingerprint(c.cert)
}

// Fingerprint returns the lowercase hex SHA-256 of cert's DER encoding, the
// same value CA.Fingerprint returns for a CA certificate.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// Pool returns a new certificate pool holding only the CA certificate. Each
// call returns a fresh pool, so a caller adding to it affects no one else.
func (c *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(c.cert)
	return pool
}

// deriveInfoPrefix separates keys derived here from any other use of HKDF
// with the same secret. Changing it changes every derived key in every
// cluster, so it must stay as it is.
const deriveInfoPrefix = "drover pki derive v1: "

// DeriveKey derives n bytes of key material for purpose from the CA private
// key with HKDF-SHA256. Every server holding the CA gets the same key for the
// same purpose (for example the gossip encryption key) without more
// configuration, and different purposes give unrelated keys. Anyone who can
// read the CA key can derive these keys too.
//
// DeriveKey panics if n is not between 1 and 8160 (255 SHA-256 blocks), as a
// fixed key length outside that range is a programming error.
func DeriveKey(ca *CA, purpose string, n int) []byte {
	if n < 1 || n > 255*sha256.Size {
		panic(fmt.Sprintf("pki: DeriveKey: key length %d out of range [1, %d]", n, 255*sha256.Size))
	}
	secret, err := ca.key.Bytes()
	if err != nil {
		// Keys are generated or parsed as P-256 by this package only.
		panic(fmt.Sprintf("pki: DeriveKey: %v", err))
	}
	key, err := hkdf.Key(sha256.New, secret, nil, deriveInfoPrefix+purpose, n)
	if err != nil {
		panic(fmt.Sprintf("pki: DeriveKey: %v", err))
	}
	return key
}

// newSerial returns a random 128-bit serial number. Serials must be unique
// per CA; with no issuance log to count from, randomness is what guarantees
// that.
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	serial, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	// A zero serial is not allowed in certificates.
	return serial.Add(serial, big.NewInt(1)), nil
}
