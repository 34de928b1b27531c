// Package telemetrytest makes the request and response bodies of a digits
// classifier, the typical model of telemetry's tests and benchmarks: 64
// pixel inputs and ten logits out.
package telemetrytest

import (
	"math/rand/v2"
	"strconv"
	"strings"
)

// DigitsRequest is a digits classifier request: one 8×8 image of 0–16.
func DigitsRequest(rng *rand.Rand) []byte {
	var sb strings.Builder
	sb.WriteString(`{"inputs":{"input":[[`)
	for i := range 64 {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.Itoa(rng.IntN(17)))
	}
	sb.WriteString(`]]}}`)
	return []byte(sb.String())
}

// DigitsResponse is its answer: ten logits.
func DigitsResponse(rng *rand.Rand) []byte {
	var sb strings.Builder
	sb.WriteString(`{"outputs":{"logits":[[`)
	for i := range 10 {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.FormatFloat(-rng.Float64()*5, 'f', 3, 64))
	}
	sb.WriteString(`]]},"model":"digits"}`)
	return []byte(sb.String())
}
