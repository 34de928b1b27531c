package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/droverhq/drover/internal/atomicfile"
)

// WriteCertKeyFiles writes cert's chain (leaf first) as PEM to certFile with
// mode 0644 and its private key as PKCS #8 PEM to keyFile with mode 0600.
// Each file is replaced atomically.
func WriteCertKeyFiles(cert tls.Certificate, certFile, keyFile string) error {
	if len(cert.Certificate) == 0 {
		return fmt.Errorf("write certificate files: no certificate: %w", ErrInvalidArgument)
	}
	var certPEM []byte
	for _, der := range cert.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyPEM, err := encodeKeyPEM(cert.PrivateKey)
	if err != nil {
		return fmt.Errorf("write certificate files: %w", err)
	}
	if err := atomicfile.Write(keyFile, keyPEM, 0o600); err != nil {
		return fmt.Errorf("write certificate files: %w", err)
	}
	if err := atomicfile.Write(certFile, certPEM, 0o644); err != nil {
		return fmt.Errorf("write certificate files: %w", err)
	}
	return nil
}

// LoadCertKeyFiles reads a certificate chain and its ECDSA P-256 private key
// from PEM files, as written by WriteCertKeyFiles, and fills in Leaf. It does
// not check the validity period, so an expired certificate can still be
// loaded to be renewed; the TLS handshake is where expiry is enforced.
func LoadCertKeyFiles(certFile, keyFile string) (tls.Certificate, error) {
	cert, err := loadCertKeyFiles(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load certificate files: %w", err)
	}
	return cert, nil
}

func loadCertKeyFiles(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("read key: %w", err)
	}
	var chain [][]byte
	for rest := certPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			chain = append(chain, block.Bytes)
		}
	}
	if len(chain) == 0 {
		return tls.Certificate{}, fmt.Errorf("certificate %s: %w", certFile, ErrNotPEM)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate %s: %w", certFile, err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("key %s: %w", keyFile, err)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return tls.Certificate{}, fmt.Errorf("key %s for certificate %s: %w", keyFile, certFile, ErrKeyMismatch)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// ParseCertPEM returns the first CERTIFICATE block in data, parsed; data
// without one is ErrNotPEM.
func ParseCertPEM(data []byte) (*x509.Certificate, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, ErrNotPEM
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

// parseKeyPEM returns the first private key block in data, which must hold
// an ECDSA P-256 key in PKCS #8 or SEC 1 form.
func parseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, ErrNotPEM
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		ec, ok := key.(*ecdsa.PrivateKey)
		if !ok || ec.Curve != elliptic.P256() {
			return nil, ErrUnsupportedKey
		}
		return ec, nil
	}
}

func encodeKeyPEM(key any) ([]byte, error) {
	if key == nil {
		return nil, fmt.Errorf("no private key: %w", ErrInvalidArgument)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
