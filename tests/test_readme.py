"""The README's commands run exactly as typed, in order, against a real cluster.

The fenced ``bash`` blocks of the Quick start, Indexing, Querying and Managing indices
sections are joined into one shell script and run from the repository root. A block
preceded by ``<!-- readme-test: skip (reason) -->`` is left out (it needs the model hub, an
LLM server or a collection of your own), and the test lists which were.

The client examples of "Serving it over HTTP" (Python, JavaScript with Node where Node and
npm are present, curl) run against a real ``es-rerank serve`` in front of the test cluster,
with only the server's address and the index name changed.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, SAMPLE

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
def clean(engine, node):
    from conftest import drop

    names = ("help-centre", "help-extra")
    for name in names:
        drop(engine, name)
    # the quick start's tune builds the question set's evaluation index: drop the one it adds
    evals = "es-rerank-eval-help-centre-questions-*"
    before = set(node.indices(evals))
    yield
    for name in names:
        drop(engine, name)
    for index in set(node.indices(evals)) - before:
        drop(engine, re.sub(r"-\d{8}t\d{6}-[0-9a-f]{4}$", "", index))


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
    assert "applied to help-centre" in out and "[done] quick start in" in out  # the loop, phase by phase
    assert "deleted help-extra-" in out and "faq-family: 1 chunk deleted" in out


# -- the client examples of "Serving it over HTTP", run against es-rerank serve ----------------------

SERVE_SECTION = "Serving it over HTTP"
NODE_CLIENT = "@elastic/elasticsearch@9.4.3"  # the README's version: 9.5 needs Node 22


def fenced(text: str, section: str, lang: str) -> list[str]:
    """The ``lang`` code blocks of one README section, in order."""
    part = next(p for p in re.split(r"^## ", text, flags=re.M) if p.startswith(section + "\n"))
    return re.findall(rf"```{lang}\n(.*?)```", part, flags=re.S)


def as_pasted(code: str, url: str, index: str) -> str:
    """The snippet with only the server's address and the index name changed (each must be there)."""
    host = url.removeprefix("http://")
    assert "127.0.0.1:9201" in code or "localhost:9201" in code, code
    assert "help-centre" in code, code
    return code.replace("127.0.0.1:9201", host).replace("localhost:9201", host).replace("help-centre", index)


@pytest.fixture(scope="module")
def served(es_url, engine, embedder, reranker, embedding_model_path, cross_encoder_path):
    """es-rerank serve in front of the test cluster, with the help-centre articles in a uuid-named index."""
    import uuid

    from conftest import BACKEND, drop
    from es_rerank.config import Settings
    from es_rerank.indexing import index_paths
    from es_rerank.server import ServerThread, create_app

    name = f"test-readme-{uuid.uuid4().hex[:10]}"
    report = index_paths(engine, [str(SAMPLE)], settings=Settings(index=name), embedder=embedder)
    assert report.documents_indexed == 32 and not report.rejected
    settings = Settings(url=es_url, index=name, embedding_model=embedding_model_path,
                        reranker_model=cross_encoder_path, device="cpu", reranker_backend=BACKEND,
                        embedding_backend=BACKEND)
    app = create_app(settings, embedder=embedder, rerankers={"cross-encoder": reranker})
    try:
        with ServerThread(app) as running:
            yield running.url, name, settings
    finally:
        drop(engine, name)


def printed_hits(out: str) -> list[tuple[float, str]]:
    """(score, doc id) of each ``score  doc_id  title`` line the examples print."""
    rows = [line.split(maxsplit=2) for line in out.splitlines() if line.strip()]
    return [(float(r[0]), r[1]) for r in rows]


def test_the_python_client_example_prints_the_reranked_hits(served, engine, embedder, reranker):
    from es_rerank.client import Searcher

    url, index, settings = served
    (code,) = fenced((ROOT / "README.md").read_text(), SERVE_SECTION, "python")
    env = {k: v for k, v in os.environ.items() if k != "ES_API_KEY"}
    done = subprocess.run([sys.executable, "-c", as_pasted(code, url, index)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    hits = printed_hits(done.stdout)
    with Searcher(settings, engine=engine, embedder=embedder, reranker=reranker) as searcher:
        expected = searcher.search("refund for a double charge", depth=50, final_k=3)
    assert [doc_id for _, doc_id in hits] == [h.doc_id for h in expected.hits], done.stdout
    assert [s for s, _ in hits] == [round(h.score, 3) for h in expected.hits], done.stdout


@pytest.fixture(scope="module")
def node_client(tmp_path_factory):
    """A folder with the README's Node client installed from the npm registry (skips without Node or npm)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"the JavaScript example needs Node and npm on PATH (node: {node}, npm: {npm})")
    folder = tmp_path_factory.mktemp("node-client")
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), NODE_CLIENT],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"npm could not install {NODE_CLIENT} (no registry here?): {why}")
    return node, folder


def test_the_javascript_example_runs_with_node_and_prints_hits(served, node_client):
    node, folder = node_client
    url, index, _ = served
    (code,) = fenced((ROOT / "README.md").read_text(), SERVE_SECTION, "js")
    script = folder / "search.mjs"  # the file name the README gives: an ES module
    script.write_text(as_pasted(code, url, index))
    env = {k: v for k, v in os.environ.items() if k != "ES_API_KEY"}
    done = subprocess.run([node, script.name], cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    hits = printed_hits(done.stdout)
    ids = {json.loads(line)["id"] for line in SAMPLE.read_text().splitlines() if line.strip()}
    assert len(hits) == 3 and {doc_id for _, doc_id in hits} <= ids, done.stdout
    assert [s for s, _ in hits] == sorted((s for s, _ in hits), reverse=True), done.stdout


def test_the_curl_examples_answer(served):
    url, index, _ = served
    run, skipped = readme_blocks((ROOT / "README.md").read_text(), sections=(SERVE_SECTION,))
    assert skipped and len(run) == 1, (run, skipped)  # the serve commands are skipped; the curl block runs
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + as_pasted(run[0], url, index)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    decoder, text, answers = json.JSONDecoder(), done.stdout, []
    while text.strip():
        answer, end = decoder.raw_decode(text.strip())
        answers.append(answer)
        text = text.strip()[end:]
    banner, search, rerank = answers
    assert banner["version"]["number"] and banner["tagline"] == "You Know, for Search"
    assert len(search["hits"]["hits"]) == 3 and search["es_rerank"]["reranked"] is True
    assert [r["index"] for r in rerank["rerank"]] and rerank["rerank"][0]["text"]
