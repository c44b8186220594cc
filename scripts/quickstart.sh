#!/usr/bin/env bash
# The main job, end to end: install, bring up a search engine, index the sample help-centre
# articles, run a reranked query. Safe to run again.
#   Offline (no model hub): HF_HUB_OFFLINE=1 ES_RERANK_RERANKER_MODEL=/path/to/cross-encoder scripts/quickstart.sh
#   OpenSearch instead of Elasticsearch: ES_RERANK_CLUSTER_ENGINE=opensearch scripts/quickstart.sh
# With ES_URL set, that cluster is used as it is (either engine). Otherwise Docker's compose
# cluster (http://127.0.0.1:9200, OpenSearch :9202; ES_RERANK_COMPOSE_ES_PORT and
# ES_RERANK_COMPOSE_OPENSEARCH_PORT move them) through `docker compose` (v2) or, where only v1 is
# installed, `docker-compose`; else the local node from Maven Central on ES_RERANK_CLUSTER_PORT
# (default 9200, OpenSearch 9202).
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${ES_RERANK_CLUSTER_ENGINE:-elasticsearch}
case "$engine" in
  elasticsearch) profile=(); compose_url=http://127.0.0.1:${ES_RERANK_COMPOSE_ES_PORT:-9200} ;;
  opensearch) profile=(--profile opensearch); compose_url=http://127.0.0.1:${ES_RERANK_COMPOSE_OPENSEARCH_PORT:-9202} ;;
  *) echo "ES_RERANK_CLUSTER_ENGINE must be elasticsearch or opensearch, got '$engine'" >&2; exit 2 ;;
esac

# compose v1 has no --wait: poll the container's health check (docker-compose.yml defines one)
wait_healthy() {
  local id status
  id=$(docker-compose ${profile[@]+"${profile[@]}"} ps -q "$engine")
  for _ in $(seq 120); do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$id")
    case "$status" in
      healthy) return 0 ;;
      unhealthy) docker-compose ${profile[@]+"${profile[@]}"} logs --tail 30 "$engine" >&2
                 echo "the $engine container is unhealthy (its log is above)" >&2; return 1 ;;
    esac
    sleep 5
  done
  echo "the $engine container was not healthy after 600 s (status: $status)" >&2
  return 1
}

compose_up() {
  # The compose file asks for 65536 open files; a daemon without CAP_SYS_RESOURCE cannot grant
  # more than its own hard limit. Where this shell's hard limit is lower, ask for that instead.
  local hard
  hard=$(ulimit -Hn)
  if [ -z "${ES_RERANK_COMPOSE_NOFILE:-}" ] && [ "$hard" != unlimited ] && [ "$hard" -lt 65536 ]; then
    echo "open files limited to $hard here: ES_RERANK_COMPOSE_NOFILE=$hard"
    export ES_RERANK_COMPOSE_NOFILE=$hard
  fi
  if docker compose version >/dev/null 2>&1; then
    docker compose ${profile[@]+"${profile[@]}"} up -d --wait "$engine"
  else
    docker-compose ${profile[@]+"${profile[@]}"} up -d "$engine"
    wait_healthy
  fi
}

scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export ES_RERANK_INDEX=${ES_RERANK_INDEX:-help-centre}
if [ -z "${ES_URL:-}" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 \
     && { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; }; then
    compose_up
    ES_URL=$compose_url
  else
    echo "no Docker engine with compose here: starting the local $engine node from Maven Central instead"
    es-rerank cluster start --engine "$engine"
    # the node's own URL: its port follows ES_RERANK_CLUSTER_PORT and the engine's default
    ES_URL=$(es-rerank cluster status --engine "$engine" --json | python -c 'import json, sys; print(json.load(sys.stdin)["url"])')
  fi
  export ES_URL
fi
es-rerank index examples/help-centre.jsonl
es-rerank query "what happens to my data if I close my account" --depth 50 --final-k 3 --explain
