#!/usr/bin/env bash
# Reproduce results/scifact-test/: eval on both engines, the depth sweep, tune on the train
# split applied to the index and evaluated on the test split through it, and tune cross-validated on test.
# Needs ../shared/data/scifact and a cross-encoder folder (default: the learned, in-domain
# ../shared/models/minilm-l6-scifact-ce; the MS MARCO default model is not reachable offline).
# Uses ES_URL when set, else starts the local Elasticsearch node; OpenSearch at OPENSEARCH_URL, else a local node on 9202.
# Each evaluation index is built once per corpus and settings and reused afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh offline,eval
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export ES_RERANK_RERANKER_MODEL=${ES_RERANK_RERANKER_MODEL:-../shared/models/minilm-l6-scifact-ce}
DATA=${DATA:-../shared/data/scifact}
OUT=results/scifact-test
[ -n "${ES_URL:-}" ] || { es-rerank cluster start; export ES_URL=http://127.0.0.1:9200; }

es-rerank eval --data "$DATA" --split test --depth 50 --final-k 5 --out $OUT/eval --no-progress
es-rerank sweep --data "$DATA" --split test --depths 20,50,100 --final-k 5 --out $OUT/sweep --no-progress
# tune on train (SciFact has no dev split) and apply the winner to the evaluation index (it holds the
# corpus already); then evaluate on test through that pipeline, as every client would run it
EVAL_INDEX=$(python -c "import json; print(json.load(open('$OUT/eval/results.json'))['environment']['index'])")
ES_RERANK_INDEX=$EVAL_INDEX es-rerank tune --data "$DATA" --split train --depths 10,20,30 --apply \
  --out $OUT/tune-train-apply --no-progress
rm -f $OUT/tune-train-apply/*.run $OUT/tune-train-apply/qrels.trec $OUT/tune-train-apply/report.html  # 13 MB
es-rerank eval --data "$DATA" --split test --pipeline "$EVAL_INDEX" --out $OUT/eval-pipeline --no-progress

# the shared cross-encoder was trained on SciFact's train split, which flatters it there: the same
# grid again with 5-fold cross-validation on the test queries (each fold chosen on the others)
es-rerank tune --data "$DATA" --split test --folds 5 --depths 10,20,30,50 --out $OUT/tune-test-5fold --no-progress

if [ -z "${OPENSEARCH_URL:-}" ]; then
  es-rerank cluster start --engine opensearch
  OPENSEARCH_URL=http://127.0.0.1:9202
fi
ES_URL=$OPENSEARCH_URL es-rerank eval --data "$DATA" --split test --depth 50 --final-k 5 \
  --out $OUT/eval-opensearch --no-progress
