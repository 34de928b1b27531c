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
		Short: "Manage operator access: tokens and the policies that limit them",
		Long: `Manage who may operate the cluster, and what each of them may do.

Operators authenticate with a token's secret, sent as a bearer token (--token
or ` + envToken + `). A new cluster has no tokens and refuses changes until you
run ` + "`drover acl bootstrap`" + `, which creates the first token, with the built-in
management policy. With it, create a token for each person and each CI job,
with only the policies they need, and keep the management token for
emergencies.

Tokens
  A token has a name, an accessor ID and a secret. The accessor ID is not
  secret: it names the token in ` + "`drover audit ls`" + `. The secret is shown
  once, when the token is created or rotated; the server keeps only its
  hash. A token carries one or more policies, and may expire.

Policies
  A policy is a named list of rules; ` + "`drover acl policy apply`" + ` reads them
  from a YAML file. Each rule grants read or write on one resource, or
  denies it, and may be narrowed to some of its objects:

    model       models, their versions and aliases    name or prefix
    deployment  deployments and their rollouts        name or prefix
    node        nodes: read, drain, label, revoke     site, labels
    join_token  join tokens that enroll agents        site
    telemetry   fleet telemetry, the servers' /metrics
    audit       the audit log
    operator    the cluster itself: Raft peers, snapshots, tokens, policies

  A token may do what any rule of its policies grants. Write implies read.
  Deny wins: a rule that denies overrides every grant of every other rule
  that matches, in any of the token's policies.

  Two policies are built in, exist in every cluster and cannot be changed:
    management  everything, including what later versions of Drover add
    read-only   read everything, change nothing

  Write on operator lets a token create tokens with any policy, so it is as
  good as management: grant it only to those who may do everything.`,
		Example: `  # A site operator who runs the Berlin nodes and reads everything else,
  # but may not see tokens or policies: deny wins over read-only's read.
  # Her policy, in berlin-ops.yaml:
  #
  #   description: Operate the Berlin site
  #   rules:
  #     - resource: node
  #       site: berlin
  #       access: write
  #     - resource: join_token
  #       site: berlin
  #       access: write
  #     - resource: operator
  #       access: deny
  #
  drover acl policy apply berlin-ops -f berlin-ops.yaml
  drover acl token create --name alice --policy berlin-ops --policy read-only

  # A CI job that may push the vision team's models and do nothing else.
  # Its policy, in ci-vision.yaml:
  #
  #   description: Push the vision team's models from CI
  #   rules:
  #     - resource: model
  #       prefix: vision-
  #       access: write
  #
  drover acl policy apply ci-vision -f ci-vision.yaml
  drover acl token create --name ci-vision --policy ci-vision --ttl 2160h

  # Which token am I using, and what has ci-vision done?
  drover acl token self
  drover audit ls --actor ci-vision`,
	}, newACLBootstrapCommand(g), newACLTokenCommand(g), newACLPolicyCommand(g))
}

func newACLBootstrapCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "bootstrap",
		Short: "Create the first management token (once per cluster)",
		Long: `Create the cluster's first token, which has the built-in "management" policy
and may do everything. It works exactly once per cluster and needs no token.

The secret is printed once and never stored by the server (it keeps only a
hash), so save it now, for example in a password manager. The accessor ID
is not secret; it names the token in the audit log and in
` + "`drover acl token`" + ` commands.

Use the management token to create tokens for people and CI jobs with
` + "`drover acl token create`" + `, then keep it for emergencies. If its secret
leaks or was shared, give it a new one with ` + "`drover acl token rotate`" + `
and the accessor ID; the old secret stops working at once.

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
				secretHint(w, m.GetSecretId())
			})
		},
	}
}

// secretHint tells the person who was just shown a secret how to use it.
func secretHint(w io.Writer, secret string) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Use it in this shell with:")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  export %s=%s\n", envToken, secret)
}
