package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/quic-go/quic-go/http3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/agent/journal"
	"github.com/droverhq/drover/agent/reconcile"
	"github.com/droverhq/drover/agent/runtime"
	"github.com/droverhq/drover/agent/runtime/exec"
	"github.com/droverhq/drover/agent/runtime/gpu"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// serving is the node's model-serving side: the runtimes, the GPU
// allocator, the reconciler and the inference endpoint. It outlives the
// sessions with servers, so that with every server unreachable the node
// keeps serving its last good versions; a session hands it assignments
// and lends it its puller.
type serving struct {
	log *slog.Logger
	rec *reconcile.Reconciler
	// pull is the running session's puller, nil between sessions.
	pull atomic.Pointer[puller]

	runtimes []*exec.Runtime
	tel      *telemetryParts // nil: telemetry off
	journal  *journal.Journal

	// watchMu guards the assignments watch's current call: the server it
	// waits on and how to end it (see follow).
	watchMu     sync.Mutex
	watchAddr   string
	watchCancel context.CancelCauseFunc

	endpoint *http.Server // nil when --serve-addr is off
	addr     string       // where the endpoint listens
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// JournalDir is where the agent with data directory dataDir keeps its
// journal of instance transitions (agent/journal); `drover-agent journal`
// reads it.
func JournalDir(dataDir string) string { return filepath.Join(dataDir, "journal") }

// onnxBinary is the program the onnx runtime runs.
const onnxBinary = "drover-onnx"

// startServing starts the node's runtimes, reconciler and endpoint. The
// reconciler starts at once the versions it served last, from disk, so
// an agent restarted while no server answers serves again. stop undoes
// everything, stopping every instance.
func (a *Agent) startServing(store *fetch.Store, inv *droverv1.NodeInventory, nodeID string) (*serving, error) {
	dir := a.cfg.DataDir
	log := a.log.With("part", "serving")
	sv := &serving{log: log}
	ctx, cancel := context.WithCancel(context.Background())
	sv.cancel = cancel
	fail := func(err error) (*serving, error) {
		sv.stop()
		return nil, err
	}

	execCfg := exec.DefaultConfig(filepath.Join(dir, "instances", "exec"))
	execCfg.Logger = log.With("runtime", "exec")
	execRT, err := exec.New(execCfg)
	if err != nil {
		return fail(fmt.Errorf("exec runtime: %w", err))
	}
	sv.runtimes = append(sv.runtimes, execRT)
	runtimes := map[string]reconcile.Runtime{"exec": runtimeAdapter{execRT}}

	onnxCfg := exec.DefaultConfig(filepath.Join(dir, "instances", "onnx"))
	onnxCfg.Logger = log.With("runtime", "onnx")
	onnxRT, err := exec.NewONNX(a.onnxBinary(), onnxCfg)
	if err != nil {
		log.Warn("the onnx runtime is unavailable; deployments of runtime onnx fail until drover-onnx is installed next to drover-agent or named with --onnx-runtime", "err", err)
		runtimes["onnx"] = missingRuntime{fmt.Errorf("runtime onnx: %w; install drover-onnx next to drover-agent, or name it with --onnx-runtime", err)}
	} else {
		sv.runtimes = append(sv.runtimes, onnxRT)
		runtimes["onnx"] = runtimeAdapter{onnxRT}
	}
	// Instances an agent that crashed left running are ended: they hold
	// ports and GPUs the reconciler is about to hand out again.
	for _, rt := range sv.runtimes {
		if _, err := rt.KillLeftovers(ctx); err != nil {
			log.Warn("could not end every instance a previous run left", "err", err)
		}
	}
	alloc, err := gpu.Open(filepath.Join(dir, "gpus.json"), inv.GetGpus())
	if err != nil {
		return fail(withHint(err, "remove %s to start the GPU table afresh (no instance runs now)", filepath.Join(dir, "gpus.json")))
	}
	// No instance outlives the agent, so nothing holds a GPU yet.
	for holder := range alloc.Holders() {
		if err := alloc.Release(holder); err != nil {
			return fail(err)
		}
	}

	sv.journal, err = journal.Open(JournalDir(dir), journal.Options{})
	if err != nil {
		return fail(withHint(err, "check that %s is writable", JournalDir(dir)))
	}
	if !a.cfg.TelemetryOff {
		sv.tel, err = a.startTelemetry(nodeID, log.With("part", "telemetry"))
		if err != nil {
			return fail(err)
		}
		a.tel.Store(sv.tel)
	}

	reg := prometheus.NewRegistry()
	rcfg := reconcile.DefaultConfig()
	rcfg.Dir = filepath.Join(dir, "deployments")
	rcfg.Runtimes = runtimes
	rcfg.Puller = sessionPuller{sv}
	rcfg.Local = reconcile.StoreVersions{Store: store}
	rcfg.Resources = gpuResources{alloc}
	rcfg.Journal = sv.journal
	rcfg.Logger = log
	rcfg.Registerer = reg
	if sv.tel != nil {
		rcfg.Telemetry = sv.tel.collector
	}
	sv.rec, err = reconcile.New(rcfg)
	if err != nil {
		return fail(withHint(err, "remove %s to forget what the node served (it waits for a server's assignments then)", rcfg.Dir))
	}

	if a.cfg.ServeAddr != "" {
		ln, err := net.Listen("tcp", a.cfg.ServeAddr)
		if err != nil {
			return fail(withHint(fmt.Errorf("inference endpoint: %w", err),
				"choose another address with --serve-addr, or turn the endpoint off with --serve-addr off"))
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.Handle("/", sv.rec.Handler())
		sv.addr = ln.Addr().String()
		sv.endpoint = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		sv.wg.Go(func() {
			if err := sv.endpoint.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("inference endpoint stopped", "err", err)
			}
		})
		log.Info("inference endpoint listening", "addr", sv.addr)
	}
	sv.wg.Go(func() {
		if err := sv.rec.Run(ctx); err != nil {
			log.Error("reconciler stopped", "err", err)
		}
	})
	return sv, nil
}

// onnxBinary is the drover-onnx program to run: --onnx-runtime, else the
// one beside this binary, else a name for the PATH.
func (a *Agent) onnxBinary() string {
	if a.cfg.ONNXRuntime != "" {
		return a.cfg.ONNXRuntime
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), onnxBinary)
		if _, err := osexec.LookPath(p); err == nil {
			return p
		}
	}
	return onnxBinary
}

