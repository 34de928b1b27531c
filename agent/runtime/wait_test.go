package runtime

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeInstance is an Instance whose status the test sets.
type fakeInstance struct {
	mu      sync.Mutex
	status  Status
	changed chan struct{}
}

func newFakeInstance() *fakeInstance {
	return &fakeInstance{status: Status{State: StateStarting}, changed: make(chan struct{})}
}

func (f *fakeInstance) set(s Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status = s
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeInstance) ID() string         { return "fake" }
func (f *fakeInstance) Addr() string       { return "127.0.0.1:1" }
func (f *fakeInstance) Spec() InstanceSpec { return InstanceSpec{} }
func (f *fakeInstance) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}
func (f *fakeInstance) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}
func (f *fakeInstance) Stop(context.Context) error { return nil }
func (f *fakeInstance) Done() <-chan struct{}      { return nil }

func TestWaitHealthy(t *testing.T) {
	f := newFakeInstance()
	go func() {
		f.set(Status{State: StateCrashLoop, LastExit: &Exit{Code: 1, Reason: "exited"}})
		f.set(Status{State: StateStarting})
		f.set(Status{State: StateHealthy, PID: 42})
	}()
	s, err := WaitHealthy(context.Background(), f)
	if err != nil || s.PID != 42 {
		t.Fatalf("%+v, %v", s, err)
	}

	f = newFakeInstance()
	go f.set(Status{State: StateFailed, LastExit: &Exit{Code: 3, Reason: "exited"}})
	if _, err := WaitHealthy(context.Background(), f); err == nil || !strings.Contains(err.Error(), "exit code 3") {
		t.Fatalf("failed instance: %v", err)
	}
	t.Log(err)

	f = newFakeInstance()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := WaitHealthy(ctx, f); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("timeout: %v", err)
	}
}

type namedRuntime string

func (n namedRuntime) Name() string { return string(n) }
func (namedRuntime) Start(context.Context, InstanceSpec) (Instance, error) {
	return nil, nil
}

func TestSet(t *testing.T) {
	s, err := NewSet(namedRuntime("exec"), namedRuntime("onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.Get("onnx"); err != nil || r.Name() != "onnx" {
		t.Fatalf("get onnx: %v", err)
	}
	if _, err := s.Get("triton"); err == nil || !strings.Contains(err.Error(), "offers exec, onnx") {
		t.Fatalf("get triton: %v", err)
	}
	if _, err := NewSet(namedRuntime("exec"), namedRuntime("exec")); err == nil {
		t.Fatal("two runtimes with one name")
	}
}
