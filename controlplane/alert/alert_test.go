package alert

import (
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/artifact"
)

type receiver struct {
	mu     sync.Mutex
	status []int // answers, in order; 200 once they run out
	calls  int
	bodies [][]byte
	errs   []error
}

func (r *receiver) handler(t *testing.T, key artifact.SigningKey) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.calls++
		r.errs = append(r.errs, Verify(key.Public(), req.Header.Get(SignatureHeader), body, time.Now(), time.Minute))
		code := http.StatusOK
		if len(r.status) > 0 {
			code, r.status = r.status[0], r.status[1:]
		}
		if code == http.StatusOK {
			r.bodies = append(r.bodies, body)
		}
		w.WriteHeader(code)
	}
}

func newKey(t *testing.T) artifact.SigningKey {
	k, err := artifact.GenerateSigningKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSenderRetriesUntilTakenAndSigns(t *testing.T) {
	key := newKey(t)
	rc := &receiver{status: []int{http.StatusServiceUnavailable, http.StatusTooManyRequests}}
	srv := httptest.NewServer(rc.handler(t, key))
	defer srv.Close()
	outcomes := make(chan bool, 4)
	s := NewSender(key, Options{FirstBackoff: time.Millisecond, Outcome: func(ok bool) { outcomes <- ok }})
	s.Start()
	defer s.Close()
	ev := Event{Deployment: "det", Version: 7, Cohort: "berlin", Check: "drift", Action: "rollback", Outcome: "rolled back", Evidence: "a PSI 0.4"}
	if !s.Send(srv.URL, ev) {
		t.Fatal("Send refused with an empty queue")
	}
	if ok := <-outcomes; !ok {
		t.Fatal("not delivered after two retryable failures")
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.calls != 3 {
		t.Errorf("%d calls, want 3 (two failures, then taken)", rc.calls)
	}
	for i, err := range rc.errs {
		if err != nil {
			t.Errorf("call %d: signature: %v", i+1, err)
		}
	}
	var got Event
	if err := json.Unmarshal(rc.bodies[0], &got); err != nil || got.Deployment != "det" || got.Evidence != "a PSI 0.4" {
		t.Errorf("body %s (%v)", rc.bodies[0], err)
	}
}

func TestSenderGivesUpOnARefusal(t *testing.T) {
	key := newKey(t)
	rc := &receiver{status: []int{http.StatusBadRequest}}
	srv := httptest.NewServer(rc.handler(t, key))
	defer srv.Close()
	outcomes := make(chan bool, 1)
	s := NewSender(key, Options{FirstBackoff: time.Millisecond, Outcome: func(ok bool) { outcomes <- ok }})
	s.Start()
	defer s.Close()
	s.Send(srv.URL, Event{Deployment: "det"})
	if ok := <-outcomes; ok {
		t.Fatal("a 400 counted as delivered")
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.calls != 1 {
		t.Errorf("%d calls after a 400, want 1: retrying cannot change it", rc.calls)
	}
}

func TestVerifyRefusesTamperingAndReplays(t *testing.T) {
	key, other := newKey(t), newKey(t)
	body := []byte(`{"deployment":"det"}`)
	now := time.Now()
	h := Sign(key, now, body)
	if err := Verify(key.Public(), h, body, now, time.Minute); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		header string
		body   []byte
		now    time.Time
		want   string
	}{
		"changed body": {h, []byte(`{"deployment":"other"}`), now, "does not verify"},
		"other key":    {Sign(other, now, body), body, now, "does not verify"},
		"replayed":     {h, body, now.Add(time.Hour), "more than 1m0s from now"},
		"no time":      {"ed25519=AAAA", body, now, "no t=UNIX time"},
	} {
		if err := Verify(key.Public(), tc.header, tc.body, tc.now, time.Minute); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
	}
}

func TestSendDropsWhenFullOrClosed(t *testing.T) {
	s := NewSender(newKey(t), Options{Queue: 1})
	// Not started: nothing drains the queue.
	if !s.Send("http://127.0.0.1:1/", Event{}) || s.Send("http://127.0.0.1:1/", Event{}) {
		t.Fatal("want the first alert queued and the second dropped")
	}
	s.Close()
	if s.Send("http://127.0.0.1:1/", Event{}) || s.Dropped() != 2 {
		t.Errorf("after Close: dropped %d, want 2", s.Dropped())
	}
}
