#!/usr/bin/env bash
# Reproduce results/scifact-test/: the eval table and the depth sweep on SciFact's test split.
# Needs ../shared/data/scifact and a cross-encoder folder (default: the learned, in-domain
# ../shared/models/minilm-l6-scifact-ce; the MS MARCO default model is not reachable offline).
# Uses ES_URL when set, else starts the local cluster. Indexes the corpus on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export ES_RERANK_RERANKER_MODEL=${ES_RERANK_RERANKER_MODEL:-../shared/models/minilm-l6-scifact-ce}
DATA=${DATA:-../shared/data/scifact}
[ -n "${ES_URL:-}" ] || es-rerank cluster start
es-rerank eval --data "$DATA" --split test --depth 50 --final-k 5 --out results/scifact-test/eval --no-progress
es-rerank sweep --data "$DATA" --split test --depths 20,50,100 --final-k 5 --out results/scifact-test/sweep --no-progress
