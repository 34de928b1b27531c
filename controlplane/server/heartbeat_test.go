package server

import (
	"testing"
	"time"
)

// The TTL grows with the fleet so the leader sees at most
// MaxHeartbeatsPerSecond heartbeats a second, never below the minimum.
func TestHeartbeatTTLScalesWithFleet(t *testing.T) {
	tr := &heartbeatTracker{minTTL: 10 * time.Second, rate: 50}
	for _, tt := range []struct {
		nodes int
		want  time.Duration
	}{
		{0, 10 * time.Second},
		{500, 10 * time.Second},
		{1000, 20 * time.Second},
		{10000, 200 * time.Second},
	} {
		if got := tr.ttlFor(tt.nodes); got != tt.want {
			t.Errorf("ttlFor(%d) = %v, want %v", tt.nodes, got, tt.want)
		}
	}
}

// A heartbeat moves the deadline by TTL plus jitter plus slack, and a
// node whose DOWN may be in flight is queued to come back READY.
func TestHeartbeatDeadline(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := &heartbeatTracker{
		now: func() time.Time { return now }, minTTL: time.Second, rate: 50,
		nodes: map[string]*hbEntry{}, up: map[string]struct{}{},
	}
	ttl := tr.heartbeat("n-a", false)
	if ttl < time.Second || ttl > time.Second+time.Second/10 {
		t.Fatalf("ttl %v, want 1s plus at most 10%%", ttl)
	}
	e := tr.nodes["n-a"]
	if want := now.Add(ttl + ttl/2); !e.deadline.Equal(want) {
		t.Fatalf("deadline %v, want %v", e.deadline, want)
	}
	if len(tr.up) != 0 {
		t.Fatal("a live node was queued to come back")
	}
	e.downSent = true
	tr.heartbeat("n-a", false)
	if _, ok := tr.up["n-a"]; !ok || e.downSent {
		t.Fatal("a node whose DOWN was proposed is not queued to come back")
	}
}

func TestNormalizeNodeName(t *testing.T) {
	for in, want := range map[string]string{
		"gpu-01":                       "gpu-01",
		"  GPU Box_01!  ":              "gpu-box_01",
		"Jetson.Orin.local":            "jetson.orin.local",
		"--édge--":                     "dge",
		"a" + string(make([]byte, 70)): "a",
	} {
		if got := normalizeNodeName(in); got != want {
			t.Errorf("normalizeNodeName(%q) = %q, want %q", in, got, want)
		}
	}
	long := normalizeNodeName("x234567890123456789012345678901234567890123456789012345678901234567890")
	if len(long) != 63 {
		t.Errorf("long name normalised to %d characters, want 63", len(long))
	}
}
