#!/usr/bin/env bash
# Reproduce results/scifact-test/: eval on both engines, the depth sweep, tune on the train
# split with the tuned setting evaluated on the test split, and tune cross-validated on test.
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
# tune on train (SciFact has no dev split), grid up to depth 50; then the chosen setting on test
es-rerank tune --data "$DATA" --split train --depths 10,20,30,50 --out $OUT/tune --no-progress
tuned=$(python -c "import json,sys; r=json.load(open('$OUT/tune/results.json'))['recommendation']; \
print(' '.join(r['cli_args']) if r['helps'] else '')")
if [ -n "$tuned" ]; then
  # shellcheck disable=SC2086 # the options as tune printed them
  es-rerank eval --data "$DATA" --split test --final-k 5 $tuned --out $OUT/eval-tuned --no-progress
else
  echo "tune: reranking does not help on the train split; keeping hybrid (nothing more to evaluate)"
fi

# the shared cross-encoder was trained on SciFact's train split, which flatters it there: the same
# grid again with 5-fold cross-validation on the test queries (each fold chosen on the others)
es-rerank tune --data "$DATA" --split test --folds 5 --depths 10,20,30,50 --out $OUT/tune-test-5fold --no-progress

if [ -z "${OPENSEARCH_URL:-}" ]; then
  es-rerank cluster start --engine opensearch
  OPENSEARCH_URL=http://127.0.0.1:9202
fi
ES_URL=$OPENSEARCH_URL es-rerank eval --data "$DATA" --split test --depth 50 --final-k 5 \
  --out $OUT/eval-opensearch --no-progress
