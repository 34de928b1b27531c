package cli

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newTokenCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "token",
		Short: "Manage join tokens, which let agents enroll",
		Long: `Manage join tokens.

A machine joins the fleet when its drover-agent starts with the server's
address and a join token. The token string carries the hash of the
cluster's CA certificate, so the agent can check it reached the right
cluster before it sends the token's secret; in exchange the agent gets its
own identity (a client certificate) and is a node from then on.

Tokens expire (after 1 hour unless --ttl says otherwise), can be limited to
a number of uses, and can carry labels and a site that every node enrolling
with them gets. The server keeps only a hash of the secret, so a token is
shown once, when it is created.

Revoking a token stops new enrollments with it; nodes that already enrolled
keep their identity (revoke those with ` + "`drover node revoke`" + `).`,
		Example: `  drover token create --ttl 24h --max-uses 10 --site lab-2 --label gpu=a100
  drover token ls
  drover token revoke 7f3a9c1e`,
	}, newTokenCreateCommand(g), newTokenListCommand(g), newTokenRevokeCommand(g))
}

// defaultTokenTTL is how long a join token lasts unless --ttl says
// otherwise: long enough to start a few machines by hand, short enough
// that a token pasted somewhere by mistake soon stops working.
const defaultTokenTTL = time.Hour

