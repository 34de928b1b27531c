package cli

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/acl"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newACLTokenCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "token",
		Short: "Manage operator tokens: create, list, show, revoke, rotate",
		Long: `Manage operator tokens, the credentials of people and CI jobs.

A token has a name (unique among tokens, such as "alice" or "ci-vision"), an
accessor ID and a secret. Commands name a token by its name or its accessor
ID; the accessor ID also names it in the audit log. The secret is what you
put in ` + envToken + `: it is shown once, when the token is created or rotated,
and the server keeps only its hash.

A token may do what its policies grant (see ` + "`drover acl policy ls`" + `). Its
policies are fixed when it is created; a policy's rules can be changed at
any time with ` + "`drover acl policy apply`" + `, and every token with the policy
gets the new rules at once.

These are operator tokens. Join tokens, which let agents enroll, are
managed with ` + "`drover token`" + `.`,
		Example: `  drover acl token create --name alice --policy read-only
  drover acl token ls
  drover acl token self
  drover acl token rotate alice
  drover acl token revoke alice`,
	},
		newACLTokenCreateCommand(g),
		newACLTokenListCommand(g),
		newACLTokenShowCommand(g),
		newACLTokenSelfCommand(g),
		newACLTokenRevokeCommand(g),
		newACLTokenRotateCommand(g),
	)
}

