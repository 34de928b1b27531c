package cli

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newStatusCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show cluster health at a glance",
		Long: `Show the cluster's identity, its leader and quorum, and one row per server.

Any server answers; it asks every server it knows for its own view, so a row
with an ERROR is a server that did not answer in time.

Columns:
  HEALTH   the gossip view: alive, suspect, failed, left
  RAFT     raft state / suffrage, such as leader/voter or follower/nonvoter
  LEADER   * marks the leader
  TERM     the raft term; a rising term means repeated elections
  COMMIT   the highest log index known to be committed
  APPLIED  the highest index applied to the server's state; a server far
           behind the others is slow or catching up from a snapshot
  MISSING  chunks of versions the server lacks; a server that was down, is
           new or was rebuilt copies them from the others in the
           background, and holds a copy of every version once this is 0`,
		Example: `  drover status
  drover status --address https://10.0.0.5:7400
  drover status -o json`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.cluster.GetStatus(cmd.Context(), connect.NewRequest(&droverv1.GetStatusRequest{}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { statusTable(w, resp.Msg) })
		},
	}
	addReadFlags(cmd, g, nil)
	return cmd
}

func statusTable(w io.Writer, s *droverv1.GetStatusResponse) {
	voters := 0
	for _, srv := range s.GetServers() {
		if srv.GetSuffrage() == "voter" {
			voters++
		}
	}
	field(w, "Cluster", orDash(s.GetClusterId()))
	field(w, "Leader", cmp.Or(s.GetLeader(), "(none)"))
	field(w, "Quorum", fmt.Sprintf("%d of %d voters", s.GetQuorum(), voters))
	field(w, "Served by", s.GetServedBy())
	fmt.Fprintln(w)

	servers := slices.Clone(s.GetServers())
	slices.SortFunc(servers, func(a, b *droverv1.ServerStatus) int { return cmp.Compare(a.GetName(), b.GetName()) })
	row(w, "NAME", "ADDRESS", "HEALTH", "RAFT", "LEADER", "TERM", "COMMIT", "APPLIED", "MISSING", "ERROR")
	for _, srv := range servers {
		info := srv.GetInfo()
		state, term, commit, applied, missing := "-", "-", "-", "-", "-"
		if info != nil {
			state = orDash(info.GetRaftState())
			term = strconv.FormatUint(info.GetTerm(), 10)
			commit = strconv.FormatUint(info.GetCommitIndex(), 10)
			applied = strconv.FormatUint(info.GetAppliedIndex(), 10)
			missing = strconv.FormatUint(info.GetChunksMissing(), 10)
		}
		leader := ""
		if srv.GetLeader() {
			leader = "*"
		}
		row(w, srv.GetName(), orDash(srv.GetApiAddr()), orDash(srv.GetHealth()),
			state+"/"+cmp.Or(srv.GetSuffrage(), "none"), leader, term, commit, applied, missing, srv.GetError())
	}
}
