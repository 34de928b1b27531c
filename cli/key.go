package cli

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/internal/names"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newKeyCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "key",
		Short: "Manage the operators' manifest signing keys",
		Long: `Manage the keys operators sign model versions with.

Every pushed version's manifest is signed by the cluster's own key. An
operator (or a release pipeline) can sign it too, with a key of its own,
so that what agents run can be traced to who published it:

  drover key create ci-release --out ci-release.key
  drover model push ./out --model resnet --sign-key ci-release.key

The private key stays in the file; the cluster keeps only the public key,
and refuses a push signed by a key it does not know, by a revoked key, or
with a signature that does not verify. Agents trust manifests signed by
the cluster's key or by a registered key that is not revoked.

Registering and revoking keys needs operator:write: a registered key is
trusted for every model.`,
		Example: `  drover key create ci-release
  drover key import hsm-1 --public hsm-1.pub.pem
  drover key ls
  drover key revoke ci-release`,
	}, newKeyCreateCommand(g), newKeyImportCommand(g), newKeyListCommand(g), newKeyRevokeCommand(g))
}

func newKeyCreateCommand(g *globals) *cobra.Command {
	var out, description string
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Make a signing key, keep it in a file and register its public half",
		Long: `Make a new Ed25519 signing key on this machine, write it to a file readable
only by you (PEM, PKCS #8, as OpenSSL writes; --out, NAME.key by default)
and register its public half with the cluster under NAME.

The file is never overwritten: name another with --out. Keep it as you
would a password; whoever holds it can sign versions agents trust, until
the key is revoked. Should registering fail, the file is kept, and
` + "`drover key import NAME --public FILE`" + ` registers it later.`,
		Example: `  drover key create ci-release
  drover key create ci-release --out ~/.config/drover/ci-release.key --description "release pipeline"`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !names.IsName(name) {
				return usageErr(cmd, fmt.Errorf("key name %s: %s", name, names.Rule))
			}
			if out == "" {
				out = name + ".key"
			}
			key, err := artifact.GenerateSigningKey(rand.Reader)
			if err != nil {
				return err
			}
			pemBytes, err := key.MarshalPrivateKeyPEM()
			if err != nil {
				return err
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			if err := writeNewSecretFile(out, pemBytes); err != nil {
				return err
			}
			resp, err := c.key.RegisterKey(cmd.Context(), connect.NewRequest(&droverv1.RegisterKeyRequest{
				Name: name, PublicKey: key.Public(), Description: description,
			}))
			if err != nil {
				// The server's hint says what to fix; what to do with the
				// file is said apart from it.
				fmt.Fprintf(g.stderr, "The private key is kept in %s: once the refusal below is dealt with, register it with `drover key import NAME --public %s`, or delete the file.\n", out, out)
				return fmt.Errorf("register key %s (%s): %w", name, key.ID(), err)
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Created signing key %s (%s, index %d); the private key is in %s\n",
					name, resp.Msg.GetKey().GetKeyId(), resp.Msg.GetMeta().GetIndex(), out)
				fmt.Fprintf(w, "Sign a push with it: drover model push PATH --model NAME --sign-key %s\n", out)
			})
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "write the private key to `FILE` (default NAME.key; never overwritten)")
	cmd.Flags().StringVar(&description, "description", "", "what the key is for")
	return cmd
}

// writeNewSecretFile writes b to a file that must not exist yet, readable
// by its owner only. A half-written file is removed.
func writeNewSecretFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return withHint(fmt.Errorf("write private key: %s exists, and is never overwritten", path), "name another file with --out")
	}
	if err != nil {
		return fmt.Errorf("write private key: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("write private key %s: %w", path, err)
	}
	return nil
}

