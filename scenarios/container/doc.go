// Package container drives the container tier: scenario tests that kill,
// restart and partition real drover servers running in Docker containers,
// and check with package linearize that clients never saw a
// non-linearizable registry.
//
// The tests carry the build tag "docker" and need the cluster and the
// environment that deploy/docker/scenarios.sh sets up; run that script
// rather than go test. Without the environment every test skips and says
// what is missing. The script sets:
//
//	DROVER_SCENARIO_PROJECT       the compose project of the cluster
//	DROVER_SCENARIO_COMPOSE_FILE  the compose file it was started from
//	DROVER_SCENARIO_CA_FILE       the cluster CA certificate (PEM)
//	DROVER_SCENARIO_SERVERS       name=API address reachable from the tests, comma-separated
//	DROVER_SCENARIO_CONTAINERS    name=container name, comma-separated
//	DROVER_SCENARIO_CLUSTER_IPS   name=address on the servers' own network, comma-separated
//	DROVER_SCENARIO_NETWORK       the docker network the servers talk over
//	DROVER_SCENARIO_ARTIFACTS     where to write failure reports (optional)
//
// The servers have two networks: they talk to each other over one, which
// the partition scenario disconnects, and the tests reach their API over
// the other, so an isolated server can still be asked what it thinks.
package container
