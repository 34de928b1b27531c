package agent

import (
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/agent/agenttest"
)

// A session sends all its heartbeats on one stream, at the TTL's pace,
// and after the stream fails it opens a new one.
func TestHeartbeatsShareOneStream(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	c.SetTTL(3 * time.Second)
	a, clk, _ := newTestAgent(t, testConfig(t, c))
	start(t, a)
	c.WaitForCalls(agenttest.Heartbeat, 1)
	for i := 2; i <= 4; i++ {
		settle(t, clk)
		if d := clk.fireNext(t); d != time.Second {
			t.Fatalf("wait before heartbeat %d: %v, want 1s", i, d)
		}
		c.WaitForCalls(agenttest.Heartbeat, i)
	}
	settle(t, clk)
	for i, hb := range c.Calls(agenttest.Heartbeat) {
		if !hb.Streamed || hb.Err != nil {
			t.Errorf("heartbeat %d: streamed %v, error %v; want an answered heartbeat on the stream", i+1, hb.Streamed, hb.Err)
		}
	}
	if n := len(c.Calls(agenttest.HeartbeatStream)); n != 1 {
		t.Fatalf("%d heartbeat streams for four heartbeats, want 1", n)
	}

	// A refused heartbeat ends the stream; once the server answers again
	// the agent's next heartbeat opens a new one.
	c.Refuse(agenttest.Heartbeat, connect.NewError(connect.CodeUnavailable, errors.New("agenttest: not now")))
	clk.fireNext(t)
	c.WaitForCalls(agenttest.Heartbeat, 5)
	settle(t, clk)
	c.Refuse(agenttest.Heartbeat, nil)
	for len(c.Calls(agenttest.HeartbeatStream)) < 2 || a.Status().State != StateReady {
		clk.fireNext(t) // the backoff, then the heartbeat
		settle(t, clk)
	}
	hb := c.Calls(agenttest.Heartbeat)
	if last := hb[len(hb)-1]; !last.Streamed || last.Err != nil {
		t.Errorf("heartbeat after the failure: streamed %v, error %v; want an answered heartbeat on a new stream", last.Streamed, last.Err)
	}
}

// A server that does not know HeartbeatStream (an older version) gets
// unary heartbeats, and the session carries on as before.
func TestHeartbeatFallsBackToUnary(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	c.SetTTL(3 * time.Second)
	c.Refuse(agenttest.HeartbeatStream, connect.NewError(connect.CodeUnimplemented, errors.New("agenttest: an older server")))
	a, clk, _ := newTestAgent(t, testConfig(t, c))
	start(t, a)
	c.WaitForCalls(agenttest.Heartbeat, 1)
	settle(t, clk)
	if d := clk.fireNext(t); d != time.Second {
		t.Fatalf("wait before the second heartbeat: %v, want 1s", d)
	}
	c.WaitForCalls(agenttest.Heartbeat, 2)
	settle(t, clk)
	for i, hb := range c.Calls(agenttest.Heartbeat) {
		if hb.Streamed || hb.Err != nil {
			t.Errorf("heartbeat %d: streamed %v, error %v; want an answered unary heartbeat", i+1, hb.Streamed, hb.Err)
		}
	}
	// Asked once: the session does not try again on every heartbeat.
	if n := len(c.Calls(agenttest.HeartbeatStream)); n != 1 {
		t.Errorf("the stream was tried %d times, want once", n)
	}
	if st := a.Status(); st.State != StateReady || st.Heartbeats != 2 || st.LastError != nil || st.Registrations != 1 {
		t.Errorf("status %s, %d heartbeats, %d registrations, last error %v: want ready after 2 heartbeats and 1 registration, no error",
			st.State, st.Heartbeats, st.Registrations, st.LastError)
	}
}
