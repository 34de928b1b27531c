package cli

import (
	"fmt"
	"io"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newACLCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "acl",
		Short: "Manage operator access: bootstrap the management token",
		Long: `Manage who may operate the cluster.

Operators authenticate with a token secret, sent as a bearer token. A new
cluster has no tokens and refuses changes until you run ` + "`drover acl bootstrap`" + `,
which creates the first, all-powerful management token. Bootstrap is the
only ACL command so far: further operator tokens and policies are not yet
available, so everyone operates with the management token.`,
		Example: `  drover acl bootstrap`,
	}, newACLBootstrapCommand(g))
}

func newACLBootstrapCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "bootstrap",
		Short: "Create the first management token (once per cluster)",
		Long: `Create the cluster's first token, which has the "management" policy and
may do everything. It works exactly once per cluster and needs no token.

The secret is printed once and never stored by the server (it keeps only a
hash), so save it now, for example in a password manager. The accessor ID
is not secret; it names the token in the audit log.

If the secret is lost and no other management token exists, the cluster's
tokens can only be reset by an operator with access to the servers.`,
		Example: `  drover acl bootstrap
  export DROVER_TOKEN=<the secret it printed>

  # Keep the secret out of the terminal's scrollback:
  drover acl bootstrap -o json | jq -r .secretId > ~/.drover-token`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.acl.Bootstrap(cmd.Context(), connect.NewRequest(&droverv1.BootstrapRequest{}))
			if err != nil {
				return err
			}
			m := resp.Msg
			return printResult(cmd, m, func(w io.Writer) {
				fmt.Fprintln(w, "Created the management token. The secret is shown only this once; store it safely.")
				fmt.Fprintln(w)
				field(w, "Accessor ID", m.GetAccessorId())
				field(w, "Secret ID", m.GetSecretId())
				fmt.Fprintln(w)
				fmt.Fprintln(w, "Use it in this shell with:")
				fmt.Fprintln(w)
				fmt.Fprintf(w, "  export %s=%s\n", envToken, m.GetSecretId())
			})
		},
	}
}
