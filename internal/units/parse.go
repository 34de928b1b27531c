package units

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// byteUnits are the unit suffixes ParseBytes accepts, lowercased: SI
// (powers of 1000) without an "i", IEC (powers of 1024) with one, as
// Kubernetes quantities and most tools read them.
var byteUnits = map[string]uint64{
	"": 1, "b": 1,
	"k": 1e3, "kb": 1e3, "ki": 1 << 10, "kib": 1 << 10,
	"m": 1e6, "mb": 1e6, "mi": 1 << 20, "mib": 1 << 20,
	"g": 1e9, "gb": 1e9, "gi": 1 << 30, "gib": 1 << 30,
	"t": 1e12, "tb": 1e12, "ti": 1 << 40, "tib": 1 << 40,
	"p": 1e15, "pb": 1e15, "pi": 1 << 50, "pib": 1 << 50,
}

// bitUnits are the units of ParseBandwidth that count bits, lowercased.
var bitUnits = map[string]uint64{
	"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
	"bps": 1, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9, "tbps": 1e12,
	"kibit": 1 << 10, "mibit": 1 << 20, "gibit": 1 << 30,
}

// ParseBytes parses a size people write: a number of bytes, or a number
// with a unit, such as 40GiB, 80G, 512MiB or 1.5TB. Units are
// case-insensitive; G and GB are 10⁹ bytes, Gi and GiB are 2³⁰. A fraction
// that does not come to a whole number of bytes is rounded up, which keeps
// "at least SIZE" exact.
func ParseBytes(s string) (uint64, error) {
	num, unit, err := splitQuantity(s, "want a size such as 40GiB, 80G, 512MiB or a number of bytes")
	if err != nil {
		return 0, err
	}
	mult, ok := byteUnits[strings.ToLower(unit)]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q; want B, KB, MB, GB, TB, PB (powers of 1000) or KiB, MiB, GiB, TiB, PiB (powers of 1024)", unit)
	}
	return scale(num, mult, 1)
}

// ParseBandwidth parses a rate people write and returns it in bytes per
// second: bytes as ParseBytes reads them (10MiB, 1.5GB, with or without a
// trailing "/s"), or bits with a unit that says so (80Mbit, 1Gbps, 500kbit;
// powers of 1000 unless the unit has an "i"). A fraction of a byte is
// rounded up.
func ParseBandwidth(s string) (uint64, error) {
	const want = "want a rate such as 10MiB (bytes per second), 80Mbit or 1Gbps (bits per second)"
	in := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	num, unit, err := splitQuantity(in, want)
	if err != nil {
		return 0, err
	}
	if mult, ok := bitUnits[strings.ToLower(unit)]; ok {
		return scale(num, mult, 8)
	}
	mult, ok := byteUnits[strings.ToLower(unit)]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q; %s", unit, want)
	}
	return scale(num, mult, 1)
}

func splitQuantity(s, want string) (num, unit string, err error) {
	in := strings.TrimSpace(s)
	i := 0
	for i < len(in) && ('0' <= in[i] && in[i] <= '9' || in[i] == '.') {
		i++
	}
	num, unit = in[:i], strings.TrimSpace(in[i:])
	if num == "" || strings.Count(num, ".") > 1 || num == "." {
		return "", "", errors.New(want)
	}
	return num, unit, nil
}

// scale returns num × mult ÷ div, rounded up to a whole number.
func scale(num string, mult, div uint64) (uint64, error) {
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%q is not a number", num)
	}
	r.Mul(r, new(big.Rat).SetFrac(new(big.Int).SetUint64(mult), new(big.Int).SetUint64(div)))
	n := new(big.Int).Quo(r.Num(), r.Denom())
	if !r.IsInt() {
		n.Add(n, big.NewInt(1))
	}
	if !n.IsUint64() {
		return 0, errors.New("too large: the most is 16 EiB")
	}
	return n.Uint64(), nil
}
