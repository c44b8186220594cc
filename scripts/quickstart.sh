#!/usr/bin/env bash
# The main job, end to end: install, bring up a search engine, index the sample help-centre
# articles, run a reranked query. Safe to run again.
#   Offline (no model hub): HF_HUB_OFFLINE=1 ES_RERANK_RERANKER_MODEL=/path/to/cross-encoder scripts/quickstart.sh
#   OpenSearch instead of Elasticsearch: ES_RERANK_CLUSTER_ENGINE=opensearch scripts/quickstart.sh
# With ES_URL set, that cluster is used as it is (either engine). Otherwise Docker's compose
# cluster (http://127.0.0.1:9200, OpenSearch :9202), else the local node from Maven Central on
# ES_RERANK_CLUSTER_PORT (default 9200, OpenSearch 9202).
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${ES_RERANK_CLUSTER_ENGINE:-elasticsearch}
case "$engine" in
  elasticsearch) compose=(docker compose up -d --wait elasticsearch); compose_url=http://127.0.0.1:9200 ;;
  opensearch) compose=(docker compose --profile opensearch up -d --wait opensearch); compose_url=http://127.0.0.1:9202 ;;
  *) echo "ES_RERANK_CLUSTER_ENGINE must be elasticsearch or opensearch, got '$engine'" >&2; exit 2 ;;
esac
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export ES_RERANK_INDEX=${ES_RERANK_INDEX:-help-centre}
if [ -z "${ES_URL:-}" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    "${compose[@]}"
    ES_URL=$compose_url
  else
    echo "no Docker engine here: starting the local $engine node from Maven Central instead"
    es-rerank cluster start --engine "$engine"
    # the node's own URL: its port follows ES_RERANK_CLUSTER_PORT and the engine's default
    ES_URL=$(es-rerank cluster status --engine "$engine" --json | python -c 'import json, sys; print(json.load(sys.stdin)["url"])')
  fi
  export ES_URL
fi
es-rerank index examples/help-centre.jsonl
es-rerank query "what happens to my data if I close my account" --depth 50 --final-k 3 --explain
