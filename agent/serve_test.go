package agent

import (
	"context"
	"testing"
	"time"

	"github.com/droverhq/drover/agent/reconcile"
	"github.com/droverhq/drover/agent/runtime"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// recordingRuntime keeps the spec it was asked to start.
type recordingRuntime struct{ spec runtime.InstanceSpec }

func (r *recordingRuntime) Name() string { return "recording" }
func (r *recordingRuntime) Start(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	r.spec = spec
	return nil, nil
}

// A deployment's runtime settings reach the instance: its command, env,
// health check, restart policy, GPUs and limits, and for onnx the batch
// size drover-onnx reads from its environment.
func TestRuntimeAdapterPassesTheSpec(t *testing.T) {
	rt := &recordingRuntime{}
	_, err := runtimeAdapter{rt}.Start(context.Background(), reconcile.InstanceSpec{
		Deployment: "digits", Model: "digits", Version: 3, Dir: "/v/3",
		Runtime:   &droverv1.RuntimeSpec{Type: "onnx", Env: map[string]string{"A": "b"}, HealthPath: "/v1/health", Restart: "never", MaxBatch: 8},
		Resources: &droverv1.Resources{MemoryBytes: 1 << 30, Cpus: 1.5},
		GPUs:      []string{"GPU-1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := rt.spec
	if s.Env["A"] != "b" || s.Env["DROVER_MAX_BATCH"] != "8" || s.Health.Path != "/v1/health" || s.Restart != runtime.RestartNever ||
		len(s.GPUs) != 1 || s.MemoryBytes != 1<<30 || s.CPUs != 1.5 || s.Version != 3 || s.Dir != "/v/3" {
		t.Errorf("instance spec %+v", s)
	}
}

type fixedInstance struct {
	runtime.Instance
	st runtime.Status
}

func (f fixedInstance) Status() runtime.Status { return f.st }

// An instance's report says why it is not serving, in the server's own
// words where it has them.
func TestInstanceAdapterReports(t *testing.T) {
	at := time.Unix(100, 0)
	crashed := instanceAdapter{fixedInstance{st: runtime.Status{
		State: runtime.StateCrashLoop, Restarts: 3,
		LastExit: &runtime.Exit{At: at, Code: 1, Reason: "exited", StderrTail: "loading\nmodel.onnx: no such file\n"},
	}}}.Status()
	if crashed.State != droverv1.InstanceState_INSTANCE_STATE_CRASH_LOOP || crashed.Restarts != 3 || !crashed.Since.Equal(at) ||
		crashed.Reason != "exited (exit code 1): model.onnx: no such file" {
		t.Errorf("crash loop reported as %+v", crashed)
	}
	healthy := instanceAdapter{fixedInstance{st: runtime.Status{State: runtime.StateHealthy, HealthySince: at, LastProbeError: ""}}}.Status()
	if healthy.State != droverv1.InstanceState_INSTANCE_STATE_HEALTHY || healthy.Reason != "" || !healthy.Since.Equal(at) {
		t.Errorf("healthy reported as %+v", healthy)
	}
	const warning = "cgroup limits not applied: controller memory is not delegated to /sys/fs/cgroup/x (it has: cpu)"
	unlimited := instanceAdapter{fixedInstance{st: runtime.Status{State: runtime.StateHealthy, HealthySince: at, Warnings: []string{warning}}}}.Status()
	if unlimited.State != droverv1.InstanceState_INSTANCE_STATE_HEALTHY || unlimited.Reason != warning {
		t.Errorf("healthy without its limits reported as %+v", unlimited)
	}
}
