package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/agent"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// devSites are the sites dev agents are spread over, so that a newcomer
// sees a fleet with more than one site pool.
var devSites = []string{"dev-a", "dev-b"}

// devAgentReadyTimeout bounds how long `drover dev` waits for its agents
// to be ready before it reports them as still starting.
const devAgentReadyTimeout = 30 * time.Second

// devFleet is the local agents `drover dev` runs in its own process.
type devFleet struct {
	agents []*agent.Agent
	names  []string // of agents, in order: an agent that never enrolled has none in its status
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startDevAgents starts n agents that talk to the dev server at apiAddr,
// each with its identity under dir/agents. Agents enrolled by an earlier
// run come back as the same nodes; the others enroll with a join token
// made for them. Stop the fleet with stop.
// devServePort is the first dev agent's inference endpoint port unless
// --serve-port says otherwise.
const devServePort = 7950

func startDevAgents(ctx context.Context, cl *clients, apiAddr, dir string, n, servePort int, logw io.Writer, level slog.Level) (*devFleet, error) {
	f := &devFleet{}
	if n == 0 {
		return f, nil
	}
	cfgs := make([]agent.Config, n)
	var toEnroll uint32
	for i := range cfgs {
		cfg := agent.DefaultConfig()
		cfg.Name = fmt.Sprintf("dev-agent-%d", i+1)
		cfg.Servers = []string{apiAddr}
		cfg.DataDir = filepath.Join(dir, "agents", cfg.Name)
		cfg.Site = devSites[i%len(devSites)]
		cfg.Labels = map[string]string{"env": "dev"}
		// Several agents share this machine: each pool gets a port of its
		// own on loopback.
		cfg.GossipAddr = "127.0.0.1:0"
		// Inference endpoints at known ports, so that the printed curl
		// works: dev-agent-1 on 7950, dev-agent-2 on 7951, ...
		cfg.ServeAddr = "127.0.0.1:0"
		if servePort != 0 {
			cfg.ServeAddr = fmt.Sprintf("127.0.0.1:%d", servePort+i)
		}
		cfg.Logger = slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: level})).With("agent", cfg.Name)
		if _, err := os.Stat(filepath.Join(cfg.DataDir, agent.IdentityFile)); err != nil {
			toEnroll++
		}
		cfgs[i] = cfg
	}
	if toEnroll > 0 {
		res, err := cl.token.CreateToken(ctx, connect.NewRequest(&droverv1.CreateTokenRequest{
			Description: "drover dev: local agents",
			Ttl:         durationpb.New(10 * time.Minute),
			MaxUses:     toEnroll,
		}))
		if err != nil {
			return nil, fmt.Errorf("create a join token for the dev agents: %w", err)
		}
		for i := range cfgs {
			cfgs[i].Token = res.Msg.GetTokenString()
		}
	}
	for _, cfg := range cfgs {
		a, err := agent.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("dev agent %s: %w", cfg.Name, err)
		}
		f.agents = append(f.agents, a)
		f.names = append(f.names, cfg.Name)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	for _, a := range f.agents {
		f.wg.Go(func() {
			// A failed agent says why in the log and in its status;
			// the rest of the dev cluster keeps running.
			_ = a.Run(runCtx)
		})
	}
	return f, nil
}

// waitReady waits until every agent is ready or has stopped, for at most
// devAgentReadyTimeout, and returns how many are ready and the errors of
// those that stopped.
func (f *devFleet) waitReady(ctx context.Context) (ready int, err error) {
	deadline := time.Now().Add(devAgentReadyTimeout)
	for {
		ready = 0
		var errs []error
		for i, a := range f.agents {
			st := a.Status()
			switch {
			case st.State == agent.StateReady:
				ready++
			case st.State == agent.StateStopped && st.Err != nil:
				errs = append(errs, fmt.Errorf("agent %s: %w", f.names[i], st.Err))
			}
		}
		if ready+len(errs) == len(f.agents) || time.Now().After(deadline) {
			return ready, errors.Join(errs...)
		}
		select {
		case <-ctx.Done():
			return ready, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// sampleDeployment is what `drover dev` deploys: the sample model on every
// local agent, with the built-in onnx runtime.
const sampleDeployment = "hello"

// devServeTimeout bounds the wait for the local agents to serve the sample
// deployment: a pull of a small model and a drover-onnx start each.
const devServeTimeout = time.Minute

// deploySample applies the sample deployment, unless it exists (made by an
// earlier run, or changed by the operator since), and waits until the
// agents serve it. It returns how many do.
func (f *devFleet) deploySample(ctx context.Context, cl *clients) (int, error) {
	_, err := cl.deploy.GetDeployment(ctx, connect.NewRequest(&droverv1.GetDeploymentRequest{Name: sampleDeployment}))
	switch {
	case connect.CodeOf(err) == connect.CodeNotFound:
		_, err = cl.deploy.ApplyDeployment(ctx, connect.NewRequest(&droverv1.ApplyDeploymentRequest{Spec: &droverv1.DeploymentSpec{
			Name:    sampleDeployment,
			Model:   sampleModelName + "@prod",
			Runtime: &droverv1.RuntimeSpec{Type: "onnx"},
			Strategy: &droverv1.RolloutStrategy{
				Canary: 1, AutoPromote: true, AutoRevert: true, MaxParallel: 3, MaxUnavailablePerSite: 1,
				MinHealthyTime: durationpb.New(2 * time.Second),
			},
		}}))
		if err != nil {
			return 0, fmt.Errorf("deploy the sample model: %w", err)
		}
	case err != nil:
		return 0, fmt.Errorf("read the sample deployment: %w", err)
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(devServeTimeout)
	for {
		serving := 0
		for _, a := range f.agents {
			if addr := a.Status().ServeAddr; addr != "" && devServes(ctx, hc, addr) {
				serving++
			}
		}
		if serving == len(f.agents) {
			return serving, nil
		}
		if time.Now().After(deadline) {
			return serving, fmt.Errorf("%d of %d agents serve %s after %v; see `drover deploy show %s`", serving, len(f.agents), sampleDeployment, devServeTimeout, sampleDeployment)
		}
		select {
		case <-ctx.Done():
			return serving, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// devServes reports whether the agent whose endpoint is at addr serves the
// sample deployment: its instance answers its health check through the
// endpoint.
func devServes(ctx context.Context, hc *http.Client, addr string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/deployments/"+sampleDeployment+"/health", nil)
	if err != nil {
		return false
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// stop stops every agent and waits for them.
func (f *devFleet) stop() {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
}
