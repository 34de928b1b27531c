package cli

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/droverhq/drover/internal/atomicfile"
	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newOperatorCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "operator",
		Short: "Operate the control plane itself: raft peers, snapshots, leaving",
		Long: `Operate the control plane itself rather than what it manages.

These commands change cluster membership and replace state; most need a
management token.`,
		Example: `  drover operator raft list-peers
  drover operator snapshot save backup.snap`,
	},
		newGroup(&cobra.Command{
			Use:   "raft",
			Short: "Inspect and change the raft configuration",
			Long: `Inspect and change the raft configuration: the set of servers that vote on
every change. A cluster of N voters keeps working while a majority of them
(N/2+1) are up.`,
			Example: `  drover operator raft list-peers
  drover operator raft remove-peer server-3`,
		}, newListPeersCommand(g), newRemovePeerCommand(g)),
		newGroup(&cobra.Command{
			Use:   "snapshot",
			Short: "Save and restore the cluster's replicated state",
			Long: `Save the cluster's replicated state to a file, or replace the state with a
saved file. A snapshot holds everything in the raft log's state: models,
versions, aliases, tokens (as hashes) and the audit log. Model artifacts
are not in it; they live in the blob store.`,
			Example: `  drover operator snapshot save backup.snap
  drover operator snapshot restore backup.snap`,
		}, newSnapshotSaveCommand(g), newSnapshotRestoreCommand(g)),
		newLeaveCommand(g),
	)
}

func newListPeersCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list-peers",
		Short: "List the servers in the raft configuration",
		Long: `List the servers in the raft configuration, as the leader sees it.

SUFFRAGE is voter (counts toward quorum) or nonvoter (receives the log but
does not vote, such as a server still catching up).`,
		Example: `  drover operator raft list-peers
  drover operator raft list-peers -o json`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.cluster.ListPeers(cmd.Context(), connect.NewRequest(&droverv1.ListPeersRequest{}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				peers := slices.Clone(resp.Msg.GetPeers())
				slices.SortFunc(peers, func(a, b *droverv1.RaftPeer) int { return cmp.Compare(a.GetId(), b.GetId()) })
				row(w, "ID", "ADDRESS", "SUFFRAGE", "LEADER")
				for _, p := range peers {
					leader := ""
					if p.GetLeader() {
						leader = "*"
					}
					row(w, p.GetId(), p.GetAddress(), p.GetSuffrage(), leader)
				}
			})
		},
	}
	addReadFlags(cmd, g, nil)
	return cmd
}

func newRemovePeerCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "remove-peer NAME|ADDR",
		Short: "Remove a server from the raft configuration",
		Long: `Remove a server from the raft configuration, by its name (raft ID) or its
raft address, as list-peers shows them.

Use it for a server that is gone for good and did not leave gracefully (the
machine died). While it is still a voter it counts toward the quorum size,
so a dead voter makes the cluster less tolerant of further failures. A
server that is still running should instead leave with
` + "`drover operator leave`" + `.`,
		Example: `  drover operator raft remove-peer server-3
  drover operator raft remove-peer 10.0.0.7:7401`,
		Args: exactArgs("NAME|ADDR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.cluster.RemovePeer(cmd.Context(), connect.NewRequest(&droverv1.RemovePeerRequest{Peer: args[0]}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Removed peer %s (index %d)\n", args[0], resp.Msg.GetIndex())
			})
		},
	}
}

func newLeaveCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "leave",
		Short: "Make the server at --address leave the cluster gracefully",
		Long: `Ask the server at --address to leave the cluster gracefully and stop.

A leader first hands leadership to another server; the server is then
removed from the raft configuration, so the quorum shrinks with it and the
remaining servers stay as fault tolerant as before. Use it before taking a
server down for good. The request goes to exactly the server at --address,
so point --address at the one you want gone.`,
		Example: `  drover operator leave --address https://10.0.0.7:7400`,
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.cluster.Leave(cmd.Context(), connect.NewRequest(&droverv1.LeaveRequest{}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "The server at %s left the cluster and is stopping.\n", c.address)
			})
		},
	}
}

func newSnapshotSaveCommand(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "save FILE",
		Short: "Save a point-in-time copy of the cluster's state to FILE",
		Long: `Save a point-in-time copy of the cluster's replicated state to FILE.

The leader streams the snapshot; it is written to FILE.tmp, flushed to disk
and only then renamed to FILE, so FILE is always a complete snapshot. An
existing FILE is kept unless you pass --force.

The file holds token hashes and the audit log; keep it as private as the
servers' data directories (it is created readable by you only).`,
		Example: `  drover operator snapshot save backup-$(date +%F).snap
  drover operator snapshot save --force latest.snap`,
		Args: exactArgs("FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			if !force {
				if _, err := os.Lstat(path); err == nil {
					return withHint(fmt.Errorf("%s already exists", path), "pass --force to replace it, or choose another file")
				} else if !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("save snapshot: %w", err)
				}
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			n, err := saveSnapshot(cmd.Context(), c, path, g.progress("Saving snapshot"))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Saved snapshot to %s (%s)\n", path, units.Bytes(uint64(n)))
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "replace FILE if it exists")
	return cmd
}

