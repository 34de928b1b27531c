package raftstore

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The crash test runs a writer in a child process (this test binary again,
// running only TestCrashHelper) and kills it with SIGKILL at a random moment.
// The child reports on stdout what it has been told is durable; the parent
// then checks that all of it survived.
const (
	crashDirEnv  = "RAFTSTORE_CRASH_DIR"
	crashSeedEnv = "RAFTSTORE_CRASH_SEED"
	crashPrefix  = "raftstore-crash "

	crashTermKey = "CurrentTerm"
	// crashKeep is how many entries the child keeps when it truncates the
	// head of the log, as Raft does after a snapshot.
	crashKeep = 300
)

// TestCrashHelper is the child process of TestCrash; run alone it skips.
// Lines it prints, each only after the write it names has returned:
//
//	ready FIRST LAST   the store opened with these bounds
//	ack HI             StoreLogs of entries up to HI returned
//	term T             SetUint64(CurrentTerm, T) returned
//	del X              about to DeleteRange(first, X)
//	deleted X          DeleteRange(first, X) returned
func TestCrashHelper(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("child process of TestCrash")
	}
	seed, _ := strconv.ParseUint(os.Getenv(crashSeedEnv), 10, 64)
	rng := rand.New(rand.NewPCG(seed, 1))
	say := func(format string, args ...any) {
		// os.Stdout is unbuffered: the line is in the pipe before the next
		// write starts.
		fmt.Fprintf(os.Stdout, crashPrefix+format+"\n", args...)
	}

	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	say("ready %d %d", first, last)

	// The parent kills the child long before this; the deadline only stops
	// an orphan.
	deadline := time.Now().Add(30 * time.Second)
	next := last + 1
	for batch := 0; time.Now().Before(deadline); batch++ {
		n := 1 + rng.Uint64N(16)
		if err := s.StoreLogs(entriesFor(next, next+n-1)); err != nil {
			t.Fatalf("StoreLogs: %v", err)
		}
		next += n
		say("ack %d", next-1)
		if batch%8 == 7 {
			if err := s.SetUint64([]byte(crashTermKey), next-1); err != nil {
				t.Fatalf("SetUint64: %v", err)
			}
			say("term %d", next-1)
		}
		if batch%32 == 31 && next-1 > crashKeep {
			x := next - 1 - crashKeep
			first, _ := s.FirstIndex()
			if x >= first {
				say("del %d", x)
				if err := s.DeleteRange(first, x); err != nil {
					t.Fatalf("DeleteRange: %v", err)
				}
				say("deleted %d", x)
			}
		}
	}
}

// crashState is what the children have reported so far, over every run.
type crashState struct {
	acked      uint64 // highest index whose StoreLogs returned
	term       uint64 // highest CurrentTerm whose SetUint64 returned
	delIntent  uint64 // highest X of a DeleteRange(_, X) that may have run
	delAcked   uint64 // highest X of a DeleteRange(_, X) that returned
	readyCount int    // runs that got as far as opening the store
}

func (c *crashState) apply(line string) error {
	f := strings.Fields(strings.TrimPrefix(line, crashPrefix))
	if len(f) < 2 {
		return fmt.Errorf("bad line %q", line)
	}
	v, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return fmt.Errorf("bad line %q", line)
	}
	switch f[0] {
	case "ready":
		c.readyCount++
	case "ack":
		c.acked = max(c.acked, v)
	case "term":
		c.term = max(c.term, v)
	case "del":
		c.delIntent = max(c.delIntent, v)
	case "deleted":
		c.delAcked = max(c.delAcked, v)
	default:
		return fmt.Errorf("bad line %q", line)
	}
	return nil
}

