#!/usr/bin/env bash
# Container scenarios: builds a static drover, drover-agent and
# drover-onnx, the drover:dev and drover-agent:dev images (the agent's with
# drover-onnx beside it, for the onnx runtime), makes a cluster CA, starts
# three servers with compose, waits until they are ready, runs the Go
# scenario tests of scenarios/container against them (the agent scenarios
# start their agent containers themselves, labelled as part of the compose
# project; the pull and rollout scenarios also push models from this
# machine, and the rollout scenario sends inference requests to the
# agents' endpoints on the servers' network), and
# always tears everything down again (agent and server containers, networks,
# volumes, temporary files), on success, failure or Ctrl-C. On failure it
# prints the end of every server's and agent's log and keeps the full logs
# with the other failure reports.
#
#   bash deploy/docker/scenarios.sh [go test flags, e.g. -run TestLeaderKilled]
#
# Needs Docker Engine, `docker compose` or `docker-compose`, Go and curl.
# No image is pulled: the image is FROM scratch around the static binary.
#
# Environment (all optional):
#   DROVER_COMPOSE_PROJECT     compose project name      (drover-scenarios)
#   DROVER_CLUSTER_SUBNET      the servers' network, /24 (172.28.50.0/24)
#   DROVER_CLIENT_SUBNET       the API network, /24      (172.28.51.0/24)
#   DROVER_IMAGE               image to build and run    (drover:dev)
#   DROVER_AGENT_IMAGE         agent image to build      (drover-agent:dev)
#   DROVER_SCENARIO_AGENTS     agents the agent scenario starts (20; it kills
#                              10, or half of them when there are fewer than 20)
#   DROVER_SCENARIO_ARTIFACTS  failure reports and logs  (bin/scenario-artifacts)
#   DROVER_SCENARIO_TIMEOUT    go test -timeout          (20m)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
compose_file=$here/compose.yaml

project=${DROVER_COMPOSE_PROJECT:-drover-scenarios}
cluster_subnet=${DROVER_CLUSTER_SUBNET:-172.28.50.0/24}
client_subnet=${DROVER_CLIENT_SUBNET:-172.28.51.0/24}
image=${DROVER_IMAGE:-drover:dev}
agent_image=${DROVER_AGENT_IMAGE:-drover-agent:dev}
agents=${DROVER_SCENARIO_AGENTS:-20}
artifacts=${DROVER_SCENARIO_ARTIFACTS:-$root/bin/scenario-artifacts}
test_timeout=${DROVER_SCENARIO_TIMEOUT:-20m}
servers=(s1 s2 s3)
# The label every agent container and volume of the agent scenario carries,
# besides com.docker.compose.project (scenarios/container/agents_test.go).
agent_label=drover.scenario.agent
ready_timeout=90 # seconds

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'scenarios.sh: %s\n' "$*" >&2; exit 1; }

# --- checks, before anything is created --------------------------------------

[[ $project =~ ^[a-z0-9][a-z0-9_-]*$ ]] ||
  die "DROVER_COMPOSE_PROJECT=$project: use lowercase letters, digits, '-' and '_'"
prefix24() { # 10.1.2.0/24 -> 10.1.2
  [[ $1 =~ ^([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})\.0/24$ ]] || die "$2=$1: give a /24 such as 172.28.50.0/24"
  printf '%s' "${BASH_REMATCH[1]}"
}
cluster_prefix=$(prefix24 "$cluster_subnet" DROVER_CLUSTER_SUBNET)
client_prefix=$(prefix24 "$client_subnet" DROVER_CLIENT_SUBNET)
[[ $cluster_prefix != "$client_prefix" ]] || die "DROVER_CLUSTER_SUBNET and DROVER_CLIENT_SUBNET must differ"
[[ $agents =~ ^[1-9][0-9]{0,2}$ ]] && ((agents >= 2 && agents <= 200)) ||
  die "DROVER_SCENARIO_AGENTS=$agents: give a number from 2 to 200"

for tool in docker go curl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (is it running, may this user use it?)"
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  die "neither 'docker compose' nor 'docker-compose' is installed"
fi

# --- state the cleanup needs --------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/drover-scenarios.XXXXXX")
ca_dir=$work/ca
compose_used=false

export DROVER_CA_DIR=$ca_dir DROVER_IMAGE=$image
export DROVER_CLUSTER_SUBNET=$cluster_subnet DROVER_CLIENT_SUBNET=$client_subnet
declare -A cluster_ip client_ip
for i in 1 2 3; do
  cluster_ip[s$i]=$cluster_prefix.1$i
  client_ip[s$i]=$client_prefix.1$i
  export "DROVER_S${i}_IP=${cluster_ip[s$i]}" "DROVER_S${i}_CLIENT_IP=${client_ip[s$i]}"
done

compose() { "${compose_cmd[@]}" -p "$project" -f "$compose_file" "$@"; }

# The agent scenario's containers and volumes: made with docker run, not
# compose, so compose down does not know them (and could not remove the
# cluster network while they are attached to it).
agent_filter=(--filter "label=com.docker.compose.project=$project" --filter "label=$agent_label")
agent_containers() { docker ps -a --format '{{.Names}}' "${agent_filter[@]}" | sort; }
remove_agents() {
  local names vols
  names=$(agent_containers) || return 1
  if [[ -n $names ]]; then
    # shellcheck disable=SC2086 # one name a line, none with spaces
    docker rm -f -v $names >/dev/null || return 1
  fi
  vols=$(docker volume ls -q "${agent_filter[@]}") || return 1
  if [[ -n $vols ]]; then
    # shellcheck disable=SC2086
    docker volume rm $vols >/dev/null || return 1
  fi
}

