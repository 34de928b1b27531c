package cli

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/droverhq/drover/controlplane/acl"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newACLPolicyCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "policy",
		Short: "Manage policies, the rules that say what tokens may do",
		Long: `Manage policies. A policy is a named list of rules, each granting read or
write on one resource, or denying it; tokens carry policies by name. Apply a
policy from a YAML file (its format is in ` + "`drover acl policy apply --help`" + `),
then create tokens with it.

Changing a policy changes what every token with it may do, at once.

Two policies are built in and cannot be changed or removed: "management"
(everything) and "read-only" (read everything, change nothing).`,
		Example: `  drover acl policy apply ci-vision -f ci-vision.yaml
  drover acl policy ls
  drover acl policy show ci-vision
  drover acl policy rm ci-vision`,
	},
		newACLPolicyApplyCommand(g),
		newACLPolicyListCommand(g),
		newACLPolicyShowCommand(g),
		newACLPolicyRemoveCommand(g),
	)
}

func newACLPolicyApplyCommand(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply NAME -f FILE",
		Short: "Create or replace a policy from a YAML file",
		Long: `Create the policy NAME from FILE, or replace its rules and description if it
exists. Tokens with the policy get the new rules at once. FILE is YAML, or -
to read it from stdin:

  description: Push the vision team's models from CI   # optional
  rules:
    - resource: model     # what the rule is about, see below
      prefix: vision-     # models whose name starts with vision-
      access: write       # read, write (implies read) or deny
    - resource: node
      site: berlin        # only nodes in this site
      labels:             # only nodes with all of these labels
        role: edge
      access: write

Every rule names a resource and an access. Without qualifiers it matches
every object of the resource; qualifiers narrow it:

  resource    what it covers                        qualifiers
  model       models, their versions and aliases    name or prefix
  deployment  deployments and their rollouts        name or prefix
  node        nodes: read, drain, label, revoke     site, labels
  join_token  join tokens that enroll agents        site
  telemetry   fleet telemetry, the servers' /metrics
  audit       the audit log
  operator    the cluster: peers, snapshots, tokens, policies

  name: NAME     exactly this object
  prefix: P      objects whose name starts with P (name or prefix, not both)
  site: SITE     objects in this site
  labels: {K: V} objects carrying all of these labels

Write implies read. Deny wins over every grant of any other matching rule,
in any of a token's policies, so a narrow deny can carve an exception out of
a broad grant.

The policy's name is NAME, from the command line. The file may say name:
too, as a check that it is applied as what it was written for; then it must
be NAME.

The file is checked here before anything is sent: a key it does not know, a
resource or access that does not exist, or a qualifier the resource does
not have (site on a model) is refused, with its line.`,
		Example: `  drover acl policy apply ci-vision -f ci-vision.yaml

  # From a pipeline:
  generate-policy | drover acl policy apply ci-vision -f -`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return usageErr(cmd, errors.New("missing -f FILE: the policy file (YAML), or - to read it from stdin"))
			}
			if acl.IsBuiltin(args[0]) {
				return fmt.Errorf("%q is a built-in policy: every cluster has it, and it cannot be changed; apply the file under a name of its own", args[0])
			}
			data, err := readPolicyFile(file, g.stdin)
			if err != nil {
				return err
			}
			p, err := parsePolicyFile(args[0], data)
			if err != nil {
				return withHint(fmt.Errorf("policy file %s: %w", policySource(file), err),
					"`drover acl policy apply --help` describes the file")
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.acl.ApplyPolicy(cmd.Context(), connect.NewRequest(&droverv1.ApplyACLPolicyRequest{Policy: p}))
			if err != nil {
				return err
			}
			m := resp.Msg
			return printResult(cmd, m, func(w io.Writer) {
				rules := plural(len(m.GetPolicy().GetRules()), "rule")
				if m.GetReplaced() {
					fmt.Fprintf(w, "Replaced policy %s: %s now (index %d). Tokens with it have the new rules.\n",
						args[0], rules, m.GetMeta().GetIndex())
					return
				}
				fmt.Fprintf(w, "Created policy %s with %s (index %d). Give it to a token with `drover acl token create --policy %s`.\n",
					args[0], rules, m.GetMeta().GetIndex(), args[0])
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the policy file, YAML (`FILE`; - for stdin)")
	return cmd
}

func newACLPolicyListCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List policies, the built-in ones first",
		Long: `List policies: the built-in ones first, then the others by name.

Columns:
  BUILT-IN  yes for management and read-only, which every cluster has and
            which cannot be changed
  RULES     how many rules the policy has; ` + "`drover acl policy show`" + ` prints them`,
		Example: `  drover acl policy ls
  drover acl policy ls -o json | jq -r '.policies[] | select(.builtin | not) | .name'`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			resp, err := c.acl.ListPolicies(cmd.Context(), connect.NewRequest(&droverv1.ListACLPoliciesRequest{Options: opts}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { policyTable(w, resp.Msg.GetPolicies()) })
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

func policyTable(w io.Writer, policies []*droverv1.ACLPolicy) {
	policies = slices.Clone(policies)
	builtinOrder := func(p *droverv1.ACLPolicy) int {
		if p.GetBuiltin() {
			return 0
		}
		return 1
	}
	slices.SortFunc(policies, func(a, b *droverv1.ACLPolicy) int {
		return cmp.Or(cmp.Compare(builtinOrder(a), builtinOrder(b)), strings.Compare(a.GetName(), b.GetName()))
	})
	row(w, "NAME", "BUILT-IN", "RULES", "DESCRIPTION")
	for _, p := range policies {
		builtin := "no"
		if p.GetBuiltin() {
			builtin = "yes"
		}
		row(w, p.GetName(), builtin, strconv.Itoa(len(p.GetRules())), orDash(p.GetDescription()))
	}
}

func newACLPolicyShowCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a policy and its rules",
		Long: `Show a policy: its description and its rules, in order, one a line:

  RESOURCE  what the rule is about
  ACCESS    read, write (implies read) or deny (wins over any grant)
  MATCHES   which objects: its qualifiers as the policy file writes them
            (name, prefix, site, labels), or "all"`,
		Example: `  drover acl policy show ci-vision
  drover acl policy show read-only -o json`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			resp, err := c.acl.GetPolicy(cmd.Context(), connect.NewRequest(&droverv1.GetACLPolicyRequest{Name: args[0], Options: opts}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { policyView(w, resp.Msg.GetPolicy(), g.now()) })
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

func policyView(w io.Writer, p *droverv1.ACLPolicy, now time.Time) {
	field(w, "Name", p.GetName())
	field(w, "Description", p.GetDescription())
	if p.GetBuiltin() {
		field(w, "Built-in", "yes: every cluster has it, and it cannot be changed or removed")
	} else {
		field(w, "Created", formatTimeAge(p.GetCreateTime(), now))
		field(w, "Modified", formatTimeAge(p.GetModifyTime(), now))
		field(w, "Index", fmt.Sprintf("created %d, modified %d", p.GetCreateIndex(), p.GetModifyIndex()))
	}
	if p.GetName() == acl.PolicyManagement {
		fmt.Fprintln(w, "It grants everything, including what later versions of Drover add; the rules below are what that means today.")
	}
	fmt.Fprintln(w)
	if len(p.GetRules()) == 0 {
		fmt.Fprintln(w, "No rules: the policy grants nothing.")
		return
	}
	row(w, "RESOURCE", "ACCESS", "MATCHES")
	for _, r := range p.GetRules() {
		row(w, acl.ResourceName(r.GetResource()), acl.AccessName(r.GetAccess()), ruleMatches(r))
	}
}

// ruleMatches renders a rule's qualifiers as the policy file writes them,
// or "all" for a rule without any.
func ruleMatches(r *droverv1.ACLRule) string {
	var parts []string
	for _, q := range []struct{ key, value string }{{"name", r.GetName()}, {"prefix", r.GetPrefix()}, {"site", r.GetSite()}} {
		if q.value != "" {
			parts = append(parts, q.key+" "+q.value)
		}
	}
	if len(r.GetLabels()) > 0 {
		parts = append(parts, "labels "+formatPairs(r.GetLabels(), formatString))
	}
	if len(parts) == 0 {
		return "all"
	}
	return strings.Join(parts, ", ")
}

func newACLPolicyRemoveCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"delete"},
		Short:   "Remove a policy",
		Long: `Remove the policy NAME. The built-in policies cannot be removed.

The server refuses while tokens still have the policy, and names them:
removing it would silently change what they may do. Revoke those tokens
first, after creating their replacements with other policies.`,
		Example: `  drover acl policy rm ci-vision`,
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if acl.IsBuiltin(args[0]) {
				return fmt.Errorf("%q is a built-in policy: every cluster has it, and it cannot be removed", args[0])
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.acl.DeletePolicy(cmd.Context(), connect.NewRequest(&droverv1.DeleteACLPolicyRequest{Name: args[0]}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Removed policy %s (index %d)\n", args[0], resp.Msg.GetMeta().GetIndex())
			})
		},
	}
}