// saveSnapshot streams the snapshot into path.tmp and renames it to path
// once it is complete and durable; on failure it leaves path untouched.
func saveSnapshot(ctx context.Context, c *clients, path string, prog *progress) (n int64, err error) {
	stream, err := c.cluster.SaveSnapshot(ctx, connect.NewRequest(&droverv1.SaveSnapshotRequest{}))
	if err != nil {
		return 0, err
	}
	defer stream.Close()

	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("save snapshot: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	for stream.Receive() {
		data := stream.Msg().GetData()
		if _, err := f.Write(data); err != nil {
			return n, fmt.Errorf("save snapshot: %w", err)
		}
		n += int64(len(data))
		prog.update(n)
	}
	if err := stream.Err(); err != nil {
		return n, err
	}
	if n == 0 {
		return 0, errors.New("save snapshot: the server sent an empty snapshot")
	}
	prog.done(n)
	if err := f.Sync(); err != nil {
		return n, fmt.Errorf("save snapshot: %w", err)
	}
	if err := f.Close(); err != nil {
		return n, fmt.Errorf("save snapshot: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return n, fmt.Errorf("save snapshot: %w", err)
	}
	_ = atomicfile.SyncDir(filepath.Dir(path)) // best effort: the file itself is synced
	return n, nil
}

// snapshotChunk is the size of each message of a restore stream: large
// enough to keep per-message overhead negligible, small enough to stay far
// below message size limits.
const snapshotChunk = 1 << 20

func newSnapshotRestoreCommand(g *globals) *cobra.Command {
	var yes, foreign bool
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace the cluster's state with a saved snapshot",
		Long: `Replace the whole cluster's replicated state with the snapshot in FILE.

Everything changed since the snapshot was saved is lost: models, versions,
aliases, tokens and audit events. The restore itself goes through the raft
log, so every server switches to the restored state. The server checks the
whole file first: a damaged file, or one whose contents it cannot restore,
changes nothing.

A snapshot saved from a different cluster is refused: the cluster identity is
checked inside the saved state, not only in the file's header. To take another
cluster's state on purpose (its models, nodes and ACL tokens; your current
tokens stop working), pass --force-foreign-cluster. This cluster keeps its own
identity, and the audit log records who restored what.

When stdin is a terminal it asks for confirmation; --yes skips the question
(scripts, whose stdin is not a terminal, are not asked).`,
		Example: `  drover operator snapshot restore backup.snap
  drover operator snapshot restore --yes backup.snap
  drover operator snapshot restore --force-foreign-cluster old-cluster.snap`,
		Args: exactArgs("FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			f, err := os.Open(path)
			if err != nil {
				return fmt.Errorf("restore snapshot: %w", err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return fmt.Errorf("restore snapshot: %w", err)
			}
			if st.Size() == 0 {
				return fmt.Errorf("restore snapshot: %s is empty", path)
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			if !yes && g.isTerminal(g.stdin) {
				q := fmt.Sprintf("Replace all state of the cluster at %s with %s (%s)?", c.address, path, units.Bytes(uint64(st.Size())))
				if foreign {
					q = fmt.Sprintf("Replace all state of the cluster at %s, ACL tokens included, with %s (%s), even if another cluster saved it?",
						c.address, path, units.Bytes(uint64(st.Size())))
				}
				ok, err := g.confirm(cmd.Context(), q)
				if err != nil {
					return err
				}
				if !ok {
					return errors.New("restore cancelled; the cluster is unchanged")
				}
			}
			index, err := restoreSnapshot(cmd.Context(), c, f, foreign, g.progress("Restoring snapshot"))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Restored %s; the cluster's state is now at index %d\n", path, index)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	cmd.Flags().BoolVar(&foreign, "force-foreign-cluster", false,
		"restore a snapshot saved from another cluster, replacing this cluster's tokens too (audited)")
	return cmd
}

// restoreSnapshot streams r to the server in snapshotChunk messages;
// foreign rides on the first.
func restoreSnapshot(ctx context.Context, c *clients, r io.Reader, foreign bool, prog *progress) (uint64, error) {
	// Failing half way must abort the stream, never close it: a closed
	// stream tells the server the snapshot is complete.
	ctx, abort := context.WithCancel(ctx)
	defer abort()
	stream := c.cluster.RestoreSnapshot(ctx)
	buf := make([]byte, snapshotChunk)
	var n int64
	for {
		m, rerr := io.ReadFull(r, buf)
		if m > 0 {
			// Send marshals the message before returning, so buf can be
			// reused for the next chunk.
			if err := stream.Send(&droverv1.RestoreSnapshotRequest{Data: buf[:m], ForceForeignCluster: foreign && n == 0}); err != nil {
				if errors.Is(err, io.EOF) {
					// The server ended the stream; its reason comes with
					// the response.
					_, err = stream.CloseAndReceive()
				}
				return 0, err
			}
			n += int64(m)
			prog.update(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			abort()
			return 0, fmt.Errorf("restore snapshot: %w", rerr)
		}
	}
	prog.done(n)
	resp, err := stream.CloseAndReceive()
	if err != nil {
		return 0, err
	}
	return resp.Msg.GetIndex(), nil
}

// confirm asks a yes/no question on stderr and reads the answer from stdin;
// anything but y or yes is no. Ctrl-C while it waits cancels ctx, which
// ends the wait although the read itself cannot be interrupted.
func (g *globals) confirm(ctx context.Context, question string) (bool, error) {
	fmt.Fprintf(g.stderr, "%s [y/N] ", question)
	type answer struct {
		line string
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		line, err := bufio.NewReader(g.stdin).ReadString('\n')
		ch <- answer{line, err}
	}()
	select {
	case <-ctx.Done():
		fmt.Fprintln(g.stderr)
		return false, ctx.Err()
	case a := <-ch:
		if a.err != nil && a.err != io.EOF {
			return false, fmt.Errorf("read answer: %w", a.err)
		}
		switch strings.ToLower(strings.TrimSpace(a.line)) {
		case "y", "yes":
			return true, nil
		}
		return false, nil
	}
}
