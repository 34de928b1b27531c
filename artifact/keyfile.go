package artifact

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// PEM block types of key files: PKCS #8 and PKIX, as OpenSSL writes
// them (openssl genpkey -algorithm ed25519; openssl pkey -pubout), so
// that keys made elsewhere can be used and Drover's keys can be read by
// other tools.
const (
	pemPrivateKey = "PRIVATE KEY"
	pemPublicKey  = "PUBLIC KEY"
)

// MarshalPrivateKeyPEM encodes the key as a PEM "PRIVATE KEY" block
// (PKCS #8). The result is secret.
func (k SigningKey) MarshalPrivateKeyPEM() ([]byte, error) {
	if len(k.priv) != ed25519.PrivateKeySize {
		return nil, errors.New("encode signing key: no key")
	}
	der, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		return nil, fmt.Errorf("encode signing key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// MarshalPublicKeyPEM encodes an Ed25519 public key as a PEM "PUBLIC
// KEY" block (PKIX).
func MarshalPublicKeyPEM(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: der}), nil
}

// ParsePrivateKeyPEM reads a signing key from a PEM "PRIVATE KEY" block
// holding an Ed25519 key.
func ParsePrivateKeyPEM(b []byte) (SigningKey, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != pemPrivateKey {
		return SigningKey{}, fmt.Errorf("read signing key: want a PEM %q block (PKCS #8), as drover key create writes", pemPrivateKey)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return SigningKey{}, fmt.Errorf("read signing key: %w", err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return SigningKey{}, fmt.Errorf("read signing key: a %T, not an Ed25519 key", key)
	}
	return SigningKey{priv: priv}, nil
}

// ParsePublicKeyPEM reads an Ed25519 public key from a PEM "PUBLIC KEY"
// block or, for convenience, the public half of a "PRIVATE KEY" block.
func ParsePublicKeyPEM(b []byte) (ed25519.PublicKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("read public key: no PEM block; want %q (openssl pkey -pubout writes one)", pemPublicKey)
	}
	switch block.Type {
	case pemPublicKey:
		key, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("read public key: %w", err)
		}
		pub, ok := key.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("read public key: a %T, not an Ed25519 key", key)
		}
		return pub, nil
	case pemPrivateKey:
		k, err := ParsePrivateKeyPEM(b)
		if err != nil {
			return nil, err
		}
		return k.Public(), nil
	}
	return nil, fmt.Errorf("read public key: a PEM %q block; want %q", block.Type, pemPublicKey)
}
