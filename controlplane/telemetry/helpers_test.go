package telemetry_test

import (
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

func tsp(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

func itoa(i int) string { return strconv.Itoa(i) }