func newKeyImportCommand(g *globals) *cobra.Command {
	var public, description string
	cmd := &cobra.Command{
		Use:   "import NAME --public FILE",
		Short: "Register the public half of a signing key made elsewhere",
		Long: `Register an existing Ed25519 public key under NAME, for a key made
elsewhere (on an offline machine, in an HSM) or one ` + "`drover key create`" + `
could not register. FILE holds a PEM "PUBLIC KEY" block, as
` + "`openssl pkey -pubout`" + ` writes it; a "PRIVATE KEY" file is accepted too, and
only its public half is sent.`,
		Example: `  openssl genpkey -algorithm ed25519 -out hsm-1.key
  openssl pkey -in hsm-1.key -pubout -out hsm-1.pub.pem
  drover key import hsm-1 --public hsm-1.pub.pem`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !names.IsName(name) {
				return usageErr(cmd, fmt.Errorf("key name %s: %s", name, names.Rule))
			}
			if public == "" {
				return usageErr(cmd, errors.New("--public is required: name the file that holds the public key"))
			}
			b, err := os.ReadFile(public)
			if err != nil {
				return fmt.Errorf("import key: %w", err)
			}
			pub, err := artifact.ParsePublicKeyPEM(b)
			if err != nil {
				return fmt.Errorf("import key from %s: %w", public, err)
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.key.RegisterKey(cmd.Context(), connect.NewRequest(&droverv1.RegisterKeyRequest{
				Name: name, PublicKey: pub, Description: description,
			}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Registered signing key %s (%s, index %d)\n", name, resp.Msg.GetKey().GetKeyId(), resp.Msg.GetMeta().GetIndex())
			})
		},
	}
	cmd.Flags().StringVar(&public, "public", "", "`FILE` that holds the public key, PEM (required)")
	cmd.Flags().StringVar(&description, "description", "", "what the key is for")
	return cmd
}

func newKeyListCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List signing keys, revoked ones included",
		Long: `List the operators' signing keys, oldest first, revoked ones included: a
revoked key's id can never be registered again. Only public keys are
known to the cluster.

Columns:
  KEY ID   what a manifest signature names
  STATUS   active (trusted by agents) or revoked`,
		Example: `  drover key ls
  drover key ls -o json | jq -r '.keys[] | select(.revokeTime | not) | .name'`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			resp, err := c.key.ListKeys(cmd.Context(), connect.NewRequest(&droverv1.ListKeysRequest{Options: opts}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { keyTable(w, resp.Msg.GetKeys()) })
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

func keyTable(w io.Writer, keys []*droverv1.SigningKey) {
	row(w, "NAME", "KEY ID", "STATUS", "DESCRIPTION", "CREATED", "BY", "REVOKED")
	for _, k := range keys {
		status, revoked := "active", "-"
		if k.GetRevokeIndex() != 0 {
			status = "revoked"
			revoked = orDash(formatTime(k.GetRevokeTime()))
		}
		row(w, k.GetName(), k.GetKeyId(), status, orDash(k.GetDescription()), formatTime(k.GetCreateTime()),
			orDash(k.GetCreatedByName()), revoked)
	}
}

func newKeyRevokeCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME|ID",
		Short: "Stop trusting a signing key",
		Long: `Revoke a signing key, by its name or its key id. From then on the cluster
refuses pushes signed with it, and agents refuse manifests signed only by
it. Versions pushed with it before stay trusted: the cluster countersigned
them when the key was good; delete them to stop their use.

Revoking is final: the key id cannot be registered again. The name is
free for a new key.`,
		Example: `  drover key revoke ci-release
  drover key revoke 3f9a0c1d2e4b5a69`,
		Args: exactArgs("NAME|ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.key.RevokeKey(cmd.Context(), connect.NewRequest(&droverv1.RevokeKeyRequest{Key: args[0]}))
			if err != nil {
				return err
			}
			k := resp.Msg.GetKey()
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Revoked signing key %s (%s, index %d)\n", k.GetName(), k.GetKeyId(), resp.Msg.GetMeta().GetIndex())
			})
		},
	}
}

// readSigningKey reads the private key a push is signed with.
func readSigningKey(path string) (artifact.SigningKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return artifact.SigningKey{}, fmt.Errorf("--sign-key: %w", err)
	}
	k, err := artifact.ParsePrivateKeyPEM(b)
	if err != nil {
		return artifact.SigningKey{}, withHint(fmt.Errorf("--sign-key %s: %w", path, err), "give the file `drover key create` wrote")
	}
	return k, nil
}
