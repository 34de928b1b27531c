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
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newNodeCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "node",
		Short: "Inspect and manage the machines in the fleet",
		Long: `Inspect and manage nodes: the machines running drover-agent.

A machine becomes a node when its agent enrolls with a join token (see
` + "`drover token create`" + `). The agent then registers the hardware it found (CPU,
memory, disks, GPUs, board) and heartbeats; the leader marks a node down
when its heartbeats stop.

A node is named by its name or its full ID. Names are unique among nodes
that have not left; -o json shows full IDs.

  drain / undrain   stop or resume giving a node new work; what it runs keeps
                    running
  uncordon          let a node that cordoned itself for a condition (a GPU
                    Xid, uncorrectable ECC errors, thermal throttling, disk
                    pressure) get work again
  label             set or remove labels, which deployments select nodes by
  pull              have a node download a model version
  revoke            cut a node off for good: its identity is refused`,
		Example: `  drover node ls --status ready --gpu-model h100
  drover node show gpu-01
  drover node drain gpu-01
  drover node label gpu-01 zone=b pool=training --remove spare
  drover node pull gpu-01 llama@prod --wait`,
	},
		newNodeListCommand(g),
		newNodeShowCommand(g),
		newNodeDrainCommand(g, true),
		newNodeDrainCommand(g, false),
		newNodeUncordonCommand(g),
		newNodeLabelCommand(g),
		newNodePullCommand(g),
		newNodeRevokeCommand(g),
	)
}

// nodeStatuses are the values of --status, as the tables print them.
var nodeStatuses = []struct {
	name   string
	status droverv1.NodeStatus
}{
	{"ready", droverv1.NodeStatus_NODE_STATUS_READY},
	{"down", droverv1.NodeStatus_NODE_STATUS_DOWN},
	{"initializing", droverv1.NodeStatus_NODE_STATUS_INITIALIZING},
	{"left", droverv1.NodeStatus_NODE_STATUS_LEFT},
}

func parseNodeStatus(s string) (droverv1.NodeStatus, error) {
	for _, st := range nodeStatuses {
		if strings.EqualFold(s, st.name) {
			return st.status, nil
		}
	}
	return 0, fmt.Errorf("--status %s: want ready, down, initializing or left", s)
}

// statusName renders a node status as --status spells it; a status this
// build does not know shows as its number.
func statusName(st droverv1.NodeStatus) string {
	for _, s := range nodeStatuses {
		if s.status == st {
			return s.name
		}
	}
	if st == droverv1.NodeStatus_NODE_STATUS_UNSPECIFIED {
		return "unknown"
	}
	return "status " + strconv.Itoa(int(st))
}

// nodeState is a node's status with what else limits it: "ready, draining".
func nodeState(n *droverv1.Node) string {
	s := statusName(n.GetStatus())
	if n.GetDraining() {
		s += ", draining"
	}
	if n.GetCordoned() {
		s += ", cordoned"
	}
	if n.GetRevoked() {
		s += ", revoked"
	}
	return s
}

