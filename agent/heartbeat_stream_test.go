package agent

import (
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/agent/agenttest"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
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

	// A stream the server ends as unavailable (its leader moved on, say)
	// is replaced at once: the heartbeat is sent again on a new stream to
	// the same server, and the session does not notice.
	c.RefuseOnce(agenttest.Heartbeat, agenttest.RefusalError(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER, "agenttest: leadership moved", ""))
	if d := clk.fireNext(t); d != time.Second {
		t.Fatalf("wait before heartbeat 5: %v, want 1s", d)
	}
	hb := c.WaitForCalls(agenttest.Heartbeat, 6)
	settle(t, clk)
	if hb[4].Err == nil || hb[5].Err != nil || !hb[5].Streamed || hb[5].Server != hb[4].Server {
		t.Errorf("heartbeats 5 and 6: errors %v and %v, the second streamed %v to %s after %s; want the refused one sent again on a stream to the same server",
			hb[4].Err, hb[5].Err, hb[5].Streamed, hb[5].Server, hb[4].Server)
	}
	if n := len(c.Calls(agenttest.HeartbeatStream)); n != 2 {
		t.Errorf("%d heartbeat streams, want 2", n)
	}
	if st := a.Status(); st.State != StateReady || st.LastError != nil || st.Heartbeats != 5 {
		t.Errorf("status %s, %d heartbeats, last error %v: want ready after 5 heartbeats, no error", st.State, st.Heartbeats, st.LastError)
	}

	// A heartbeat refused on the new stream too fails as a unary one
	// would; once the server answers again the next one opens a new
	// stream.
	c.Refuse(agenttest.Heartbeat, connect.NewError(connect.CodeUnavailable, errors.New("agenttest: not now")))
	clk.fireNext(t)
	c.WaitForCalls(agenttest.Heartbeat, 7)
	settle(t, clk)
	if st := a.Status(); st.LastError == nil {
		t.Errorf("status %s after a refused heartbeat, no error", st.State)
	}
	c.Refuse(agenttest.Heartbeat, nil)
	for a.Status().State != StateReady {
		clk.fireNext(t) // the backoff, then the heartbeat
		settle(t, clk)
	}
	hb = c.Calls(agenttest.Heartbeat)
	if last := hb[len(hb)-1]; !last.Streamed || last.Err != nil {
		t.Errorf("heartbeat after the failure: streamed %v, error %v; want an answered heartbeat on a new stream", last.Streamed, last.Err)
	}
	if n := len(c.Calls(agenttest.HeartbeatStream)); n < 3 {
		t.Errorf("%d heartbeat streams after the failure, want a new one", n)
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