// stop ends the endpoint, the reconciler (which stops every instance)
// and the runtimes. It is safe to call on a half-started serving.
func (sv *serving) stop() {
	if sv.endpoint != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = sv.endpoint.Shutdown(ctx)
		cancel()
	}
	sv.cancel()
	sv.wg.Wait()
	if sv.journal != nil {
		if err := sv.journal.Close(); err != nil {
			sv.log.Warn("cannot close the journal", "err", err)
		}
	}
	// After the endpoint: the collector spools what it was handed.
	sv.tel.stop()
	for _, rt := range sv.runtimes {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := rt.Close(ctx); err != nil {
			sv.log.Warn("a runtime did not stop cleanly", "err", err)
		}
		cancel()
	}
}

// shipTo makes the session's server at addr the one telemetry goes to;
// nil transport stops shipping.
func (sv *serving) shipTo(tr *http3.Transport, addr string) {
	if sv.tel == nil {
		return
	}
	if tr == nil {
		sv.tel.shipper.SetSender(nil)
		return
	}
	sv.tel.shipper.SetSender(newTelemetrySender(tr, addr))
}

// watchAssignments follows the node's assignments on the servers the
// session's puller knows, handing each answer to the reconciler, until
// ctx ends. Each call blocks on the server until the assignments change
// or watchWait passes.
func (sv *serving) watchAssignments(ctx context.Context, p *puller) {
	var index uint64
	p.poll(ctx, "watch assignments", func(ctx context.Context, addr string, c droverv1connect.AgentServiceClient) error {
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		sv.watchMu.Lock()
		sv.watchAddr, sv.watchCancel = addr, cancel
		sv.watchMu.Unlock()
		defer func() {
			sv.watchMu.Lock()
			sv.watchAddr, sv.watchCancel = "", nil
			sv.watchMu.Unlock()
		}()
		resp, err := c.WatchAssignments(ctx, connect.NewRequest(&droverv1.WatchAssignmentsRequest{
			Query: &droverv1.QueryOptions{MinIndex: index, MaxWait: durationpb.New(watchWait)},
		}))
		if err != nil && errors.Is(context.Cause(ctx), errFollow) {
			// The session moved to another server: ask again at
			// once, the server that answers first.
			return nil
		}
		if err != nil {
			return err
		}
		index = resp.Msg.GetMeta().GetIndex()
		if err := sv.rec.Update(resp.Msg.GetAssignments()); err != nil {
			sv.log.Warn("some assignments cannot be carried out", "err", err)
		}
		return nil
	})
}

// errFollow ends a watch call that waits on a server the session has left.
var errFollow = errors.New("the session moved to another server")

// follow ends the watch call under way if it waits on another server than
// addr, the server the session's heartbeats reach now: a server that died
// or was cut off keeps silent, and the call would wait on it for its whole
// timeout (tens of seconds) while new assignments, a rollout's next batch
// say, wait on the server that answers. The watch asks again at once, addr
// first.
func (sv *serving) follow(addr string) {
	sv.watchMu.Lock()
	defer sv.watchMu.Unlock()
	if sv.watchCancel != nil && sv.watchAddr != addr {
		sv.log.Debug("the session moved to another server: watching assignments there", "from", sv.watchAddr, "to", addr)
		sv.watchCancel(errFollow)
		sv.watchCancel = nil
	}
}

// watchWait is how long one WatchAssignments call waits on the server for
// a change: under the puller's bound on one call.
const watchWait = 20 * time.Second

// sessionPuller pulls versions for the reconciler through the running
// session's puller.
type sessionPuller struct{ sv *serving }

