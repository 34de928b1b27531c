package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/droverhq/drover/internal/atomicfile"
	"github.com/droverhq/drover/internal/pki"
)

// IdentityFile is the name of the identity file in the data directory.
const IdentityFile = "identity.json"

// identityVersion is the identity file's format version.
const identityVersion = 1

// identity is what makes an agent a node of one cluster: its id, its key
// and certificate, the cluster CA it trusts, the servers it knows, and its
// site with the key of the site's gossip pool.
// It is kept in one file, written atomically, so that a key and its
// certificate are always replaced together.
type identity struct {
	NodeID    string
	Name      string
	ClusterID string
	Servers   []string
	CA        *x509.Certificate
	Cert      tls.Certificate // with Leaf and PrivateKey set
	// Site is the node's site as the control plane recorded it (a join
	// token's site overrides the one the agent asked for); "" for none.
	Site string
	// GossipKey encrypts the site's gossip pool (AES-256).
	GossipKey []byte
}

// identityJSON is the on-disk form of an identity.
type identityJSON struct {
	Version        int      `json:"version"`
	NodeID         string   `json:"node_id"`
	Name           string   `json:"name"`
	ClusterID      string   `json:"cluster_id,omitempty"`
	Servers        []string `json:"servers"`
	CAPEM          string   `json:"ca_pem"`
	CertificatePEM string   `json:"certificate_pem"`
	KeyPEM         string   `json:"key_pem"`
	Site           string   `json:"site,omitempty"`
	SiteGossipKey  []byte   `json:"site_gossip_key,omitempty"`
}

func identityPath(dataDir string) string { return filepath.Join(dataDir, IdentityFile) }

// loadIdentity reads the identity in dataDir. It returns nil and no error
// when there is none. A file that exists but cannot be used is
// ErrIdentityCorrupt, naming the file and what is wrong with it.
func loadIdentity(dataDir string) (*identity, error) {
	path := identityPath(dataDir)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	id, err := parseIdentity(data)
	if err != nil {
		return nil, withHint(fmt.Errorf("load identity: %s: %w: %v", path, ErrIdentityCorrupt, err),
			"remove %s to enroll this machine again with a new join token (--token or DROVER_TOKEN); the old node can be revoked with `drover node revoke`", path)
	}
	return id, nil
}

func parseIdentity(data []byte) (*identity, error) {
	var f identityJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("not JSON: %v", err)
	}
	if f.Version != identityVersion {
		return nil, fmt.Errorf("format version %d, want %d", f.Version, identityVersion)
	}
	if f.NodeID == "" {
		return nil, errors.New("no node id")
	}
	ca, err := pki.ParseCertPEM([]byte(f.CAPEM))
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %v", err)
	}
	leaf, err := pki.ParseCertPEM([]byte(f.CertificatePEM))
	if err != nil {
		return nil, fmt.Errorf("node certificate: %v", err)
	}
	key, err := parseKeyPEM([]byte(f.KeyPEM))
	if err != nil {
		return nil, fmt.Errorf("node key: %v", err)
	}
	if err := checkNodeCert(leaf, ca, &key.PublicKey, f.NodeID); err != nil {
		return nil, err
	}
	return &identity{
		NodeID:    f.NodeID,
		Name:      f.Name,
		ClusterID: f.ClusterID,
		Servers:   f.Servers,
		CA:        ca,
		Cert:      tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf},
		Site:      f.Site,
		GossipKey: f.SiteGossipKey,
	}, nil
}

// checkNodeCert checks that leaf is a node certificate for nodeID holding
// pub, signed by ca, with the agent role. Expiry is not checked: an expired
// certificate is still this node's, and the session reports it.
func checkNodeCert(leaf, ca *x509.Certificate, pub *ecdsa.PublicKey, nodeID string) error {
	if !pub.Equal(leaf.PublicKey) {
		return errors.New("the node certificate is not for the node key")
	}
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		return fmt.Errorf("the node certificate is not signed by the cluster CA: %v", err)
	}
	if role := pki.RoleOf(leaf); role != pki.RoleAgent {
		return fmt.Errorf("the node certificate has role %q, want %q", role, pki.RoleAgent)
	}
	if leaf.Subject.CommonName != nodeID {
		return fmt.Errorf("the node certificate names node %q, want %q", leaf.Subject.CommonName, nodeID)
	}
	return nil
}

// save writes the identity to dataDir atomically, readable by its owner
// only: it holds the node's private key.
func (id *identity) save(dataDir string) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(id.Cert.PrivateKey)
	if err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	f := identityJSON{
		Version:        identityVersion,
		NodeID:         id.NodeID,
		Name:           id.Name,
		ClusterID:      id.ClusterID,
		Servers:        id.Servers,
		CAPEM:          string(certPEM(id.CA.Raw)),
		CertificatePEM: string(certPEM(id.Cert.Leaf.Raw)),
		KeyPEM:         string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		Site:           id.Site,
		SiteGossipKey:  id.GossipKey,
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	if err := atomicfile.Write(identityPath(dataDir), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	return nil
}

// clone returns a copy whose slices can be changed independently.
func (id *identity) clone() *identity {
	c := *id
	c.Servers = slices.Clone(id.Servers)
	return &c
}

// newNodeKey makes a node key and a certificate request for it. The key
// never leaves the machine; only the request is sent.
func newNodeKey(name string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate node key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: name},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate request: %w", err)
	}
	return key, csr, nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// parseKeyPEM returns the ECDSA P-256 key in data.
func parseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM private key")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("not an ECDSA P-256 key")
	}
	return ec, nil
}
