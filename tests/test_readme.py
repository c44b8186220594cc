"""The README's commands run exactly as typed, in order, against a real cluster.

The fenced ``bash`` blocks of the Quick start, Indexing, Querying and Managing indices
sections are joined into one shell script and run from the repository root. A block
preceded by ``<!-- readme-test: skip (reason) -->`` is left out (it needs the model hub, an
LLM server or a collection of your own), and the test lists which were.
"""

import os
import re
import subprocess

import pytest

from conftest import ROOT

pytestmark = pytest.mark.es

SECTIONS = ("Quick start", "Indexing", "Querying", "Managing indices")
OFFLINE_MODEL = ROOT.parent / "shared" / "models" / "minilm-l6-scifact-ce"


def readme_blocks(text: str, sections=SECTIONS) -> tuple[list[str], list[str]]:
    """(blocks to run, reasons of the blocks skipped), in README order."""
    run, skipped = [], []
    parts = re.split(r"^## ", text, flags=re.M)
    for part in parts[1:]:
        title, _, body = part.partition("\n")
        if title.strip() not in sections:
            continue
        for m in re.finditer(r"(?:<!-- readme-test: skip \((?P<why>[^)]*)\) -->\n)?```bash\n(?P<code>.*?)```",
                             body, flags=re.S):
            if m.group("why"):
                skipped.append(m.group("why"))
            else:
                run.append(m.group("code"))
    return run, skipped


def test_the_extraction_finds_the_commands():
    run, skipped = readme_blocks((ROOT / "README.md").read_text())
    code = "\n".join(run)
    assert "scripts/quickstart.sh" in code and "es-rerank index examples/help-centre.jsonl" in code
    assert "es-rerank query" in code and "es-rerank indices" in code
    assert skipped  # the hub-only quick start is skipped, and said so


@pytest.fixture
def clean(engine):
    from conftest import drop

    names = ("help-centre", "help-extra")
    for name in names:
        drop(engine, name)
    yield
    for name in names:
        drop(engine, name)


def test_readme_commands_run_as_typed(es_url, clean):
    if not OFFLINE_MODEL.is_dir():
        pytest.skip(f"the offline cross-encoder the README names is not at {OFFLINE_MODEL}")
    run, skipped = readme_blocks((ROOT / "README.md").read_text())
    script = "set -euo pipefail\n" + "\n".join(run)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_RERANK_")}
    env.update(ES_URL=es_url, HF_HUB_OFFLINE="1", PATH=f"{ROOT / '.venv' / 'bin'}:{env['PATH']}")
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "32 documents read, 32 indexed" in out
    assert "3 results from" in out and "reranked by cross-encoder" in out
    assert "deleted help-extra-" in out and "faq-family: 1 chunks deleted" in out