func (p sessionPuller) Pull(ctx context.Context, model string, version uint64) (string, error) {
	pl := p.sv.pull.Load()
	if pl == nil {
		return "", fmt.Errorf("pull %s@%d: no server connection yet", model, version)
	}
	return pl.pullForDeployment(ctx, model, version)
}

// runtimeAdapter runs the reconciler's instances on an agent/runtime
// runtime.
type runtimeAdapter struct{ rt runtime.Runtime }

func (r runtimeAdapter) Start(ctx context.Context, spec reconcile.InstanceSpec) (reconcile.Instance, error) {
	rs, res := spec.Runtime, spec.Resources
	env := rs.GetEnv()
	if n := rs.GetMaxBatch(); n > 0 {
		// drover-onnx's batching; the name is onnxcmd.EnvMaxBatch, which
		// the agent may not import (it would link the engine).
		env = maps.Clone(env)
		if env == nil {
			env = map[string]string{}
		}
		env["DROVER_MAX_BATCH"] = strconv.FormatUint(uint64(n), 10)
	}
	inst, err := r.rt.Start(ctx, runtime.InstanceSpec{
		Deployment: spec.Deployment,
		Model:      spec.Model,
		Version:    spec.Version,
		Dir:        spec.Dir,
		Command:    rs.GetCommand(),
		Env:        env,
		Health: runtime.HealthCheck{
			Path:         rs.GetHealthPath(),
			StartTimeout: rs.GetStartTimeout().AsDuration(),
		},
		Restart:     runtime.RestartPolicy(rs.GetRestart()),
		GPUs:        spec.GPUs,
		MemoryBytes: res.GetMemoryBytes(),
		CPUs:        res.GetCpus(),
	})
	if err != nil {
		return nil, err
	}
	return instanceAdapter{inst}, nil
}

// instanceAdapter reports an agent/runtime instance in the reconciler's
// terms.
type instanceAdapter struct{ runtime.Instance }

var (
	_ reconcile.Instance = instanceAdapter{}
	_ reconcile.Notifier = instanceAdapter{}
)

var instanceStates = map[runtime.State]droverv1.InstanceState{
	runtime.StateStarting:  droverv1.InstanceState_INSTANCE_STATE_STARTING,
	runtime.StateHealthy:   droverv1.InstanceState_INSTANCE_STATE_HEALTHY,
	runtime.StateUnhealthy: droverv1.InstanceState_INSTANCE_STATE_UNHEALTHY,
	runtime.StateCrashLoop: droverv1.InstanceState_INSTANCE_STATE_CRASH_LOOP,
	runtime.StateStopped:   droverv1.InstanceState_INSTANCE_STATE_STOPPED,
	runtime.StateFailed:    droverv1.InstanceState_INSTANCE_STATE_FAILED,
}

func (i instanceAdapter) Status() reconcile.Status {
	st := i.Instance.Status()
	out := reconcile.Status{State: instanceStates[st.State], Restarts: uint32(max(st.Restarts, 0)), Since: st.StartedAt}
	switch {
	case st.State == runtime.StateHealthy:
		out.Since = st.HealthySince
	case st.LastExit != nil && st.State != runtime.StateStarting:
		out.Since = st.LastExit.At
	}
	switch {
	case st.LastProbeError != "" && st.State != runtime.StateHealthy:
		out.Reason = "health probe: " + st.LastProbeError
	case st.LastExit != nil && st.State != runtime.StateHealthy:
		out.Reason = st.LastExit.String()
		if tail := st.LastExit.StderrTail; tail != "" {
			out.Reason += ": " + lastLine(tail)
		}
	case len(st.Warnings) > 0:
		// A healthy instance whose limits the machine cannot enforce
		// says so where operators look, not only in the agent's log.
		out.Reason = strings.Join(st.Warnings, "; ")
	}
	return out
}

// lastLine is the last non-empty line of s: a crashed server's last words.
func lastLine(s string) string {
	s = strings.TrimRight(s, "\r\n")
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// missingRuntime stands for a runtime the node cannot run, so that a
// deployment of it fails with the reason rather than "unknown runtime".
type missingRuntime struct{ err error }

func (m missingRuntime) Start(context.Context, reconcile.InstanceSpec) (reconcile.Instance, error) {
	return nil, m.err
}

// gpuResources hands out GPUs from the node's allocator.
type gpuResources struct{ alloc *gpu.Allocator }

func (g gpuResources) Reserve(holder string, res *droverv1.Resources) ([]string, error) {
	if res.GetGpus() == 0 {
		return nil, nil
	}
	uuids, err := g.alloc.Allocate(holder, gpu.Request{
		Count: int(res.GetGpus()), MIGProfile: res.GetMigProfile(), MinMemoryBytes: res.GetMinGpuMemoryBytes(),
	})
	if errors.Is(err, gpu.ErrInsufficient) {
		return nil, fmt.Errorf("%w: %w", reconcile.ErrInsufficient, err)
	}
	return uuids, err
}

func (g gpuResources) Release(holder string) error { return g.alloc.Release(holder) }
