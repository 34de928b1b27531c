package cli

import (
	"fmt"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newLogsCommand(g *globals) *cobra.Command {
	var (
		follow bool
		tail   uint32
	)
	cmd := &cobra.Command{
		Use:   "logs NODE DEPLOYMENT",
		Short: "Print a deployment's model server output on a node",
		Long: `Print what the model server of DEPLOYMENT on NODE wrote to its standard
output and standard error, from anywhere: the server you talk to asks the
node's agent, which sends the instance's captured output back through the
cluster leader. The server's stdout goes to this command's standard output
and its stderr to standard error.

The output is the serving instance's, as the agent keeps it (a few
rotated files per stream; older output is gone). --tail N starts with
about the last N lines of each stream. With -f the command keeps printing
what the server writes until you interrupt it or the instance ends;
interrupting stops the agent's reading at once.

NODE is a node id or name. The node must be up: logs stay on the machine
and only its agent can send them. A deployment that does not serve on the
node yet, or a runtime that keeps no output, is an error that says so.

Needs node:read on the node.`,
		Example: `  drover logs gpu-01 defect-detector
  drover logs gpu-01 defect-detector --tail 50
  drover logs gpu-01 defect-detector -f 2>/dev/null | grep -i error`,
		Args: exactArgs("NODE", "DEPLOYMENT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			stream, err := c.node.ReadLogs(cmd.Context(), connect.NewRequest(&droverv1.ReadLogsRequest{
				Node: args[0], Deployment: args[1], TailLines: tail, Follow: follow,
			}))
			if err != nil {
				return err
			}
			defer stream.Close()
			for stream.Receive() {
				d := stream.Msg().GetData()
				w := g.stdout
				if d.GetStream() == "stderr" {
					w = g.stderr
				}
				if _, err := w.Write(d.GetData()); err != nil {
					return fmt.Errorf("write logs: %w", err)
				}
			}
			if cmd.Context().Err() != nil {
				// Interrupted: what the user asked for.
				return nil
			}
			return stream.Err()
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing what the server writes until interrupted")
	cmd.Flags().Uint32Var(&tail, "tail", 0, "start with about the last N lines of each stream (0: all that is kept)")
	return cmd
}
