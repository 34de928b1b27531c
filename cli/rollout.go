package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newRolloutCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "rollout",
		Short: "Watch and steer rollouts: status, pause, resume, promote, rollback, history",
		Long: `Watch and steer how a deployment moves from one version to another.

Applying a deployment whose model reference resolves to a new version starts
a rollout. The leader's rollout controller moves it through a canary batch
(unless the strategy has none) and then batches of at most max_parallel
nodes, never making more than max_unavailable_per_site nodes of one site
unavailable at once. A batch is done when each of its nodes has reported its
instance HEALTHY on the new version for min_healthy_time; an instance that
fails (UNHEALTHY, CRASH_LOOP, FAILED) or a batch not done within
progress_deadline fails the rollout, and with auto_revert a rollback to the
previous version follows. Without auto_promote the rollout waits after its
canary for ` + "`drover rollout promote`" + `.

Every action is recorded in the audit log with its reason.`,
		Example: `  drover rollout status defect-detector --watch
  drover rollout pause defect-detector --reason "camera firmware update"
  drover rollout resume defect-detector
  drover rollout promote defect-detector
  drover rollout rollback defect-detector --reason "false positives at night"
  drover rollout history defect-detector`,
	},
		newRolloutStatusCommand(g),
		newRolloutActionCommand(g, "pause", "Stop a progressing rollout where it is",
			`Stop a PROGRESSING rollout: the controller starts no batch and judges none
until it is resumed. Nodes keep what they run; pausing does not roll back.`,
			func(ctx context.Context, c *clients, r *droverv1.RolloutActionRequest) (*connect.Response[droverv1.RolloutActionResponse], error) {
				return c.rollout.PauseRollout(ctx, connect.NewRequest(r))
			}, "Paused"),
		newRolloutActionCommand(g, "resume", "Go on with a paused rollout",
			`Go on with a PAUSED rollout where it stopped. An unfinished batch's clock
restarts, so the pause does not count against its progress deadline.`,
			func(ctx context.Context, c *clients, r *droverv1.RolloutActionRequest) (*connect.Response[droverv1.RolloutActionResponse], error) {
				return c.rollout.ResumeRollout(ctx, connect.NewRequest(r))
			}, "Resumed"),
		newRolloutActionCommand(g, "promote", "Let a rollout whose canary is done go on",
			`Let a rollout AWAITING_PROMOTION (its canary is done and the strategy has
no auto_promote) go on to its other batches.`,
			func(ctx context.Context, c *clients, r *droverv1.RolloutActionRequest) (*connect.Response[droverv1.RolloutActionResponse], error) {
				return c.rollout.PromoteRollout(ctx, connect.NewRequest(r))
			}, "Promoted"),
		newRolloutActionCommand(g, "rollback", "Start a rollout back to the version before the latest rollout",
			`Start a new rollout, without a canary, from the latest rollout's version
back to the version it replaced. A rollout still under way is superseded.
The deployment's first rollout has nothing to go back to: delete the
deployment to stop it.`,
			func(ctx context.Context, c *clients, r *droverv1.RolloutActionRequest) (*connect.Response[droverv1.RolloutActionResponse], error) {
				return c.rollout.RollbackRollout(ctx, connect.NewRequest(r))
			}, "Started"),
		newRolloutHistoryCommand(g),
	)
}

