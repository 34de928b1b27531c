package units

import "testing"

func TestParseBandwidth(t *testing.T) {
	for in, want := range map[string]uint64{
		"1000":     1000,
		"10MiB":    10 << 20,
		"10MiB/s":  10 << 20,
		"80Mbit":   10_000_000,
		"1Gbps":    125_000_000,
		"1.5kbit":  188,
		"2 MB":     2_000_000,
		" 8bit/s ": 1,
		"1Mibit":   1 << 17,
	} {
		got, err := ParseBandwidth(in)
		if err != nil || got != want {
			t.Errorf("ParseBandwidth(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "10 furlongs", "1..2MiB", "MiB"} {
		if got, err := ParseBandwidth(in); err == nil {
			t.Errorf("ParseBandwidth(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]uint64{"512": 512, "1KiB": 1024, "1.5k": 1500, "16MiB": 16 << 20} {
		if got, err := ParseBytes(in); err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := ParseBytes("80Mbit"); err == nil {
		t.Error("ParseBytes(80Mbit) took bits for a size")
	}
}
