package runtime

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func validSpec() InstanceSpec {
	return InstanceSpec{Deployment: "web", Dir: "/srv/v1", Command: []string{"serve"}}
}

func TestValidate(t *testing.T) {
	if err := validSpec().WithDefaults().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		mod  func(*InstanceSpec)
		want string
	}{
		"deployment":   {func(s *InstanceSpec) { s.Deployment = "" }, "deployment is empty"},
		"dir":          {func(s *InstanceSpec) { s.Dir = "" }, "dir is empty"},
		"command":      {func(s *InstanceSpec) { s.Command = []string{""} }, "command is empty"},
		"health path":  {func(s *InstanceSpec) { s.Health.Path = "v1/health" }, `health path "v1/health"`},
		"restart":      {func(s *InstanceSpec) { s.Restart = "often" }, `restart policy "often"`},
		"reserved env": {func(s *InstanceSpec) { s.Env = map[string]string{"DROVER_PORT": "1"} }, "env sets DROVER_PORT"},
		"env name":     {func(s *InstanceSpec) { s.Env = map[string]string{"A=B": "1"} }, `env name "A=B"`},
		"cpus":         {func(s *InstanceSpec) { s.CPUs = -1 }, "cpus -1"},
		"duration":     {func(s *InstanceSpec) { s.StopTimeout = -time.Second }, "negative duration"},
		"gpu":          {func(s *InstanceSpec) { s.GPUs = []string{""} }, "GPU UUID"},
	} {
		s := validSpec()
		tc.mod(&s)
		err := s.Validate()
		if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

func TestDefaultsAndClone(t *testing.T) {
	s := validSpec()
	s.Health.Interval = time.Second
	s.Env = map[string]string{"A": "1"}
	d := s.WithDefaults()
	if d.Restart != RestartAlways || d.StopTimeout != DefaultStopTimeout || d.Health.Interval != time.Second || d.Health.FailureThreshold != 3 {
		t.Fatalf("defaults: %+v", d)
	}
	c := s.Clone()
	c.Env["A"] = "2"
	c.Command[0] = "other"
	if s.Env["A"] != "1" || s.Command[0] != "serve" {
		t.Fatal("Clone shares maps or slices")
	}
}

func TestRestartPolicy(t *testing.T) {
	for _, tc := range []struct {
		p             RestartPolicy
		failed, clean bool
	}{
		{"", true, true},
		{RestartAlways, true, true},
		{RestartOnFailure, true, false},
		{RestartNever, false, false},
	} {
		if tc.p.Restarts(true) != tc.failed || tc.p.Restarts(false) != tc.clean {
			t.Errorf("%q: restarts after failure %v, after success %v", tc.p, tc.p.Restarts(true), tc.p.Restarts(false))
		}
	}
	if !(&Exit{Signal: "killed"}).Failed() || (&Exit{}).Failed() || !(&Exit{Code: 2}).Failed() {
		t.Error("Exit.Failed")
	}
}