func newRolloutStatusCommand(g *globals) *cobra.Command {
	var q queryFlags
	var id uint64
	var watch bool
	cmd := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a deployment's rollout: state, batches and every node's report",
		Long: `Show a deployment's latest rollout (or rollout --id N): its state, the
versions it moves between, which batch it is in, and for every node of its
batches and every node assigned the deployment the version it reports, the
state of its instance and since when. "Waiting" says in the controller's
words why the rollout does not move on now.

Node reports live in the leader's memory only: with --stale a follower
answers without them.

With --watch the status is printed again whenever it changes, until the
rollout ends (SUCCEEDED, FAILED or SUPERSEDED) or you press Ctrl-C.`,
		Example: `  drover rollout status defect-detector
  drover rollout status defect-detector --watch
  drover rollout status defect-detector --id 3 -o json`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			if watch && outputFormat(cmd) == outputJSON {
				return usageErr(cmd, fmt.Errorf("--watch prints tables; drop -o json, or poll with --index"))
			}
			get := func(opts *droverv1.QueryOptions) (*droverv1.GetRolloutResponse, *droverv1.Deployment, error) {
				resp, err := c.rollout.GetRollout(cmd.Context(), connect.NewRequest(&droverv1.GetRolloutRequest{Deployment: args[0], Id: id, Query: opts}))
				if err != nil {
					return nil, nil, err
				}
				var dep *droverv1.Deployment
				if outputFormat(cmd) != outputJSON {
					// For the batch count; not worth failing the status for.
					if d, err := c.deploy.GetDeployment(cmd.Context(), connect.NewRequest(&droverv1.GetDeploymentRequest{Name: args[0]})); err == nil {
						dep = d.Msg.GetDeployment()
					}
				}
				return resp.Msg, dep, nil
			}
			resp, dep, err := get(opts)
			if err != nil {
				return err
			}
			if !watch {
				return printResult(cmd, resp, func(w io.Writer) { rolloutStatusView(w, resp, dep, g.now()) })
			}
			var last string
			for {
				var buf bytes.Buffer
				if err := printResultTo(&buf, cmd, resp, func(w io.Writer) { rolloutStatusView(w, resp, dep, g.now()) }); err != nil {
					return err
				}
				if s := buf.String(); s != last {
					if last != "" {
						fmt.Fprintln(cmd.OutOrStdout())
					}
					fmt.Fprint(cmd.OutOrStdout(), s)
					last = s
				}
				if rolloutEnded(resp.GetRollout().GetState()) {
					return nil
				}
				// Reports change without the state index moving, so a
				// blocking query is bounded to look at them now and then.
				resp, dep, err = get(&droverv1.QueryOptions{MinIndex: resp.GetMeta().GetIndex(), MaxWait: durationpb.New(watchPoll)})
				if err != nil {
					return err
				}
			}
		},
	}
	cmd.Flags().Uint64Var(&id, "id", 0, "show rollout N of the deployment instead of its latest")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "print the status again whenever it changes, until the rollout ends")
	addReadFlags(cmd, g, &q)
	return cmd
}

// watchPoll bounds each wait of rollout status --watch.
const watchPoll = 2 * time.Second

func rolloutEnded(s droverv1.RolloutState) bool {
	switch s {
	case droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, droverv1.RolloutState_ROLLOUT_STATE_FAILED,
		droverv1.RolloutState_ROLLOUT_STATE_SUPERSEDED:
		return true
	}
	return false
}

// rolloutStatusView renders a rollout; dep, when not nil, is its
// deployment, whose strategy sizes the batches still to come.
func rolloutStatusView(w io.Writer, resp *droverv1.GetRolloutResponse, dep *droverv1.Deployment, now time.Time) {
	r := resp.GetRollout()
	field(w, "Deployment", r.GetDeployment())
	field(w, "Rollout", fmt.Sprintf("#%d %s", r.GetId(), rolloutStateName(r.GetState())))
	from := "nothing"
	if r.GetFromVersion() != 0 {
		from = "version " + formatUint(r.GetFromVersion())
	}
	field(w, "Versions", fmt.Sprintf("%s → version %d", from, r.GetToVersion()))
	reason := r.GetReason()
	if r.GetRollbackOf() != 0 && !strings.Contains(reason, "rollback") {
		reason = fmt.Sprintf("rollback of rollout %d: %s", r.GetRollbackOf(), reason)
	}
	field(w, "Reason", reason)
	field(w, "Started", formatTimeAge(r.GetCreateTime(), now)+" by "+orDash(r.GetCreatedBy()))
	if r.GetEndTime() != nil {
		field(w, "Ended", formatTimeAge(r.GetEndTime(), now)+": "+r.GetEndReason())
	}
	field(w, "Progress", batchProgress(resp, dep))
	field(w, "Waiting", resp.GetWaiting())
	if len(resp.GetNodes()) == 0 {
		return
	}
	fmt.Fprintln(w)
	row(w, "NODE", "SITE", "BATCH", "VERSION", "STATE", "SINCE")
	batchOf := map[string]int{}
	for i, b := range r.GetBatches() {
		for _, id := range b.GetNodeIds() {
			batchOf[id] = i + 1
		}
	}
	for _, n := range resp.GetNodes() {
		name := n.GetNodeName()
		if name == "" {
			name = n.GetNodeId()
		}
		batch := "-"
		if b, ok := batchOf[n.GetNodeId()]; ok {
			batch = fmt.Sprint(b)
		}
		version := "-"
		if st := n.GetStatus(); st != nil {
			version = formatUint(st.GetVersion())
		}
		if a := n.GetAssignment(); a != nil && a.GetVersion() != n.GetStatus().GetVersion() {
			version += " (assigned " + formatUint(a.GetVersion()) + ")"
		}
		state := "no report"
		since := "-"
		if st := n.GetStatus(); st != nil {
			state = strings.ToLower(strings.TrimPrefix(st.GetState().String(), "INSTANCE_STATE_"))
			if st.GetReason() != "" {
				state += ": " + st.GetReason()
			}
			since = formatAge(st.GetSince(), now)
		}
		row(w, name, orDash(n.GetSite()), batch, version, state, since)
	}
}

