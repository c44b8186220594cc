#!/usr/bin/env bash
# Fine-tune a reranker on SciFact's train split and evaluate it on test; writes results/train/<variant>/.
#   scripts/train_scifact.sh ce       # (b) from the shared cross-encoder ../shared/models/minilm-l6-scifact-ce
#   scripts/train_scifact.sh encoder  # (a) from the packaged all-MiniLM-L6-v2 encoder (a new head)
#   scripts/train_scifact.sh synthetic  # no judgments: SYNTHETIC pseudo-queries (titles) from the corpus,
#                                       # from the packaged encoder like (a); the train qrels are never read
# The test split is held out by `train` (its queries and judged documents are never used).
# Capped by default for a 2-core CPU: MAX_TRAIN training queries (seeded subset), 1 epoch, and a quick
# test evaluation on the first EVAL_QUERIES queries at depth EVAL_DEPTH, then the whole test split.
# results/train/ came from MAX_TRAIN=all for both variants, on 2026-12-07.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:-ce}
PY=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data/scifact}
MAX_TRAIN=${MAX_TRAIN:-200}
EVAL_QUERIES=${EVAL_QUERIES:-100}
EVAL_DEPTH=${EVAL_DEPTH:-20}
case "$variant" in
  ce) base=../shared/models/minilm-l6-scifact-ce ;;
  encoder|synthetic) base=sentence-transformers/all-MiniLM-L6-v2 ;;
  *) echo "variant must be ce, encoder or synthetic, got $variant" >&2; exit 2 ;;
esac
out=results/train/$variant
model=${MODEL_DIR:-/tmp/es-rerank-train-$variant}
mkdir -p "$out"
cap=(); [ "$MAX_TRAIN" = all ] || cap=(--max-train-queries "$MAX_TRAIN")
# judged: the train split's qrels; synthetic: pseudo-queries for SYNTHETIC documents (the test split's
# judged documents are never sampled, as negatives or as dev candidates either)
source=(--split train "${cap[@]}")
[ "$variant" = synthetic ] && source=(--synthetic "${SYNTHETIC:-700}")
{
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
  echo "command: $0 $variant (MAX_TRAIN=$MAX_TRAIN SYNTHETIC=${SYNTHETIC:-700} EVAL_QUERIES=$EVAL_QUERIES EVAL_DEPTH=$EVAL_DEPTH)"
} > "$out/run.txt"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
/usr/bin/time -v "$PY" -m es_rerank train --data "$DATA" --base "$base" --out "$model" --overwrite \
  "${source[@]}" --dev-fraction 0.05 --depth 30 --epochs 1 2> >(tee "$out/train.log" >&2) | tee -a "$out/run.txt"
cp "$model/es-rerank-training.json" "$out/"
rerankers=("$model")
# an encoder with a new head scores nothing before training: only the shared cross-encoder has a "before"
[ "$variant" = ce ] && rerankers=("$base" "$model")
for reranker in "${rerankers[@]}"; do
  name=$([ "$reranker" = "$model" ] && echo trained || echo base)
  "$PY" -m es_rerank eval --data "$DATA" --split test --depth "$EVAL_DEPTH" --max-queries "$EVAL_QUERIES" \
    --reranker-model "$reranker" --no-progress --out "$out/eval-$name" | tee -a "$out/run.txt"
done
# the whole test split at the README's settings (depth 50, final_k 5), then tune cross-validated on
# test with the trained model (TUNE=0 skips it)
"$PY" -m es_rerank eval --data "$DATA" --split test --depth 50 --final-k 5 --reranker-model "$model" \
  --no-progress --out "$out/eval-test" | tee -a "$out/run.txt"
if [ "${TUNE:-1}" = 1 ]; then
  "$PY" -m es_rerank tune --data "$DATA" --split test --folds 5 --depths 10,20,30,50 --reranker-model "$model" \
    --no-progress --out "$out/tune-test-5fold" | tee -a "$out/run.txt"
  # keep hybrid, the held-out run and the runs of the settings the folds chose (the other cells': ~4 MB)
  "$PY" - "$out/tune-test-5fold" <<'PY'
import json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
report = json.loads((folder / "results.json").read_text())
keep = {"hybrid.run", "held-out.run"} | {f["chosen"]["label"].replace(" ", "_") + ".run" for f in report["kfold"]["folds"]}
for run in folder.glob("*.run"):
    if run.name not in keep:
        run.unlink()
PY
fi