// TestCrash kills a writing process at random moments and checks after each
// kill that every acknowledged write is there and correct, and that the
// store opens cleanly. It then damages the tail of the newest WAL in a copy
// and checks what recovery makes of that.
func TestCrash(t *testing.T) {
	if os.Getenv(crashDirEnv) != "" {
		t.Skip("in the child process")
	}
	iterations := 100
	if testing.Short() {
		iterations = 20
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	dir := t.TempDir()
	var st crashState
	for i := range iterations {
		// Mostly while writing, a few hundred synced batches in at most;
		// sometimes before the child's Open is done, so that recovery
		// itself is interrupted.
		afterReady := rng.IntN(4) != 0
		delay := time.Duration(rng.Int64N(int64(300 * time.Millisecond)))
		if !afterReady {
			delay = time.Duration(rng.Int64N(int64(150 * time.Millisecond)))
		}
		acked := st.acked
		runCrashChild(t, dir, rng.Uint64(), afterReady, delay, &st)

		damaged := filepath.Join(t.TempDir(), "damaged")
		copyDir(t, dir, damaged)

		s, err := Open(dir, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("iteration %d: Open after kill: %v", i, err)
		}
		present := checkCrashState(t, s, &st)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("iteration %d: killed %v after start (after ready: %v); %d more acked; log [%d, %d]",
			i, delay, afterReady, st.acked-acked, present.first, present.last)

		checkTornTail(t, damaged, rng, present)
	}
	if st.readyCount == 0 || st.acked == 0 {
		t.Fatalf("no child ever wrote anything (ready %d, acked %d)", st.readyCount, st.acked)
	}
}

// runCrashChild starts a child writing to dir, kills it after delay (counted
// from its ready line if afterReady) and folds what it reported into st.
func runCrashChild(t *testing.T, dir string, seed uint64, afterReady bool, delay time.Duration, st *crashState) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashSeedEnv+"="+strconv.FormatUint(seed, 10))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	ready := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer func() {
			select {
			case <-ready:
			default:
				close(ready) // the child died before it was ready
			}
		}()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, crashPrefix) {
				continue
			}
			lines = append(lines, line)
			if strings.HasPrefix(line, crashPrefix+"ready ") {
				close(ready)
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	})
	if afterReady {
		<-ready
	}
	time.Sleep(delay)
	// SIGKILL: no deferred calls, no Close, no flush of anything.
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatal(err)
	}
	wg.Wait() // every line written before the kill is in the pipe
	err = cmd.Wait()
	if cmd.ProcessState.Exited() {
		// It ended on its own: it failed (or ran out its deadline).
		t.Fatalf("child exited by itself (%v) before the kill:\n%s", err, stderr.String())
	}
	for _, l := range lines {
		if err := st.apply(l); err != nil {
			t.Fatal(err)
		}
	}
}

type bounds struct{ first, last uint64 }

// checkCrashState checks the reopened store against what the children
// acknowledged, and returns its bounds.
func checkCrashState(t *testing.T, s *Store, st *crashState) bounds {
	t.Helper()
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	if last < st.acked {
		t.Fatalf("LastIndex = %d, but entries up to %d were acknowledged", last, st.acked)
	}
	if st.acked > 0 {
		if st.delAcked > 0 && first <= st.delAcked {
			t.Fatalf("FirstIndex = %d, but entries up to %d were deleted", first, st.delAcked)
		}
		if first > st.delIntent+1 {
			t.Fatalf("FirstIndex = %d, but nothing past %d was ever deleted", first, st.delIntent)
		}
	}
	// Every entry in the bounds, acknowledged or not, must be whole and
	// right: a write is all there or not at all.
	checkLog(t, s, first, last)
	if st.term > 0 {
		term, err := s.GetUint64([]byte(crashTermKey))
		if err != nil || term < st.term {
			t.Fatalf("GetUint64(%s) = %d, %v; %d was acknowledged", crashTermKey, term, err, st.term)
		}
	}
	return bounds{first, last}
}