func newACLTokenCreateCommand(g *globals) *cobra.Command {
	var (
		name, description string
		policies          []string
		ttl               time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create --name NAME --policy POLICY...",
		Short: "Create an operator token and print its secret, once",
		Long: `Create an operator token with the given policies and print its accessor ID
and its secret. The secret is shown only this once: the server keeps only a
hash of it. Hand it to its user the way you would a password.

  --name         unique among tokens; names the token in commands and in
                 the audit log, such as alice or ci-vision
  --policy       a policy the token gets: management, read-only or one
                 applied with ` + "`drover acl policy apply`" + `. Repeatable, or
                 comma-separated; at least one.
  --ttl          how long the token works; by default it never expires.
                 Go durations: 30m, 24h, 2160h for 90 days.
  --description  what or whom the token is for

With -o json the whole response, secret included, is printed instead.`,
		Example: `  drover acl token create --name alice --policy berlin-ops --policy read-only
  drover acl token create --name ci-vision --policy ci-vision --ttl 2160h \
    --description "GitHub Actions, vision-models repository"

  # Straight into a CI secret store, never on screen:
  drover acl token create --name ci-nlp --policy ci-nlp -o json | jq -r .secretId | gh secret set DROVER_TOKEN`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case name == "":
				return usageErr(cmd, errors.New("missing --name: every operator token has a name, such as alice or ci-vision"))
			case len(policies) == 0:
				return usageErr(cmd, errors.New("missing --policy: a token without policies may do nothing; "+
					"give management, read-only or a policy from `drover acl policy ls`"))
			case slices.Contains(policies, ""):
				return usageErr(cmd, errors.New("--policy: a policy name is empty"))
			case ttl < 0:
				return usageErr(cmd, fmt.Errorf("--ttl %s: must not be negative; leave it out for a token that never expires", ttl))
			}
			req := &droverv1.CreateACLTokenRequest{Name: name, Description: description, Policies: policies}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.acl.CreateToken(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			m := resp.Msg
			return printResult(cmd, m, func(w io.Writer) {
				fmt.Fprintf(w, "Created token %s (index %d). The secret is shown only this once; store it safely.\n",
					tokenLabel(m.GetToken()), m.GetMeta().GetIndex())
				fmt.Fprintln(w)
				field(w, "Accessor ID", m.GetToken().GetAccessorId())
				field(w, "Secret ID", m.GetSecretId())
				field(w, "Policies", strings.Join(m.GetToken().GetPolicies(), ", "))
				field(w, "Expires", aclTokenExpiry(m.GetToken(), g.now()))
				secretHint(w, m.GetSecretId())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "the token's `NAME`, unique among tokens")
	f.StringSliceVar(&policies, "policy", nil, "a `POLICY` the token gets (repeatable, or comma-separated)")
	f.DurationVar(&ttl, "ttl", 0, "how long the token works (default: it never expires)")
	f.StringVar(&description, "description", "", "what or whom the token is for")
	return cmd
}

// tokenLabel names a token in messages: by its name, or by its accessor
// ID when it has none (the bootstrap token).
func tokenLabel(t *droverv1.ACLToken) string {
	return cmp.Or(t.GetName(), t.GetAccessorId())
}

func newACLTokenListCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List operator tokens",
		Long: `List operator tokens, oldest first. Revoked tokens are gone and not listed;
secrets are never shown (the server keeps only their hash).

Columns:
  NAME        the token's name; the bootstrap token has none ("-")
  ACCESSOR    the accessor ID, as the audit log names the token
  POLICIES    what the token may do
  EXPIRES     "in 3d", "expired" or "never"; an expired token is refused
  CREATED BY  the token that created it, by name where it is listed, or
              "bootstrap" for the token ` + "`drover acl bootstrap`" + ` made`,
		Example: `  drover acl token ls
  drover acl token ls -o json | jq -r '.tokens[] | select(.policies | index("management")) | .name'`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			resp, err := c.acl.ListTokens(cmd.Context(), connect.NewRequest(&droverv1.ListACLTokensRequest{Options: opts}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { aclTokenTable(w, resp.Msg.GetTokens(), g.now()) })
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

func aclTokenTable(w io.Writer, tokens []*droverv1.ACLToken, now time.Time) {
	tokens = slices.Clone(tokens)
	slices.SortFunc(tokens, func(a, b *droverv1.ACLToken) int {
		return cmp.Or(cmp.Compare(a.GetCreateIndex(), b.GetCreateIndex()), strings.Compare(a.GetAccessorId(), b.GetAccessorId()))
	})
	names := make(map[string]string, len(tokens)) // accessor → name
	for _, t := range tokens {
		names[t.GetAccessorId()] = t.GetName()
	}
	row(w, "NAME", "ACCESSOR", "POLICIES", "EXPIRES", "CREATED", "CREATED BY")
	for _, t := range tokens {
		row(w, orDash(t.GetName()), t.GetAccessorId(), orDash(strings.Join(t.GetPolicies(), ", ")),
			expiresIn(t.GetExpireTime(), now), formatTime(t.GetCreateTime()), createdBy(t.GetCreatedBy(), names))
	}
}

// createdBy names the token that created another: by name when it is
// known and has one, else by a short accessor ID.
func createdBy(accessor string, names map[string]string) string {
	if accessor == "" {
		return "bootstrap"
	}
	if n := names[accessor]; n != "" {
		return n
	}
	return shortAccessor(accessor)
}

// shortAccessorLen is how much of an accessor ID a cell shows where the
// whole one would crowd the table out; the first group of a UUID.
const shortAccessorLen = 8

func shortAccessor(id string) string {
	if len(id) <= shortAccessorLen {
		return id
	}
	return id[:shortAccessorLen] + "…"
}

// expiresIn renders an expiry for tables: "in 3d", "expired" or "never".
// A token is usable strictly before its expire time.
func expiresIn(e *timestamppb.Timestamp, now time.Time) string {
	switch {
	case e == nil:
		return "never"
	case !now.Before(e.AsTime()):
		return "expired"
	default:
		return formatUntil(e, now)
	}
}

// aclTokenExpiry renders an expiry for detail views, with the time.
func aclTokenExpiry(t *droverv1.ACLToken, now time.Time) string {
	e := t.GetExpireTime()
	switch {
	case e == nil:
		return "never"
	case !now.Before(e.AsTime()):
		return formatTime(e) + " (expired " + roughDuration(now.Sub(e.AsTime())) + " ago; it is refused)"
	default:
		return formatTime(e) + " (" + formatUntil(e, now) + ")"
	}
}

func newACLTokenShowCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:   "show TOKEN",
		Short: "Show an operator token: its policies, expiry and history",
		Long: `Show an operator token: its name, accessor ID, policies, when it expires,
when it was created and by which token, and when its secret was last
rotated. The secret itself is never shown.

TOKEN is the token's name or its accessor ID.`,
		Example: `  drover acl token show alice
  drover acl token show 1b2c3d4e-5e1f-4c0d-9a3b-000000000001 -o json`,
		Args: exactArgs("TOKEN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			resp, err := c.acl.GetToken(cmd.Context(), connect.NewRequest(&droverv1.GetACLTokenRequest{Id: args[0], Options: opts}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { aclTokenView(w, resp.Msg.GetToken(), g.now()) })
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

func aclTokenView(w io.Writer, t *droverv1.ACLToken, now time.Time) {
	field(w, "Name", t.GetName())
	field(w, "Accessor ID", t.GetAccessorId())
	field(w, "Description", t.GetDescription())
	field(w, "Policies", orDash(strings.Join(t.GetPolicies(), ", ")))
	field(w, "Expires", aclTokenExpiry(t, now))
	created := formatTimeAge(t.GetCreateTime(), now)
	if by := t.GetCreatedBy(); by != "" {
		created += " by token " + by
	} else {
		created += " by `drover acl bootstrap`"
	}
	field(w, "Created", created)
	rotated := "never"
	if r := t.GetRotateTime(); r != nil {
		rotated = formatTimeAge(r, now)
	}
	field(w, "Secret rotated", rotated)
	field(w, "Index", fmt.Sprintf("created %d, modified %d", t.GetCreateIndex(), t.GetModifyIndex()))
}

func newACLTokenSelfCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:   "self",
		Short: "Show the token you are using and what it may do",
		Long: `Show the operator token this command line sends (from --token, ` + envToken + `
or the client config file): its name, accessor ID, policies and expiry. Any
valid token may ask this about itself, whatever its policies.

Use it to check which token a shell or a CI job is using before it changes
something, or to find the accessor ID of the token you hold.`,
		Example: `  drover acl token self
  drover acl token self -o json | jq -r .token.accessorId`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			if g.target.Token == "" {
				return withHint(errors.New("no operator token is set, so there is no token to show"),
					"set "+envToken+" or pass --token with a token's secret")
			}
			resp, err := c.acl.GetTokenSelf(cmd.Context(), connect.NewRequest(&droverv1.GetACLTokenSelfRequest{Options: opts}))
			if err != nil {
				return err
			}
			t := resp.Msg.GetToken()
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				aclTokenView(w, t, g.now())
				fmt.Fprintln(w)
				fmt.Fprintln(w, selfSummary(t))
			})
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

// selfSummary says in a sentence what a token's policies let it do, as far
// as the names of the built-in policies tell.
func selfSummary(t *droverv1.ACLToken) string {
	ps := t.GetPolicies()
	switch {
	case slices.Contains(ps, acl.PolicyManagement):
		return "It has the management policy: it may do everything."
	case len(ps) == 1 && ps[0] == acl.PolicyReadOnly:
		return "It has the read-only policy: it may read everything and change nothing."
	case len(ps) == 0:
		return "It has no policies: it may do nothing but show itself."
	}
	return "It may do what its policies grant; `drover acl policy show POLICY` prints a policy's rules, for a token that may read them."
}

func newACLTokenRevokeCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke TOKEN",
		Short: "Revoke an operator token: its secret stops working at once",
		Long: `Revoke an operator token. Every call with its secret is refused from then on,
and it disappears from ` + "`drover acl token ls`" + `; the audit log keeps its
accessor ID and name on what it did. Revoking cannot be undone: to let its
user back in, create a new token.

To replace a secret that leaked while keeping the token, its name and its
policies, use ` + "`drover acl token rotate`" + ` instead. Revoking the token you are
using locks this shell out. The last token with the management policy
cannot be revoked: a cluster without one could not be administered.

TOKEN is the token's name or its accessor ID.`,
		Example: `  drover acl token revoke ci-vision`,
		Args:    exactArgs("TOKEN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.acl.RevokeToken(cmd.Context(), connect.NewRequest(&droverv1.RevokeACLTokenRequest{Id: args[0]}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Revoked token %s (index %d); its secret no longer works.\n", args[0], resp.Msg.GetMeta().GetIndex())
			})
		},
	}
}

func newACLTokenRotateCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rotate TOKEN",
		Short: "Give an operator token a new secret; the old one stops working",
		Long: `Give an operator token a new secret and print it, once. The old secret stops
working at once, on every server: whoever still holds it is refused from
their next call. The token keeps its accessor ID, name, policies and expiry,
so the audit log follows it across rotations.

This is how you replace the secret of the management token from
` + "`drover acl bootstrap`" + ` after it leaked or was shared: rotate it by its
accessor ID (the bootstrap token has no name), store the new secret, and
hand out tokens of their own to those who used it. Rotate a CI job's token
on a schedule the same way, then update the job's secret.

Rotating the token you are using locks this shell out until you export the
new secret, as the command prints.

TOKEN is the token's name or its accessor ID.`,
		Example: `  drover acl token rotate ci-vision

  # The management token, by its accessor ID:
  drover acl token rotate 0b7e5a4c-93d1-4f2e-8c6a-2d9f1e3b7a50`,
		Args: exactArgs("TOKEN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.acl.RotateToken(cmd.Context(), connect.NewRequest(&droverv1.RotateACLTokenRequest{Id: args[0]}))
			if err != nil {
				return err
			}
			m := resp.Msg
			return printResult(cmd, m, func(w io.Writer) {
				fmt.Fprintf(w, "Rotated the secret of token %s (index %d). The old secret no longer works;\n",
					cmp.Or(tokenLabel(m.GetToken()), args[0]), m.GetMeta().GetIndex())
				fmt.Fprintln(w, "the new one is shown only this once; store it safely.")
				fmt.Fprintln(w)
				field(w, "Accessor ID", m.GetToken().GetAccessorId())
				field(w, "Secret ID", m.GetSecretId())
				secretHint(w, m.GetSecretId())
			})
		},
	}
}