func newNodeListCommand(g *globals) *cobra.Command {
	var (
		q                                    queryFlags
		labels                               []string
		site, status, gpuModel, minGPUMemory string
	)
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List nodes, optionally only those that match filters",
		Long: `List nodes by name, nodes that left included. Filters are applied by the
server, and a node is listed only when it matches all of them:

  --label KEY=VALUE      has the label with exactly that value (repeatable)
  --site SITE            is in the site
  --status STATUS        ready, down, initializing (enrolled, hardware not
                         yet registered) or left
  --gpu-model SUBSTR     has a GPU whose name contains SUBSTR, ignoring case
                         ("a100" matches "NVIDIA A100-SXM4-80GB")
  --min-gpu-memory SIZE  has a GPU with at least SIZE of memory; with
                         --gpu-model, the same GPU must match both

SIZE is a number of bytes or a number with a unit: G and GB are 10⁹ bytes,
Gi and GiB are 2³⁰. Cards sold as "80GB" report a little less than 80 GiB,
so --min-gpu-memory 80G finds them where 80GiB may not.

Columns:
  ID      the first characters of the node's ID; -o json has the whole ID
  STATUS  ready, down, initializing or left, then ", draining", ", cordoned" or
          ", revoked" when so
  GPUS    GPUs by model; MIG instances are not counted separately
  SINCE   how long the node has been in its current status
  CPU     hardware threads
  AGE     time since the node enrolled, as AGE means in every table`,
		Example: `  drover node ls
  drover node ls --status down
  drover node ls --gpu-model h100 --min-gpu-memory 80G --label pool=training
  drover node ls --site edge-eu -o json | jq -r '.nodes[].name'

  # Wait up to 5 minutes for any change after index 120:
  drover node ls --index 120 --wait 5m`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &droverv1.ListNodesRequest{Site: site, GpuModel: gpuModel}
			var err error
			if req.Labels, err = parseKeyValues("label", labels); err != nil {
				return usageErr(cmd, err)
			}
			if status != "" {
				if req.Status, err = parseNodeStatus(status); err != nil {
					return usageErr(cmd, err)
				}
			}
			if minGPUMemory != "" {
				if req.MinGpuMemoryBytes, err = parseByteSize(minGPUMemory); err != nil {
					return usageErr(cmd, fmt.Errorf("--min-gpu-memory %s: %w", minGPUMemory, err))
				}
			}
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			req.Options = opts
			resp, err := c.node.ListNodes(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { nodeTable(w, resp.Msg.GetNodes(), g.now()) })
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&labels, "label", nil, "only nodes with label `KEY=VALUE` (repeatable; all must match)")
	f.StringVar(&site, "site", "", "only nodes in `SITE`")
	f.StringVar(&status, "status", "", "only nodes with `STATUS`: ready, down, initializing or left")
	f.StringVar(&gpuModel, "gpu-model", "", "only nodes with a GPU whose name contains `SUBSTR` (any case)")
	f.StringVar(&minGPUMemory, "min-gpu-memory", "", "only nodes with a GPU of at least `SIZE` memory, such as 40GiB or 80G")
	addReadFlags(cmd, g, &q)
	return cmd
}

func nodeTable(w io.Writer, nodes []*droverv1.Node, now time.Time) {
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b *droverv1.Node) int {
		return cmp.Or(strings.Compare(a.GetName(), b.GetName()), strings.Compare(a.GetId(), b.GetId()))
	})
	row(w, "NAME", "ID", "STATUS", "SINCE", "SITE", "GPUS", "CPU", "MEMORY", "AGE", "LABELS")
	for _, n := range nodes {
		inv := n.GetInventory()
		cpu, mem := "-", "-"
		if t := inv.GetCpu().GetThreads(); t > 0 {
			cpu = strconv.FormatUint(uint64(t), 10)
		}
		if b := inv.GetMemory().GetTotalBytes(); b > 0 {
			mem = units.Bytes(b)
		}
		row(w, orDash(n.GetName()), shortID(n.GetId()), nodeState(n), formatAge(lastStatusChange(n), now),
			orDash(n.GetSite()), gpuSummary(inv.GetGpus()), cpu, mem, formatAge(n.GetEnrollTime(), now),
			orDash(formatPairs(n.GetLabels(), formatString)))
	}
}

// shortIDLen is how much of a node ID tables show.
const shortIDLen = 8

func shortID(id string) string {
	if len(id) <= shortIDLen {
		return orDash(id)
	}
	return id[:shortIDLen]
}

// lastStatusChange is when n's status last changed, or when it enrolled if
// its history is empty.
func lastStatusChange(n *droverv1.Node) *timestamppb.Timestamp {
	h := n.GetHistory()
	if len(h) > 0 && h[len(h)-1].GetTime() != nil {
		return h[len(h)-1].GetTime()
	}
	return n.GetEnrollTime()
}