// checkTornTail damages the newest WAL in dir (a copy of the store just after
// a kill) a few bytes into one of its last records, the way a torn write at
// power loss might leave it. Damage at the very end of the newest WAL looks
// to Pebble like a write that never completed: Open must succeed, drop
// exactly the damaged record and everything after it, and keep every entry
// written before it. Damage followed by intact records may instead be
// reported as corruption; it must never be served as data.
func checkTornTail(t *testing.T, dir string, rng *rand.Rand, before bounds) {
	t.Helper()
	recs := newestWAL(t, dir)
	var withLogs []int // records that store log entries
	for i, r := range recs {
		if len(r.indexes) > 0 {
			withLogs = append(withLogs, i)
		}
	}
	if len(withLogs) == 0 {
		return // killed before writing into this WAL
	}
	cut := withLogs[len(withLogs)-1-rng.IntN(min(3, len(withLogs)))]
	r := recs[cut]
	lost := r.indexes[0]
	for _, later := range recs[cut:] {
		for _, idx := range later.indexes {
			lost = min(lost, idx)
		}
	}
	// Either cut the file a few bytes into the record and garble the bytes
	// before the cut, or garble them in place and leave whatever follows
	// (the zeros of the preallocated tail, or later records that are also
	// lost).
	n := 1 + rng.Int64N(40)
	truncated := rng.IntN(2) == 0
	if truncated {
		truncateFile(t, r.file, r.offset+n)
	}
	damageFile(t, r.file, r.offset+n-min(n, 8), int(min(n, 8)))

	s, err := Open(dir, Options{Logger: testLogger(t)})
	laterIntact := !truncated && cut < len(recs)-1
	// A WAL that Pebble closed (it rotated to a new one the child never
	// wrote to) ends in an end-of-log trailer, which proves everything
	// before it was synced: damage in place before it is refused too.
	closedCleanly := !truncated && err != nil && strings.Contains(err.Error(), "closed cleanly")
	if err != nil && (laterIntact || closedCleanly) {
		// Intact records follow the damage, and each was written after the
		// damaged one had been synced (the child waits for every sync), so
		// their sync offsets prove the damaged one was acknowledged.
		t.Logf("torn tail (truncated: false): damaged record %d of %d, later ones or the trailer intact: %v", cut, len(recs), err)
		checkCorruptOpenError(t, err, dir)
		return
	}
	if err != nil {
		t.Fatalf("Open with a torn WAL tail = %v; Pebble tolerates damage at the very end of the newest WAL", err)
	}
	defer s.Close()
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	t.Logf("torn tail (truncated: %v): damaged record %d of %d (entries from %d) %d bytes in; log [%d, %d] before, [%d, %d] after",
		truncated, cut, len(recs), lost, n, before.first, before.last, first, last)
	// Entries below the damaged records are all there; the damaged ones and
	// everything after them are gone. One exception: a child killed inside
	// Open may leave behind a WAL that Open had already flushed to an
	// sstable and would not replay, and damage to it loses nothing.
	// (Truncations recorded in the damaged records are lost too, so the head
	// may reach back further than before.)
	if laterIntact && last != before.last {
		// Only a WAL that recovery does not replay (see below) may carry
		// such damage without Open refusing.
		t.Fatalf("torn tail at record %d of %d (entries from %d) with later records intact: Open succeeded with LastIndex = %d, was %d",
			cut, len(recs), lost, last, before.last)
	}
	if want := min(before.last, lost-1); last != want && last != before.last {
		t.Fatalf("torn tail at record %d of %d (entries from %d): LastIndex = %d, want %d (or %d if that WAL was already flushed)",
			cut, len(recs), lost, last, want, before.last)
	}
	if first > before.first {
		t.Fatalf("torn tail: FirstIndex = %d, was %d before the damage", first, before.first)
	}
	if last > 0 {
		checkLog(t, s, first, last)
	}
}

// copyDir copies the files of a store directory. Runs of zeros (the
// preallocated tails of WAL files) become holes, to keep the copy cheap.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			t.Fatalf("unexpected %s in the store directory", e.Name())
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(filepath.Join(to, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		const block = 4096
		for off := 0; off < len(b); off += block {
			chunk := b[off:min(off+block, len(b))]
			if bytes.Count(chunk, []byte{0}) == len(chunk) {
				continue
			}
			if _, err := f.WriteAt(chunk, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Truncate(int64(len(b))); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
