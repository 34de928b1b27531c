// Package pki makes and checks the cluster's certificates: one CA per
// cluster, leaf certificates that carry their holder's role, and the TLS
// configurations that enforce those roles on every connection.
//
// Every certificate uses ECDSA P-256. The role of a leaf (server, operator or
// agent) lives in its Subject OrganizationalUnit; RoleOf reads it back. A role
// read from a certificate means something only once the certificate's chain
// has been verified against the cluster CA, which the configurations built by
// ServerTLSConfig and PeerTLSConfig do before looking at the role.
//
// A CA is immutable once made or loaded and safe for concurrent use.
package pki

import "errors"

// Roles a certificate can carry. They are written into certificates, so
// their spelling is part of the on-disk format and must never change.
const (
	// RoleServer is a control-plane server. Servers talk to each other, so
	// their certificates are valid for both server and client auth.
	RoleServer = "server"
	// RoleOperator is a person or tool driving the cluster (the CLI).
	RoleOperator = "operator"
	// RoleAgent is a drover-agent on a fleet machine.
	RoleAgent = "agent"
)

// PeerServerName is the DNS name every server certificate carries, so a
// server can verify a peer by this one fixed name instead of by whatever
// address it happened to dial.
const PeerServerName = "server.drover"

// Errors returned by this package, wrapped with the operation that failed;
// test for them with errors.Is. Failures to read or write files wrap the
// underlying *fs.PathError instead, so errors.Is(err, fs.ErrNotExist) works
// for a missing file.
var (
	// ErrNotPEM means a file or buffer held no PEM block of the expected type.
	ErrNotPEM = errors.New("no PEM data of the expected type")
	// ErrKeyMismatch means a private key is not the one for its certificate.
	ErrKeyMismatch = errors.New("private key does not match certificate")
	// ErrNotCA means a certificate offered as the cluster CA is not a CA.
	ErrNotCA = errors.New("certificate is not a CA certificate")
	// ErrExpired means a certificate is outside its validity period: expired,
	// or not valid yet.
	ErrExpired = errors.New("certificate is expired or not yet valid")
	// ErrUnsupportedKey means a key is not ECDSA P-256.
	ErrUnsupportedKey = errors.New("key is not ECDSA P-256")
	// ErrUnknownRole means a role is not one of RoleServer, RoleOperator or
	// RoleAgent, or is not allowed where it was used.
	ErrUnknownRole = errors.New("unknown or disallowed role")
	// ErrWrongRole means a verified peer certificate carries a role that the
	// connection does not accept.
	ErrWrongRole = errors.New("peer certificate has the wrong role")
	// ErrInvalidArgument means a caller passed an empty name, a non-positive
	// validity or a similar value that can never work.
	ErrInvalidArgument = errors.New("invalid argument")
)
