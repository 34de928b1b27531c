// Package container drives the container tier: scenario tests that kill,
// restart and partition real drover servers running in Docker containers,
// and check with package linearize that clients never saw a
// non-linearizable registry; one that kills and restarts drover-agent
// containers and checks that the leader marks exactly those nodes DOWN
// within their heartbeat TTL, and READY again as the same nodes; one
// that has agent containers pull a pushed model, from each other and from
// the servers, while the leader's container is killed; and one that rolls
// a deployment of the sample model (the built-in onnx runtime, drover-onnx
// in the agent's image) from one version to the next across six agent
// containers in two sites, kills the leader's container once the canary
// is done, and checks, under inference requests to every agent the whole
// time, that the new leader finishes the rollout, every agent switched
// exactly once, no site ever had more nodes updating than its budget, and
// no request failed.
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
//	DROVER_SCENARIO_SERVER_CONFIG the servers' --config file, for their heartbeat timing
//	DROVER_SCENARIO_AGENT_IMAGE   the drover-agent image (the agent scenario skips without it)
//	DROVER_SCENARIO_AGENTS        how many agents the agent scenario starts (default 20)
//
// The servers have two networks: they talk to each other over one, which
// the partition scenario disconnects, and the tests reach their API over
// the other, so an isolated server can still be asked what it thinks.
//
// The agent scenarios make a join token with the management token and
// start their agents themselves with `docker run`, on the servers' network
// (the one the servers' certificates and advertised API addresses are
// for), each with a named volume for its identity. Agents of a site reach
// each other there on their gossip and peer ports (7947, 7948), which no
// container publishes: the network joins them. Their containers and
// volumes carry the compose project's label and "drover.scenario.agent";
// the test removes them when it passes and stops them when it fails, and
// scenarios.sh prints their logs and removes them in any case.
//
// The rollout scenario's agents also serve their inference endpoint on
// every address (--serve-addr 0.0.0.0:7950), and the test reaches it at
// each agent's address on the servers' network, which the host has an
// address on too (Docker gives the host one on every bridge network,
// internal ones included). Every answer names the version that served it
// in the Drover-Version header, which is how the test's load loop tells
// the two sides of the rollout apart.
package container