func newTokenCreateCommand(g *globals) *cobra.Command {
	var (
		ttl               time.Duration
		maxUses           uint32
		labels            []string
		site, description string
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a join token and print it",
		Long: `Create a join token and print the token string on standard output, alone on
one line, so a script can capture it. Details (expiry, uses) and an example
drover-agent command line go to standard error. With -o json the whole
response, token string included, is printed instead.

The token string is shown only this once: the server keeps only a hash of
its secret. Treat it like a password until it expires.

  --ttl        how long the token can be used; 0 means it never expires
               (default 1h). Go durations: 30m, 24h, 168h for a week.
  --max-uses   how many agents may enroll with it; 0 means no limit.
  --label      KEY=VALUE set on every node that enrolls with it; these win
               over labels the agent asks for. Repeatable.
  --site       site of every node that enrolls with it; without it, each
               agent names its own site.`,
		Example: `  # One machine, in the next hour:
  drover token create --max-uses 1

  # Capture it for a provisioning script:
  TOKEN=$(drover token create --ttl 24h --max-uses 50 --site edge-eu --label class=jetson)
  drover-agent --server 10.0.0.5:7400 --token "$TOKEN"

  # A token for an autoscaling group that never expires (revoke it when done):
  drover token create --ttl 0 --description "gpu-pool autoscaler" --label pool=gpu

  drover token create -o json | jq -r .tokenString`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl < 0 {
				return usageErr(cmd, fmt.Errorf("--ttl %s: must not be negative; 0 means the token never expires", ttl))
			}
			labelMap, err := parseKeyValues("label", labels)
			if err != nil {
				return usageErr(cmd, err)
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.token.CreateToken(cmd.Context(), connect.NewRequest(&droverv1.CreateTokenRequest{
				Description: description,
				Ttl:         durationpb.New(ttl), // explicit, so that 0 reaches the server as "never"
				MaxUses:     maxUses,
				Labels:      labelMap,
				Site:        site,
			}))
			if err != nil {
				return err
			}
			m := resp.Msg
			if err := printResult(cmd, m, func(w io.Writer) { fmt.Fprintln(w, m.GetTokenString()) }); err != nil {
				return err
			}
			if outputFormat(cmd) == outputTable {
				tokenCreatedNote(g.stderr, m, c.address, g.now())
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", defaultTokenTTL, "how long the token can be used; 0 means it never expires")
	cmd.Flags().Uint32Var(&maxUses, "max-uses", 0, "how many agents may enroll with it (0: no limit)")
	// StringArray, not StringSlice: a slice flag splits on commas.
	cmd.Flags().StringArrayVar(&labels, "label", nil, "label `KEY=VALUE` for every node that enrolls with it (repeatable)")
	cmd.Flags().StringVar(&site, "site", "", "site of every node that enrolls with it")
	cmd.Flags().StringVar(&description, "description", "", "what the token is for")
	return cmd
}

// tokenCreatedNote tells the person who created a token what they hold
// and how to use it. It goes to stderr, so stdout is the token alone; it
// does not repeat the secret.
func tokenCreatedNote(w io.Writer, m *droverv1.CreateTokenResponse, address string, now time.Time) {
	t := m.GetToken()
	expires := "never"
	if e := t.GetExpireTime(); e != nil {
		expires = formatTime(e) + " (" + formatUntil(e, now) + ")"
	}
	uses := "no limit"
	if n := t.GetMaxUses(); n > 0 {
		uses = "at most " + strconv.FormatUint(uint64(n), 10)
		if n == 1 {
			uses += " (one machine)"
		}
	}
	fmt.Fprintf(w, "Created join token %s (index %d). The token string is shown only this once.\n", t.GetId(), m.GetMeta().GetIndex())
	fmt.Fprintf(w, "  Expires:  %s\n", expires)
	fmt.Fprintf(w, "  Uses:     %s\n", uses)
	if s := t.GetSite(); s != "" {
		fmt.Fprintf(w, "  Site:     %s\n", s)
	}
	if len(t.GetLabels()) > 0 {
		fmt.Fprintf(w, "  Labels:   %s\n", formatPairs(t.GetLabels(), formatString))
	}
	// The agent takes HOST:PORT; the CLI's address carries a scheme.
	hostPort := strings.TrimPrefix(strings.TrimPrefix(address, "https://"), "http://")
	fmt.Fprintf(w, "Start an agent with it:\n  drover-agent --server %s --token <token>\n", hostPort)
}

func newTokenListCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List join tokens, used up and expired ones included",
		Long: `List join tokens, oldest first, including those that can no longer be used,
so you can see what enrolled your nodes. Secrets are never shown; they
cannot be: the server keeps only their hash.

Columns:
  USES     enrollments so far / the limit (∞: no limit)
  EXPIRES  how long it stays usable: "in 45m", "expired" or "never"
  STATUS   active, expired, revoked or used up; only active tokens enroll`,
		Example: `  drover token ls
  drover token ls -o json | jq -r '.tokens[] | select(.revoked | not) | .id'`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			resp, err := c.token.ListTokens(cmd.Context(), connect.NewRequest(&droverv1.ListTokensRequest{Options: opts}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { tokenTable(w, resp.Msg.GetTokens(), g.now()) })
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

func tokenTable(w io.Writer, tokens []*droverv1.JoinToken, now time.Time) {
	tokens = slices.Clone(tokens)
	slices.SortFunc(tokens, func(a, b *droverv1.JoinToken) int {
		return cmp.Or(cmp.Compare(a.GetCreateIndex(), b.GetCreateIndex()), strings.Compare(a.GetId(), b.GetId()))
	})
	row(w, "ID", "DESCRIPTION", "SITE", "LABELS", "USES", "EXPIRES", "STATUS", "CREATED")
	for _, t := range tokens {
		row(w, t.GetId(), orDash(t.GetDescription()), orDash(t.GetSite()),
			orDash(formatPairs(t.GetLabels(), formatString)), tokenUses(t), tokenExpires(t, now),
			tokenStatus(t, now), formatTime(t.GetCreateTime()))
	}
}

// tokenUses renders uses against the limit: 3/10, or 3/∞ without one.
func tokenUses(t *droverv1.JoinToken) string {
	limit := "∞"
	if n := t.GetMaxUses(); n > 0 {
		limit = strconv.FormatUint(uint64(n), 10)
	}
	return strconv.FormatUint(uint64(t.GetUses()), 10) + "/" + limit
}

func tokenExpires(t *droverv1.JoinToken, now time.Time) string {
	e := t.GetExpireTime()
	switch {
	case e == nil:
		return "never"
	case tokenExpired(t, now):
		return "expired"
	default:
		return formatUntil(e, now)
	}
}

// tokenExpired reports whether t's expiry has passed by now, as the server
// checks it: a token is usable strictly before its expire time.
func tokenExpired(t *droverv1.JoinToken, now time.Time) bool {
	e := t.GetExpireTime()
	return e != nil && !now.Before(e.AsTime())
}

// tokenStatus says whether t can enroll a node now and, if not, the first
// reason why not, in the order the server checks them.
func tokenStatus(t *droverv1.JoinToken, now time.Time) string {
	switch {
	case t.GetRevoked():
		return "revoked"
	case tokenExpired(t, now):
		return "expired"
	case t.GetMaxUses() > 0 && t.GetUses() >= t.GetMaxUses():
		return "used up"
	default:
		return "active"
	}
}

func newTokenRevokeCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token so that no agent can enroll with it",
		Long: `Revoke the join token with ID (the ID column of ` + "`drover token ls`" + `). From
then on, no agent can enroll with it. Nodes that already enrolled with it
keep their identity and keep working; to cut one off, use
` + "`drover node revoke`" + `.

Revoking is final, and revoking a revoked token changes nothing.`,
		Example: `  drover token revoke 7f3a9c1e`,
		Args:    exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.token.RevokeToken(cmd.Context(), connect.NewRequest(&droverv1.RevokeTokenRequest{Id: args[0]}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Revoked join token %s (index %d); nodes that enrolled with it are unaffected.\n",
					args[0], resp.Msg.GetMeta().GetIndex())
			})
		},
	}
}
