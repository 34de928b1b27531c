// Package alert delivers what a deployment's monitor policy found to the
// operator's webhook: a JSON body signed with the cluster's key, retried
// with backoff until the receiver takes it or the attempts run out.
package alert

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/droverhq/drover/artifact"
)

// SignatureHeader carries a body's signature:
// "t=UNIX,keyid=ID,ed25519=BASE64". The signature covers the context
// "drover webhook v1\n", the time, a newline and the body, so a receiver
// that checks the time also refuses a replayed call.
const SignatureHeader = "Drover-Signature"

const signingContext = "drover webhook v1\n"

// Event is an alert's body.
type Event struct {
	Time       time.Time `json:"time"`
	Deployment string    `json:"deployment"`
	Model      string    `json:"model"`
	Version    uint64    `json:"version"`
	// Cohort is the failing cohort's value ("" for the whole deployment)
	// and By how cohorts were formed ("site", "label:camera", ...).
	Cohort string `json:"cohort"`
	By     string `json:"by,omitempty"`
	// Check is "drift" or "slo"; Action what the policy asks for and
	// Outcome what the leader did ("alerted", "paused", "rolled back",
	// or why it could not).
	Check    string `json:"check"`
	Action   string `json:"action"`
	Outcome  string `json:"outcome"`
	Windows  int    `json:"windows"`
	Evidence string `json:"evidence"`
	// Server is the leader that acted.
	Server string `json:"server"`
}

// Options tune a Sender; zero values take the defaults.
type Options struct {
	// Attempts per alert (default 6: over about a minute with the
	// default backoff).
	Attempts int
	// FirstBackoff doubles after each failed attempt, up to MaxBackoff
	// (defaults 1s and 30s), each with up to 20% jitter.
	FirstBackoff, MaxBackoff time.Duration
	// Timeout bounds one attempt (default 10s).
	Timeout time.Duration
	// Queue bounds alerts waiting to be sent (default 256); past it new
	// alerts are dropped and counted: a storm of alerts must not hold the
	// leader's memory.
	Queue int
	// Client sends the calls (default: a client with Timeout).
	Client *http.Client
	Logger *slog.Logger
	// Outcome, when set, is called once per alert with whether it was
	// delivered: for metrics.
	Outcome func(delivered bool)
}

// Sender delivers alerts from one goroutine, in order. Start it, Send to
// it, and Close it; Close waits for the alert in flight, not the queue.
type Sender struct {
	key  artifact.SigningKey
	opts Options
	jobs chan job

	mu      sync.Mutex
	dropped uint64
	closed  bool

	stop context.CancelFunc
	done chan struct{}
}

type job struct {
	url string
	ev  Event
}

// NewSender returns a sender that signs with key.
func NewSender(key artifact.SigningKey, opts Options) *Sender {
	if opts.Attempts <= 0 {
		opts.Attempts = 6
	}
	if opts.FirstBackoff <= 0 {
		opts.FirstBackoff = time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Queue <= 0 {
		opts.Queue = 256
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: opts.Timeout}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Sender{key: key, opts: opts, jobs: make(chan job, opts.Queue), done: make(chan struct{})}
}

// Start runs the delivery goroutine until Close.
func (s *Sender) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	go func() {
		defer close(s.done)
		for {
			select {
			case <-ctx.Done():
				return
			case j := <-s.jobs:
				s.deliver(ctx, j)
			}
		}
	}()
}

// Close stops delivery: the attempt in flight is cancelled and queued
// alerts are dropped (a new leader raises its own).
func (s *Sender) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	if s.stop != nil {
		s.stop()
		<-s.done
	}
}

// Send queues ev for url without waiting; it reports false, and counts
// the alert as dropped, when the queue is full or the sender closed.
func (s *Sender) Send(url string, ev Event) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		select {
		case s.jobs <- job{url, ev}:
			return true
		default:
		}
	}
	s.dropped++
	return false
}

// Dropped is how many alerts were never sent because the queue was full.
func (s *Sender) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

func (s *Sender) deliver(ctx context.Context, j job) {
	body, err := json.Marshal(j.ev)
	if err != nil {
		s.opts.Logger.Error("alert not sent: encode", "err", err)
		return
	}
	backoff := s.opts.FirstBackoff
	for attempt := 1; ; attempt++ {
		err := s.post(ctx, j.url, body)
		if err == nil {
			s.report(true)
			return
		}
		var perm permanentError
		if errors.As(err, &perm) || attempt == s.opts.Attempts || ctx.Err() != nil {
			s.opts.Logger.Warn("alert not delivered", "url", j.url, "deployment", j.ev.Deployment, "attempts", attempt, "err", err)
			s.report(false)
			return
		}
		s.opts.Logger.Info("alert delivery failed; retrying", "url", j.url, "attempt", attempt, "in", backoff, "err", err)
		wait := backoff + time.Duration(rand.Int64N(int64(backoff)/5+1))
		select {
		case <-ctx.Done():
			s.report(false)
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, s.opts.MaxBackoff)
	}
}

func (s *Sender) report(delivered bool) {
	if s.opts.Outcome != nil {
		s.opts.Outcome(delivered)
	}
}

// permanentError is an answer that retrying cannot change.
type permanentError struct{ error }

func (s *Sender) post(ctx context.Context, url string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return permanentError{err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(SignatureHeader, Sign(s.key, time.Now(), body))
	resp, err := s.opts.Client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode >= 500:
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return permanentError{fmt.Errorf("webhook answered %s; retrying would not change it", resp.Status)}
}

// Sign returns the SignatureHeader value for body sent at t.
func Sign(key artifact.SigningKey, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	sig := key.SignWithContext(signingContext, append([]byte(ts+"\n"), body...))
	return fmt.Sprintf("t=%s,keyid=%s,ed25519=%s", ts, key.ID(), base64.StdEncoding.EncodeToString(sig))
}

// Verify checks a SignatureHeader value against body and the cluster's
// public key (drover cluster info lists it), refusing a signature older or
// newer than maxSkew from now: what a receiver written in Go calls.
func Verify(pub ed25519.PublicKey, header string, body []byte, now time.Time, maxSkew time.Duration) error {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "ed25519":
			sig = v
		}
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("signature header %q: no t=UNIX time", header)
	}
	if d := now.Sub(time.Unix(unix, 0)); d > maxSkew || d < -maxSkew {
		return fmt.Errorf("signature made at %s, more than %s from now: a replay or a skewed clock", time.Unix(unix, 0).UTC(), maxSkew)
	}
	raw, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("signature header: ed25519 is not base64: %w", err)
	}
	msg := append([]byte(signingContext+ts+"\n"), body...)
	if !ed25519.Verify(pub, msg, raw) {
		return errors.New("signature does not verify: the body was changed or not signed by this cluster")
	}
	return nil
}