// gpuSummary counts a node's physical GPUs by model, in the order the
// probe found them: "8× H100 80GB HBM3", "2× A100-SXM4-40GB, 1× T4".
// MIG instances belong to a physical GPU and are not counted again.
func gpuSummary(gpus []*droverv1.GPUInfo) string {
	var (
		names  []string
		counts = map[string]int{}
	)
	for _, gpu := range gpus {
		if gpu.GetParentUuid() != "" {
			continue
		}
		name := cmp.Or(strings.TrimPrefix(gpu.GetName(), "NVIDIA "), "GPU")
		if counts[name] == 0 {
			names = append(names, name)
		}
		counts[name]++
	}
	if len(names) == 0 {
		return "-"
	}
	parts := make([]string, len(names))
	for i, name := range names {
		parts[i] = fmt.Sprintf("%d× %s", counts[name], name)
	}
	return strings.Join(parts, ", ")
}

func newNodeShowCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:   "show NODE",
		Short: "Show a node: identity, status, hardware and status history",
		Long: `Show everything known about a node: its identity and labels, its status and
whether it is draining or revoked, how it enrolled, the hardware inventory
its agent registered (host, CPU, memory, disks, container limits, board,
GPUs), the model version it was asked to pull with how far its agent got
(` + "`drover node pull`" + `), and its recent status changes, oldest first.

NODE is the node's name or its full ID.`,
		Example: `  drover node show gpu-01
  drover node show gpu-01 -o json | jq '.node.inventory.gpus'`,
		Args: exactArgs("NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			resp, err := c.node.GetNode(cmd.Context(), connect.NewRequest(&droverv1.GetNodeRequest{Node: args[0], Options: opts}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { nodeView(w, resp.Msg.GetNode(), g.now()) })
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

func nodeView(w io.Writer, n *droverv1.Node, now time.Time) {
	field(w, "Name", n.GetName())
	field(w, "ID", n.GetId())
	status := nodeState(n)
	if t := lastStatusChange(n); t != nil {
		status += " since " + formatTimeAge(t, now)
	}
	field(w, "Status", status)
	field(w, "Site", n.GetSite())
	field(w, "Site pool", n.GetGossipAddr())
	field(w, "Labels", formatPairs(n.GetLabels(), formatString))
	field(w, "Agent version", n.GetAgentVersion())
	enrolled := formatTimeAge(n.GetEnrollTime(), now)
	if id := n.GetTokenId(); id != "" {
		enrolled += " with join token " + id
	}
	field(w, "Enrolled", enrolled)
	field(w, "Index", fmt.Sprintf("created %d, modified %d", n.GetCreateIndex(), n.GetModifyIndex()))
	if n.GetRevoked() {
		fmt.Fprintln(w, "Revoked: the node's identity is refused; it comes back only by enrolling again with a new join token.")
	} else if n.GetDraining() {
		fmt.Fprintf(w, "Draining: it keeps what it runs but gets nothing new; resume with `drover node undrain %s`.\n", cmp.Or(n.GetName(), n.GetId()))
	}
	if n.GetCordoned() {
		fmt.Fprintf(w, "Cordoned: %s.\nIt gets nothing new and its instances are stopped within each deployment's per-site budget; once the machine is fixed, `drover node uncordon %s`.\n",
			n.GetCordonReason(), cmp.Or(n.GetName(), n.GetId()))
	}
	conditionsView(w, n.GetConditions(), now)
	pullView(w, n, now)

	fmt.Fprintln(w)
	if inv := n.GetInventory(); inv == nil {
		fmt.Fprintln(w, "No hardware inventory yet: the agent has not registered.")
	} else {
		inventoryView(w, inv)
	}

	fmt.Fprintln(w)
	if len(n.GetHistory()) == 0 {
		fmt.Fprintln(w, "No status changes recorded.")
		return
	}
	row(w, "TIME", "STATUS", "REASON")
	for _, c := range n.GetHistory() {
		row(w, formatTime(c.GetTime()), statusName(c.GetStatus()), orDash(c.GetReason()))
	}
}

func inventoryView(w io.Writer, inv *droverv1.NodeInventory) {
	host := inv.GetHost()
	field(w, "Hostname", host.GetHostname())
	field(w, "OS", cmp.Or(host.GetOs(), strings.TrimSpace(host.GetOsId()+" "+host.GetOsVersion())))
	field(w, "Kernel", host.GetKernel())
	field(w, "Arch", host.GetArch())
	field(w, "Boot ID", host.GetBootId())

	if cpu := inv.GetCpu(); cpu != nil {
		var parts []string
		if m := cmp.Or(cpu.GetModel(), cpu.GetVendor()); m != "" {
			parts = append(parts, m)
		}
		counts := []string{}
		for _, c := range []struct {
			n    uint32
			unit string
		}{{cpu.GetSockets(), "socket"}, {cpu.GetCores(), "core"}, {cpu.GetThreads(), "thread"}} {
			if c.n > 0 {
				counts = append(counts, plural(int(c.n), c.unit))
			}
		}
		if len(counts) > 0 {
			parts = append(parts, strings.Join(counts, ", "))
		}
		if mhz := cpu.GetMhz(); mhz > 0 {
			parts = append(parts, strconv.FormatFloat(mhz, 'f', 0, 64)+" MHz")
		}
		field(w, "CPU", strings.Join(parts, "; "))
		field(w, "CPU flags", strings.Join(cpu.GetFlags(), " "))
	}

	if mem := inv.GetMemory(); mem.GetTotalBytes() > 0 {
		s := units.Bytes(mem.GetTotalBytes())
		if a := mem.GetAvailableBytes(); a > 0 {
			s += " (" + units.Bytes(a) + " available at registration)"
		}
		field(w, "Memory", s)
	}
	if c := inv.GetContainer(); c.GetCgroupVersion() > 0 {
		field(w, "Container", containerLimits(c))
	}
	if b := inv.GetBoard(); b != nil {
		var extra []string
		if f := b.GetFamily(); f != "" {
			extra = append(extra, f)
		}
		if r := b.GetL4TRelease(); r != "" {
			extra = append(extra, "L4T "+r)
		}
		s := b.GetModel()
		if len(extra) > 0 {
			s = strings.TrimSpace(s + " (" + strings.Join(extra, ", ") + ")")
		}
		field(w, "Board", s)
	}
	if p := inv.GetGpuProbe(); p != nil {
		field(w, "GPU probe", gpuProbe(p))
	}
	for _, warning := range inv.GetWarnings() {
		field(w, "Warning", warning)
	}

	if disks := inv.GetDisks(); len(disks) > 0 {
		fmt.Fprintln(w)
		row(w, "DISK", "MOUNT", "FS", "SIZE", "FREE")
		for _, d := range disks {
			row(w, orDash(d.GetPath()), orDash(d.GetMountPoint()), orDash(d.GetFsType()),
				units.Bytes(d.GetTotalBytes()), units.Bytes(d.GetFreeBytes()))
		}
	}
	if gpus := inv.GetGpus(); len(gpus) > 0 {
		fmt.Fprintln(w)
		row(w, "GPU", "NAME", "MEMORY", "COMPUTE", "MIG", "UUID")
		for _, gpu := range gpus {
			row(w, strconv.FormatUint(uint64(gpu.GetIndex()), 10), orDash(gpu.GetName()),
				units.Bytes(gpu.GetMemoryTotalBytes()), orDash(gpu.GetComputeCapability()),
				migMode(gpu), orDash(gpu.GetUuid()))
		}
	}
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return strconv.Itoa(n) + " " + unit + "s"
}

func containerLimits(c *droverv1.ContainerLimits) string {
	s := fmt.Sprintf("cgroup v%d", c.GetCgroupVersion())
	if p := c.GetCgroupPath(); p != "" {
		s += " " + p
	}
	cpu := "no CPU quota"
	if q := c.GetCpuQuota(); q > 0 {
		cpu = "CPU quota " + formatFloat(q)
	}
	limits := []string{cpu}
	if n := c.GetCpusetCpus(); n > 0 {
		limits = append(limits, "cpuset of "+plural(int(n), "CPU"))
	}
	mem := "no memory limit"
	if m := c.GetMemoryMaxBytes(); m > 0 {
		mem = "memory limit " + units.Bytes(m)
	}
	limits = append(limits, mem)
	return s + "; " + strings.Join(limits, ", ")
}

func gpuProbe(p *droverv1.GPUProbe) string {
	var parts []string
	if p.GetAvailable() {
		parts = append(parts, "NVML available")
	} else {
		parts = append(parts, "no GPUs")
	}
	if v := p.GetDriverVersion(); v != "" {
		parts = append(parts, "driver "+v)
	}
	if v := p.GetCudaDriverVersion(); v != "" {
		parts = append(parts, "CUDA "+v)
	}
	s := strings.Join(parts, ", ")
	if r := p.GetReason(); r != "" {
		s += ": " + r
	}
	return s
}

// migMode renders a GPU's MIG state: "on", "off", "off, change pending"
// for a physical GPU, "instance of GPU-…" for a MIG instance.
func migMode(gpu *droverv1.GPUInfo) string {
	if p := gpu.GetParentUuid(); p != "" {
		return "instance of " + p
	}
	s := "off"
	if gpu.GetMigEnabled() {
		s = "on"
	}
	if gpu.GetMigPending() {
		s += ", change pending"
	}
	return s
}

func newNodeDrainCommand(g *globals, drain bool) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "drain NODE",
		Short: "Stop giving a node new work",
		Long: `Drain a node: it keeps running what it runs, but rollouts place nothing new
on it. Use it before maintenance, then move or stop its work, and
` + "`drover node undrain`" + ` when the machine is back.

NODE is the node's name or its full ID. Draining a draining node changes
nothing.`,
		Example: `  drover node drain gpu-01`,
	}
	if !drain {
		cmd.Use = "undrain NODE"
		cmd.Short = "Let a drained node get new work again"
		cmd.Long = `Undrain a node: rollouts may place work on it again.

NODE is the node's name or its full ID. Undraining a node that is not
draining changes nothing.`
		cmd.Example = `  drover node undrain gpu-01`
	}
	cmd.Args = exactArgs("NODE")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := g.clients()
		if err != nil {
			return err
		}
		resp, err := c.node.DrainNode(cmd.Context(), connect.NewRequest(&droverv1.DrainNodeRequest{Node: args[0], Drain: drain}))
		if err != nil {
			return err
		}
		return printResult(cmd, resp.Msg, func(w io.Writer) {
			name := cmp.Or(resp.Msg.GetNode().GetName(), args[0])
			index := resp.Msg.GetMeta().GetIndex()
			if drain {
				fmt.Fprintf(w, "Node %s is draining: it keeps what it runs and gets nothing new (index %d)\n", name, index)
			} else {
				fmt.Fprintf(w, "Node %s is no longer draining: it may get new work (index %d)\n", name, index)
			}
		})
	}
	return cmd
}

