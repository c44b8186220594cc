#!/usr/bin/env bash
# The main job, end to end: install, bring up Elasticsearch, index the sample help-centre
# articles, run a reranked query. Safe to run again.
#   Offline (no model hub): HF_HUB_OFFLINE=1 ES_RERANK_RERANKER_MODEL=/path/to/cross-encoder scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export ES_RERANK_INDEX=${ES_RERANK_INDEX:-help-centre}
if [ -z "${ES_URL:-}" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    docker compose up -d --wait
  else
    echo "no Docker engine here: starting the local cluster from Maven Central instead"
    es-rerank cluster start
  fi
  export ES_URL=http://127.0.0.1:9200
fi
es-rerank index examples/help-centre.jsonl
es-rerank query "what happens to my data if I close my account" --depth 50 --final-k 3 --explain
