#!/usr/bin/env bash
# Run the test suite. Installs the test extras first (torch, OpenVINO, eval, the llama.cpp
# server for the LLM tests). Uses ES_URL when set; otherwise the tests start (and stop) the
# project's local cluster themselves. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh offline,test,llm-server
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec .venv/bin/python -m pytest "$@"