// conditionsView lists the conditions the node's agent reports.
func conditionsView(w io.Writer, cs []*droverv1.NodeCondition, now time.Time) {
	if len(cs) == 0 {
		return
	}
	fmt.Fprintln(w)
	row(w, "CONDITION", "GPU", "SINCE", "DETAIL")
	for _, c := range cs {
		row(w, c.GetKind(), orDash(c.GetGpuUuid()), formatTimeAge(c.GetSince(), now), orDash(c.GetDetail()))
	}
}

func newNodeUncordonCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "uncordon NODE",
		Short: "Let a node that cordoned itself get work again",
		Long: `Uncordon a node: rollouts may place work on it again, and the deployments it
matches assign it their version within their budgets.

A node is cordoned when its agent reports a new occurrence of a condition:
a GPU Xid that needs a reset, uncorrectable ECC errors, sustained thermal
throttling, or disk pressure (` + "`drover node show`" + ` says which and since when).
Uncordon once the machine is fixed. A condition that is still reported with
the same start does not cordon the node again; a new occurrence does.

NODE is the node's name or its full ID. Uncordoning a node that is not
cordoned changes nothing.`,
		Example: `  drover node show gpu-01
  drover node uncordon gpu-01`,
		Args: exactArgs("NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.node.UncordonNode(cmd.Context(), connect.NewRequest(&droverv1.UncordonNodeRequest{Node: args[0]}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Node %s is no longer cordoned: it may get new work (index %d)\n",
					cmp.Or(resp.Msg.GetNode().GetName(), args[0]), resp.Msg.GetMeta().GetIndex())
			})
		},
	}
}

