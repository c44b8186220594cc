#!/usr/bin/env bash
# Distill a 6-layer cross-encoder into 3 and 2 layers on SciFact, then measure each on the test split;
# writes results/distill/.
#   scripts/distill_scifact.sh            # teacher: the model scripts/train_scifact.sh ce wrote
#   LOSS=listnet OUT=results/distill/listnet TEACHER_EVAL=0 SPEED=0 scripts/distill_scifact.sh
#                                         # the listwise loss; the teacher's eval and the speed run are the same
# The students learn the teacher's scores on the hybrid candidates of QUERIES train-split questions (no
# judgments are read; test questions are never used). Then, on the whole test split at depth 50, final_k 5:
# nDCG@10 of teacher and students on openvino-int8 (ONNX_EVAL=1: the students on onnx fp32 too), and
# benchmarks/speed.py at depth 50: each student on openvino-int8 against the teacher's plain
# CrossEncoder.predict, in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data/scifact}
TEACHER=${TEACHER:-/tmp/es-rerank-train-ce}
QUERIES=${QUERIES:-200}
LAYERS=${LAYERS:-3 2}
WORK=${WORK:-/tmp/es-rerank-distill}
SPEED_QUERIES=${SPEED_QUERIES:-20}
LOSS=${LOSS:-mse}
EVAL_QUERIES=${EVAL_QUERIES:-all}
out=${OUT:-results/distill}
cap=(); [ "$EVAL_QUERIES" = all ] || cap=(--max-queries "$EVAL_QUERIES")
[ -f "$TEACHER/config.json" ] || { echo "no teacher at $TEACHER: run scripts/train_scifact.sh ce first, or set TEACHER" >&2; exit 2; }
mkdir -p "$out" "$WORK"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
{
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
  echo "command: $0 (TEACHER=$TEACHER QUERIES=$QUERIES LAYERS='$LAYERS' LOSS=$LOSS SPEED_QUERIES=$SPEED_QUERIES)"
} > "$out/run.txt"
# QUERIES train-split questions (seeded); the first 40 also calibrate openvino-int8
"$PY" - "$DATA" "$QUERIES" "$WORK/train-queries.txt" <<'PY'
import json, pathlib, random, sys
data, n, dest = pathlib.Path(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3])
train = {line.split("\t")[0] for line in (data / "qrels" / "train.tsv").read_text().splitlines()[1:] if line.strip()}
test = {line.split("\t")[0] for line in (data / "qrels" / "test.tsv").read_text().splitlines()[1:] if line.strip()}
texts = {q["_id"]: q["text"] for q in map(json.loads, (data / "queries.jsonl").read_text().splitlines()) if q["_id"] in train - test}
ids = sorted(texts)
random.Random(12).shuffle(ids)
dest.write_text("".join(texts[q].replace("\n", " ") + "\n" for q in ids[:n]))
PY
head -40 "$WORK/train-queries.txt" > "$WORK/calibration-queries.txt"
students=()
for n in $LAYERS; do
  student=$WORK/student-$n-$LOSS
  "$PY" -m es_rerank distill --data "$DATA" --teacher "$TEACHER" --layers "$n" --queries "$WORK/train-queries.txt" \
    --loss "$LOSS" --out "$student" --overwrite 2> >(tee "$out/distill-$n.log" >&2) | tee -a "$out/run.txt"
  cp "$student/es-rerank-training.json" "$out/student-$n-card.json"
  students+=("$student")
done
index=$(grep -o 'es-rerank-eval-[a-z0-9-]*' "$out/distill-${LAYERS%% *}.log" | head -1)
models=("${students[@]}"); [ "${TEACHER_EVAL:-1}" = 1 ] && models=("$TEACHER" "${models[@]}")
for model in "${models[@]}"; do
  name=$([ "$model" = "$TEACHER" ] && echo teacher || basename "$model" "-$LOSS")
  rm -rf "$model-ov"  # exported afresh, calibrated on the first 40 of the training questions
  "$PY" -m es_rerank export-onnx "$model" --index "$index" --out "$model-ov" --openvino --quantize int8 \
    --calibration-queries "$WORK/calibration-queries.txt" | tee -a "$out/run.txt"
  # onnx fp32 as well with ONNX_EVAL=1 (the teacher's is results/train/ce/eval-test)
  if [ "${ONNX_EVAL:-0}" = 1 ] && [ "$model" != "$TEACHER" ]; then
    "$PY" -m es_rerank eval --data "$DATA" --split test --depth 50 --final-k 5 --reranker-model "$model" \
      "${cap[@]}" --no-progress --out "$out/eval-$name-onnx" | tee -a "$out/run.txt"
  fi
  ES_RERANK_RERANKER_BACKEND=openvino-int8 "$PY" -m es_rerank eval --data "$DATA" --split test --depth 50 \
    --final-k 5 --reranker-model "$model-ov" "${cap[@]}" --no-progress --out "$out/eval-$name-openvino-int8" | tee -a "$out/run.txt"
done
[ "${SPEED:-1}" = 1 ] || exit 0
list=$(IFS=,; echo "${students[*]}")
exported=$(IFS=,; printf '%s-ov,' "${students[@]}"); exported=${exported%,}
"$PY" benchmarks/speed.py rerank --index "$index" --model "$TEACHER" --onnx-dir "$TEACHER-ov" --queries "$SPEED_QUERIES" \
  --depths 50 --backends plain,torch,openvino-int8 --students "$list" --student-onnx-dirs "$exported" --student-backends torch,openvino-int8 \
  --json "$out/speed.json" | tee "$out/speed.txt"
