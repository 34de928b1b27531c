package udpbuf

import (
	"strings"
	"testing"
)

func TestWarningNamesTheSizesAndTheFix(t *testing.T) {
	if w := Warning(Sizes{Read: Wanted, Write: Wanted * 2}); w != "" {
		t.Errorf("buffers at the wanted size gave a warning: %q", w)
	}
	w := Warning(Sizes{Read: 416 << 10, Write: Wanted})
	for _, want := range []string{"416 KiB receive", "7168 KiB", SysctlHint} {
		if !strings.Contains(w, want) {
			t.Errorf("warning %q lacks %q", w, want)
		}
	}
}

// Raise reads back what the kernel really granted; whatever that is on
// this machine, it is positive and agrees with Warning.
func TestProbeReadsBackGrantedSizes(t *testing.T) {
	s, err := Probe()
	if err != nil {
		t.Fatal(err)
	}
	if s.Read <= 0 || s.Write <= 0 {
		t.Fatalf("probe read back %+v", s)
	}
	t.Logf("granted %+v; warning: %q", s, Warning(s))
}