// batchProgress says where a rollout is: "batch 3/9 (canary done)",
// "2 batches, done". The batches still to come are estimated from the
// nodes that do not run the new version yet and the strategy's
// max_parallel; nodes that join later add to them.
func batchProgress(resp *droverv1.GetRolloutResponse, dep *droverv1.Deployment) string {
	r := resp.GetRollout()
	bs := r.GetBatches()
	if rolloutEnded(r.GetState()) {
		nodes := 0
		for _, b := range bs {
			nodes += len(b.GetNodeIds())
		}
		return fmt.Sprintf("%d %s, %d %s", len(bs), pluralWord(len(bs), "batch", "batches"), nodes, pluralWord(nodes, "node", "nodes"))
	}
	inBatch := map[string]bool{}
	for _, b := range bs {
		for _, id := range b.GetNodeIds() {
			inBatch[id] = true
		}
	}
	left := 0
	for _, n := range resp.GetNodes() {
		if !inBatch[n.GetNodeId()] && n.GetAssignment().GetVersion() != r.GetToVersion() {
			left++
		}
	}
	current := len(bs)
	if current > 0 && bs[current-1].GetDoneTime() != nil {
		current++ // the next one is about to start
	}
	total := len(bs)
	if par := int(dep.GetSpec().GetStrategy().GetMaxParallel()); par > 0 {
		total += (left + par - 1) / par
	} else if left > 0 {
		total++
	}
	current = min(max(current, 1), max(total, 1))
	s := fmt.Sprintf("batch %d/%d", current, max(total, 1))
	if len(bs) > 0 {
		last := bs[len(bs)-1]
		what := "batch"
		if last.GetCanary() {
			what = "canary"
		}
		state := "in progress"
		if last.GetDoneTime() != nil {
			state = "done"
		}
		s += fmt.Sprintf(" (%s %d: %d %s, %s)", what, len(bs), len(last.GetNodeIds()), pluralWord(len(last.GetNodeIds()), "node", "nodes"), state)
	}
	return s
}

func pluralWord(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func newRolloutActionCommand(g *globals, verb, short, long string,
	call func(context.Context, *clients, *droverv1.RolloutActionRequest) (*connect.Response[droverv1.RolloutActionResponse], error), done string) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     verb + " NAME",
		Short:   short,
		Long:    long,
		Example: fmt.Sprintf("  drover rollout %s defect-detector\n  drover rollout %s defect-detector --reason \"why, for the audit log\"", verb, verb),
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := call(cmd.Context(), c, &droverv1.RolloutActionRequest{Deployment: args[0], Reason: reason})
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				r := resp.Msg.GetRollout()
				if verb == "rollback" {
					fmt.Fprintf(w, "%s rollout %d of %s: version %d → %d (%s)\n", done, r.GetId(), args[0], r.GetFromVersion(), r.GetToVersion(), r.GetReason())
				} else {
					fmt.Fprintf(w, "%s rollout %d of %s: now %s\n", done, r.GetId(), args[0], rolloutStateName(r.GetState()))
				}
				fmt.Fprintf(w, "Follow it with: drover rollout status %s --watch\n", args[0])
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded in the audit log and the rollout's history")
	return cmd
}

func newRolloutHistoryCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:   "history [NAME]",
		Short: "List a deployment's rollouts, or every deployment's",
		Long: `List rollouts, oldest first: the versions each moved between, how it
ended, who started it and why. Each deployment keeps its last 100.`,
		Example: `  drover rollout history defect-detector
  drover rollout history
  drover rollout history defect-detector -o json | jq '.rollouts[-1].state'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageErr(cmd, fmt.Errorf("unexpected argument %q: give at most one deployment", args[1]))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			resp, err := c.rollout.ListRollouts(cmd.Context(), connect.NewRequest(&droverv1.ListRolloutsRequest{Deployment: name, Query: opts}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				head := []string{"ID", "FROM", "TO", "STATE", "STARTED", "ENDED", "BY", "REASON"}
				if name == "" {
					head = append([]string{"DEPLOYMENT"}, head...)
				}
				row(w, head...)
				for _, r := range resp.Msg.GetRollouts() {
					why := r.GetReason()
					if r.GetEndReason() != "" {
						why += "; " + r.GetEndReason()
					}
					cells := []string{formatUint(r.GetId()), formatUint(r.GetFromVersion()), formatUint(r.GetToVersion()),
						rolloutStateName(r.GetState()), formatAge(r.GetCreateTime(), g.now()), formatAge(r.GetEndTime(), g.now()),
						orDash(r.GetCreatedBy()), why}
					if name == "" {
						cells = append([]string{r.GetDeployment()}, cells...)
					}
					row(w, cells...)
				}
			})
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}