func newNodeLabelCommand(g *globals) *cobra.Command {
	var remove []string
	cmd := &cobra.Command{
		Use:   "label NODE [KEY=VALUE]... [--remove KEY]...",
		Short: "Set or remove a node's labels",
		Long: `Set and remove labels of a node in one change, and print its labels after it.

Each KEY=VALUE argument sets a label, replacing its value if the key is
there; each --remove KEY removes one (a key that is not there is fine).
Give at least one of either. Deployments select nodes by labels, so a
change may move work on or off the node.

Labels from the node's join token are ordinary labels once set: they can be
changed here like any other.`,
		Example: `  drover node label gpu-01 pool=training zone=b
  drover node label gpu-01 --remove spare
  drover node label gpu-01 pool=inference --remove zone`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErr(cmd, errors.New("missing NODE"))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			set, rm, err := parseLabelChanges(args[1:], remove)
			if err != nil {
				return usageErr(cmd, err)
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.node.LabelNode(cmd.Context(), connect.NewRequest(&droverv1.LabelNodeRequest{
				Node: args[0], Set: set, Remove: rm,
			}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				n := resp.Msg.GetNode()
				name := cmp.Or(n.GetName(), args[0])
				if len(n.GetLabels()) == 0 {
					fmt.Fprintf(w, "Node %s has no labels now (index %d)\n", name, resp.Msg.GetMeta().GetIndex())
					return
				}
				fmt.Fprintf(w, "Labels of node %s (index %d): %s\n", name, resp.Msg.GetMeta().GetIndex(),
					formatPairs(n.GetLabels(), formatString))
			})
		},
	}
	cmd.Flags().StringArrayVar(&remove, "remove", nil, "remove the label `KEY` (repeatable)")
	return cmd
}