print_logs() {
  mkdir -p "$artifacts"
  for s in "${servers[@]}"; do
    compose logs --no-color --timestamps "$s" >"$artifacts/$s.log" 2>&1 || true
    log "last lines of $s's log (all of it: $artifacts/$s.log)"
    tail -n 150 "$artifacts/$s.log" >&2 || true
  done
  local a
  for a in $(agent_containers 2>/dev/null); do
    docker logs --timestamps "$a" >"$artifacts/$a.log" 2>&1 || true
    log "last lines of agent $a's log (all of it: $artifacts/$a.log)"
    tail -n 40 "$artifacts/$a.log" >&2 || true
  done
}

cleanup() {
  local rc=$?
  trap '' INT TERM # a second Ctrl-C must not stop the teardown halfway
  trap - EXIT
  if [[ $compose_used == true ]]; then
    if ((rc != 0)); then
      log "failed (exit $rc); server and agent logs follow"
      print_logs
    fi
    log "tearing down the agents and the cluster"
    remove_agents || remove_agents || true
    compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1 ||
      compose down -v --remove-orphans --timeout 10 || true
    local left
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
    left+=$(docker network ls -q --filter "label=com.docker.compose.project=$project")
    left+=$(docker volume ls -q --filter "label=com.docker.compose.project=$project")
    if [[ -n $left ]]; then
      log "teardown left containers, networks or volumes of project $project behind"
      ((rc != 0)) || rc=1
    fi
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build ----------------------------------------------------------------------

cd "$root"
log "building a static drover, drover-agent and drover-onnx"
mkdir -p bin
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o bin/drover ./cmd/drover
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o bin/drover-agent ./cmd/drover-agent
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o bin/drover-onnx ./cmd/drover-onnx

log "building images $image and $agent_image"
mkdir -p "$work/image/data" "$work/agent-image/data"
cp bin/drover "$work/image/drover"
docker build --quiet -f "$here/Dockerfile" -t "$image" "$work/image" >/dev/null
cp bin/drover-agent bin/drover-onnx "$work/agent-image/"
docker build --quiet -f "$here/Dockerfile.agent" -t "$agent_image" "$work/agent-image" >/dev/null

log "creating the cluster CA"
bin/drover tls ca create --dir "$ca_dir" >/dev/null
# The servers run as uid 65532 and must read the CA key.
if [[ $(id -u) == 0 ]]; then
  chown -R 65532:65532 "$ca_dir"
else
  chmod 0755 "$ca_dir" && chmod 0644 "$ca_dir"/*.pem
fi

# --- cluster ----------------------------------------------------------------------

compose_used=true
log "removing what an interrupted earlier run may have left"
remove_agents >/dev/null 2>&1 || true
compose down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true

log "starting s1 s2 s3 (project $project, networks $cluster_subnet and $client_subnet, ${compose_cmd[*]})"
compose up -d

log "waiting for every server to know a leader"
deadline=$((SECONDS + ready_timeout))
for s in "${servers[@]}"; do
  until curl -fsS --max-time 2 --cacert "$ca_dir/ca.pem" \
    --resolve "server.drover:7400:${client_ip[$s]}" \
    https://server.drover:7400/v1/health/ready >/dev/null 2>&1; do
    id=$(compose ps -q "$s")
    [[ $(docker inspect -f '{{.State.Running}}' "$id" 2>/dev/null) == true ]] || die "$s exited during start"
    ((SECONDS < deadline)) || die "$s not ready after ${ready_timeout}s"
    sleep 1
  done
  log "$s ready"
done

containers=()
for s in "${servers[@]}"; do
  id=$(compose ps -q "$s")
  name=$(docker inspect -f '{{.Name}}' "$id")
  containers+=("$s=${name#/}")
done
network=$(docker network ls --format '{{.Name}}' \
  --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.network=cluster")
[[ -n $network && $network != *$'\n'* ]] || die "cannot find the cluster network of project $project (found: '$network')"

# --- scenarios ----------------------------------------------------------------------

join() { local IFS=,; printf '%s' "$*"; }
apis=() ips=()
for s in "${servers[@]}"; do
  apis+=("$s=${client_ip[$s]}:7400")
  ips+=("$s=${cluster_ip[$s]}")
done

mkdir -p "$artifacts"
log "running the container scenarios"
DROVER_SCENARIO_PROJECT=$project \
DROVER_SCENARIO_COMPOSE_FILE=$compose_file \
DROVER_SCENARIO_CA_FILE=$ca_dir/ca.pem \
DROVER_SCENARIO_SERVERS=$(join "${apis[@]}") \
DROVER_SCENARIO_CONTAINERS=$(join "${containers[@]}") \
DROVER_SCENARIO_CLUSTER_IPS=$(join "${ips[@]}") \
DROVER_SCENARIO_NETWORK=$network \
DROVER_SCENARIO_ARTIFACTS=$artifacts \
DROVER_SCENARIO_SERVER_CONFIG=$here/server-scenarios.json \
DROVER_SCENARIO_AGENT_IMAGE=$agent_image \
DROVER_SCENARIO_AGENTS=$agents \
  go test -tags docker -count=1 -v -timeout "$test_timeout" ./scenarios/container/... "$@"
log "container scenarios passed"
