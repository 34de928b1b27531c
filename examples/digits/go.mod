module github.com/droverhq/drover/examples/digits

go 1.26.0

replace github.com/droverhq/drover => ../../

require (
	github.com/droverhq/drover v0.0.0-00010101000000-000000000000
	gonum.org/v1/gonum v0.17.0
	google.golang.org/protobuf v1.36.12
)

require golang.org/x/sys v0.49.0 // indirect