func newNodeRevokeCommand(g *globals) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "revoke NODE",
		Short: "Cut a node off: refuse its identity from now on",
		Long: `Revoke a node's identity. The agent's next call to the control plane fails
(its certificate is refused), and it will not enroll again by itself: the
machine comes back only when its agent is enrolled again with a new join
token, as a new node. Use it for a machine that was lost, stolen, or
retired without leaving the fleet. With its heartbeats refused, the node is
marked down once its heartbeat deadline passes, and stays down and revoked.

Revoking does not stop what the machine already runs: an agent that cannot
reach the control plane keeps serving its last good state. Stop the agent on
the machine for that. Revoking cannot be undone.

When stdin is a terminal it asks for confirmation; --yes skips the question
(scripts, whose stdin is not a terminal, are not asked). NODE is the node's
name or its full ID.`,
		Example: `  drover node revoke gpu-17
  drover node revoke --yes 3f9a2c7e41d04b8e`,
		Args: exactArgs("NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if !yes && g.isTerminal(g.stdin) {
				// Read the node first, so the question names the machine
				// and an unknown node fails before anyone is asked.
				nr, err := c.node.GetNode(ctx, connect.NewRequest(&droverv1.GetNodeRequest{Node: args[0]}))
				if err != nil {
					return err
				}
				n := nr.Msg.GetNode()
				ok, err := g.confirm(ctx, fmt.Sprintf(
					"Revoke node %s (ID %s, %s)? Its agent's next call will fail and it will not enroll again by itself.",
					n.GetName(), n.GetId(), nodeState(n)))
				if err != nil {
					return err
				}
				if !ok {
					return errors.New("revoke cancelled; the node is unchanged")
				}
			}
			resp, err := c.node.RevokeNode(ctx, connect.NewRequest(&droverv1.RevokeNodeRequest{Node: args[0]}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Revoked node %s (index %d). Its agent's next call will fail; to bring the machine back, enroll its agent again with a new join token.\n",
					args[0], resp.Msg.GetMeta().GetIndex())
			})
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}
