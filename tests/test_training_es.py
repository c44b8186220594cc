"""`es-rerank train` and `distill` against the real cluster, with real models and a SciFact slice.

The slice: 16 judged train queries, 4 judged test queries, their documents and 40 others.
Training runs are a few steps with pairs cut at 128 tokens: the same trainer, loss, early
stopping and folder writing as a full run, at a cost the shared cores can carry.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from es_rerank.cli import cli
from es_rerank.errors import ModelError
from es_rerank.types import Hit

from conftest import ROOT, SCIFACT

pytestmark = pytest.mark.es
pytest.importorskip("datasets", reason="pip install -e '.[train]'")

SHARED_CE = ROOT.parent / "shared" / "models" / "minilm-l6-scifact-ce"
N_TRAIN, N_TEST, N_EXTRA = 16, 4, 40
FOLDER = "train-slice"
# small and fast: 128-token pairs, 10 candidates, 8 queries are enough for these runs
FAST = ["--depth", "10", "--max-length", "128", "--batch-size", "4", "--min-queries", "8", "--dev-fraction", "0.25",
        "--no-progress"]


def _qrels(split):
    lines = (SCIFACT / "qrels" / f"{split}.tsv").read_text().splitlines()
    return [l.split("\t") for l in lines[1:] if l.strip()]


def _write_slice(root: Path) -> Path:
    train, test = _qrels("train"), _qrels("test")
    tq = list(dict.fromkeys(q for q, _, _ in train))[:N_TRAIN]
    sq = list(dict.fromkeys(q for q, _, _ in test))[:N_TEST]
    train, test = [r for r in train if r[0] in tq], [r for r in test if r[0] in sq]
    wanted = {d for _, d, _ in train + test}
    corpus = []
    with open(SCIFACT / "corpus.jsonl") as fh:
        for line in fh:
            if json.loads(line)["_id"] in wanted or len(corpus) < N_EXTRA:
                corpus.append(line)
    queries = [l for l in open(SCIFACT / "queries.jsonl") if json.loads(l)["_id"] in set(tq) | set(sq)]
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(corpus))
    (root / "queries.jsonl").write_text("".join(queries))
    for name, rows in (("train", train), ("test", test)):
        (root / "qrels" / f"{name}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT} (see ../shared/data/README.md)")
    return _write_slice(tmp_path_factory.mktemp("t") / FOLDER)


@pytest.fixture(scope="module", autouse=True)
def drop_eval_indices(engine):
    yield
    from es_rerank.lifecycle import delete, list_owned

    for info in list_owned(engine):
        if info.name.startswith(f"es-rerank-eval-{FOLDER}"):
            delete(engine, info.name)


@pytest.fixture(scope="module")
def env(es_url, embedding_model_path):
    return {"ES_URL": es_url, "ES_RERANK_EMBEDDING_MODEL": embedding_model_path, "ES_RERANK_DEVICE": "cpu",
            "ES_RERANK_EMBEDDING_BACKEND": "onnx", "HF_HUB_OFFLINE": "1"}


def _run(env, *args):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(data, env, tmp_path_factory):
    """One end-to-end run from the shared cross-encoder: (folder, CLI output)."""
    if not SHARED_CE.is_dir():
        pytest.skip(f"{SHARED_CE} not found")
    out = tmp_path_factory.mktemp("m") / "model"
    r = _run(env, "train", "--data", str(data), "--base", str(SHARED_CE), "--out", str(out), "--eval-steps", "3",
             "--max-steps", "3", *FAST)
    assert r.exit_code == 0, r.output
    return out, r.output


@pytest.fixture(scope="module")
def searcher(data, env, engine, embedder, trained):
    """A searcher over the slice's evaluation index (built by the training run)."""
    from es_rerank.client import Searcher
    from es_rerank.config import Settings
    from es_rerank.evaluate.data import BeirData
    from es_rerank.evaluate.prepare import prepare_index

    s = Settings(url=env["ES_URL"], embedding_model=env["ES_RERANK_EMBEDDING_MODEL"], reranker="none")
    prepared = prepare_index(engine, BeirData(data, "corpus", {}, {}), s, embedder)
    assert not prepared.built, "train should have built the evaluation index that eval uses"
    with Searcher(s.replace(index=prepared.name), engine=engine, embedder=embedder) as searcher:
        yield searcher


# -- end to end -----------------------------------------------------------------------------------

def test_train_writes_a_model_that_scores_on_onnx_and_torch(trained):
    from es_rerank.runtime import load_cross_encoder

    out, output = trained
    assert f"wrote {out}" in output and "dev nDCG@10 over 4 queries: hybrid" in output
    card = json.loads((out / "es-rerank-training.json").read_text())
    assert card["base"] == str(SHARED_CE)
    assert card["data"]["train_queries"] == 12 and card["data"]["dev_queries"] == 4
    assert card["data"]["held_out_split"] == "test" and card["data"]["held_out_queries"] == N_TEST
    assert len(card["data"]["fingerprint"]) == 16
    assert card["config"]["loss"] == "mnrl" and card["config"]["seed"] == 12
    assert {"hybrid", "base", "trained", "trained_vs_hybrid"} <= set(card["dev"])
    assert card["training"]["steps"] >= 1 and card["training"]["dev_history"]
    assert "# fine-tuned" in (out / "README.md").read_text()
    assert not (out / "checkpoints").exists()
    pairs = [("vitamin D lowers the risk of falls", "Vitamin D supplementation and falls in older adults"),
             ("vitamin D lowers the risk of falls", "Quarterly stock market returns")]
    onnx = load_cross_encoder(str(out), backend="onnx").score_pairs(pairs)
    torch_scores = load_cross_encoder(str(out), backend="torch", device="cpu").score_pairs(pairs)
    assert abs(onnx - torch_scores).max() < 1e-3
    assert onnx[0] != onnx[1]


def test_training_changed_the_weights(trained):
    from safetensors.numpy import load_file

    out, _ = trained
    new, old = load_file(out / "model.safetensors"), load_file(SHARED_CE / "model.safetensors")
    changed = [k for k in old if k in new and old[k].shape == new[k].shape and abs(old[k] - new[k]).max() > 0]
    assert changed, "three training steps (the first a warm-up at learning rate 0) should move the weights"


# -- negatives and the split discipline -------------------------------------------------------------

def test_training_progress_shows_each_reported_step_once_with_its_loss_and_dev_score():
    """The trainer reports a step's loss and dev score after its step-end event: one line per step, complete."""
    from transformers import TrainerState

    from es_rerank.training.trainer import _ProgressCallback

    shown = []
    callback = _ProgressCallback(shown.append, "eval_ndcg")
    state = TrainerState(max_steps=4)
    for step in range(1, 5):  # the event order of transformers' Trainer
        callback.on_step_begin(None, state, None)
        state.global_step = step
        callback.on_step_end(None, state, None)
        if step % 2 == 0:
            callback.on_log(None, state, None, logs={"loss": 1.0 / step})
        if step == 4:
            callback.on_evaluate(None, state, None, metrics={"eval_ndcg": 0.5})
    callback.on_train_end(None, state, None)
    assert [(p.step, p.loss, p.dev, p.best) for p in shown] == [
        (1, None, None, None), (2, 0.5, None, None), (3, 0.5, None, None), (4, 0.25, 0.5, 0.5)]
    assert shown[-1].eta_s == 0


def test_hard_negatives_skip_positives_top_ranks_and_held_out_documents():
    from es_rerank.training.data import hard_negatives

    hits = [Hit(d, d, 0, "", "", {}, 1.0, r) for r, d in enumerate(["p1", "a", "b", "p2", "c", "t1", "d"], 1)]
    got = [h.doc_id for h in hard_negatives(hits, {"p1": 1, "p2": 2, "b": 0}, skip_top=2, count=10, exclude={"t1"})]
    assert got == ["b", "c", "d"]  # judged non-relevant (grade 0) is a fine negative


def test_mining_from_the_index_never_returns_a_judged_positive(searcher, data):
    from es_rerank.evaluate.data import load_beir
    from es_rerank.training.data import documents_in_order, hard_negatives

    train = load_beir(data, "train", check_corpus=False)
    seen = 0
    for q, text in train.queries.items():
        candidates = documents_in_order(searcher.retrieve(text, depth=30).hits)
        positives = {d for d, g in train.qrels[q].items() if g > 0}
        assert positives & {h.doc_id for h in candidates}, "the slice's positives should be retrievable"
        negs = hard_negatives(candidates, train.qrels[q], skip_top=0, count=30)
        assert not positives & {h.doc_id for h in negs}
        seen += len(negs)
    assert seen > 0


def test_test_queries_and_their_documents_never_reach_training_or_early_stopping(searcher, data):
    from es_rerank.evaluate.data import load_beir
    from es_rerank.training import Split
    from es_rerank.training.prepare import judged

    train, test = Split.of(load_beir(data, "train", check_corpus=False)), Split.of(load_beir(data, "test",
                                                                                                check_corpus=False))
    test_docs = {d for q in test.qrels for d in test.qrels[q]}
    prepared = judged(searcher, train, holdout=test, depth=10, skip_top=0, negatives=9, min_queries=8,
                      dev_fraction=0.25, seed=12)
    used = {g.positive_id for g in prepared.groups} | {d for g in prepared.groups for d in g.negative_ids}
    dev_candidates = {d for q in prepared.dev for d in q.candidate_ids}
    train_ids, dev_ids = {g.query_id for g in prepared.groups}, {q.query_id for q in prepared.dev}
    assert not (train_ids | dev_ids) & set(test.queries)
    assert not train_ids & dev_ids
    assert not used & test_docs and not dev_candidates & test_docs
    # the check can fail: without the held-out split the test documents do come up as candidates
    loose = judged(searcher, train, depth=10, skip_top=0, negatives=9, min_queries=8, dev_fraction=0.25, seed=12)
    assert ({d for g in loose.groups for d in g.negative_ids} | {d for q in loose.dev for d in q.candidate_ids}) \
        & test_docs


# -- refusals (each before any model loads) ------------------------------------------------------------

def _refused(env, *args, match):
    r = CliRunner().invoke(cli, ["train", *args], env=env, catch_exceptions=False)
    assert r.exit_code != 0
    import re

    assert re.search(match, r.output), r.output
    return r


def test_refuses_an_existing_output_folder(data, env, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    _refused(env, "--data", str(data), "--out", str(out), *FAST, match=r"output folder .*exists: pass --overwrite")


def test_refuses_too_few_judged_queries(data, env, tmp_path, trained):
    from es_rerank.errors import TrainingRefusedError
    from es_rerank.training.data import check_disjoint

    out = tmp_path / "m"
    _refused(env, "--data", str(data), "--out", str(out), *FAST, "--min-queries", "50",
             match=r"has 12 judged queries left for training; at least 50 are needed")
    assert not out.exists()
    with pytest.raises(TrainingRefusedError, match=r"dev split 'd' shares 1 queries with train split 't' \(q2\)"):
        check_disjoint("train split 't'", ["q1", "q2"], "dev split 'd'", ["q2", "q3"])


def test_refuses_judged_split_options_with_synthetic(data, env, tmp_path):
    """--synthetic reads no qrels: a --split next to it would silently be ignored, so it is refused."""
    out = tmp_path / "m"
    _refused(env, "--data", str(data), "--synthetic", "20", "--split", "train", "--dev-split", "dev", "--out",
             str(out), *FAST, match=r"--split, --dev-split choose judged queries, and --synthetic trains on "
                                    r"pseudo-queries only")
    assert not out.exists()
    _refused(env, "--data", str(data), "--query-generator", "llm", "--out", str(out), *FAST,
             match=r"--query-generator llm writes the pseudo-queries of --synthetic N: give --synthetic")
    assert not out.exists()


def test_refuses_a_dev_split_that_overlaps_train(data, env, tmp_path):
    (data / "qrels" / "dev.tsv").write_text("\n".join((data / "qrels" / "train.tsv").read_text().splitlines()[:4]))
    try:
        _refused(env, "--data", str(data), "--dev-split", "dev", "--out", str(tmp_path / "m"), *FAST,
                 match=r"dev split 'dev' shares \d+ queries with train split 'train'")
    finally:
        (data / "qrels" / "dev.tsv").unlink()


def test_refuses_qrels_naming_documents_missing_from_the_index(data, env, tmp_path, searcher):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("corpus.jsonl", "queries.jsonl"):
        (bad / name).write_text((data / name).read_text())
    (bad / "qrels").mkdir()
    train = (data / "qrels" / "train.tsv").read_text()
    first_query = train.splitlines()[1].split("\t")[0]
    (bad / "qrels" / "train.tsv").write_text(train + f"{first_query}\tno-such-doc\t1\n")
    _refused({**env, "ES_RERANK_INDEX": searcher.settings.index}, "--data", str(bad), "--use-index",
             "--out", str(tmp_path / "m"), *FAST,
             match=r"the qrels name 1 judged documents missing from index .*\(no-such-doc\)")


def test_refuses_a_train_split_that_overlaps_the_held_out_split(data, env, tmp_path):
    bad = tmp_path / FOLDER
    bad.mkdir()
    for name in ("corpus.jsonl", "queries.jsonl"):
        (bad / name).write_text((data / name).read_text())
    (bad / "qrels").mkdir()
    test = (data / "qrels" / "test.tsv").read_text()
    (bad / "qrels" / "test.tsv").write_text(test)
    (bad / "qrels" / "train.tsv").write_text((data / "qrels" / "train.tsv").read_text() + test.splitlines()[1] + "\n")
    _refused(env, "--data", str(bad), "--out", str(tmp_path / "m"), *FAST,
             match=r"train split 'train' shares 1 queries with held-out split 'test'")


# -- a killed run ---------------------------------------------------------------------------------------

def test_a_killed_run_leaves_no_model_folder_that_loads(data, env, tmp_path, trained):
    from es_rerank.runtime import load_cross_encoder

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "es_rerank", "train", "--data", str(data), "--base", str(SHARED_CE), "--out", str(out),
           "--epochs", "50", "--eval-steps", "1000", *FAST[:-1], "--progress"]
    log = tmp_path / "log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 240
        while b"step " not in log.read_bytes():  # training has begun
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "training did not start in 240 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    with pytest.raises(ModelError, match="not found"):
        load_cross_encoder(str(out), backend="onnx")
    leftovers = list(tmp_path.glob(".killed.partial-*"))
    assert leftovers, "the run was writing into a hidden partial folder"


# -- synthetic and distill -----------------------------------------------------------------------------

def test_synthetic_training_counts_what_it_dropped(data, env, tmp_path, trained):
    out = tmp_path / "syn"
    r = _run(env, "train", "--data", str(data), "--synthetic", "20", "--base", str(SHARED_CE), "--out", str(out),
             "--max-steps", "1", "--eval-steps", "1", *FAST)
    assert r.exit_code == 0, r.output
    card = json.loads((out / "es-rerank-training.json").read_text())["data"]
    assert card["sampled"] == 20
    assert card["kept"] + card["dropped_empty"] + card["dropped_not_retrieved"] + card["dropped_no_negatives"] == 20
    assert f"{card['kept']} of 20 pseudo-queries kept" in r.output


@pytest.mark.parametrize("loss", ["mse", "listnet"])
def test_distill_reports_fidelity_and_speed_and_loads(data, env, tmp_path, trained, loss):
    from es_rerank.runtime import load_cross_encoder

    out = tmp_path / "student"
    r = _run(env, "distill", "--teacher", str(SHARED_CE), "--layers", "2", "--synthetic", "12", "--data", str(data),
             "--out", str(out), "--depth", "8", "--max-length", "64", "--loss", loss, "--no-progress")
    assert r.exit_code == 0, r.output
    card = json.loads((out / "es-rerank-training.json").read_text())
    assert card["config"]["loss"] == loss and card["training"]["steps"] >= 1
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert -1 <= card["fidelity"]["spearman_mean"] <= 1 and 0 <= card["fidelity"]["top5_overlap_mean"] <= 1
    assert card["speed"]["depth"] == 50 and card["speed"]["speedup"] > 0
    assert "fidelity on" in r.output and "x)" in r.output
    assert len(load_cross_encoder(str(out), backend="onnx").score_pairs([("a query", "a passage")])) == 1


def test_train_apply_promotes_only_a_winner_unless_forced(data, env, tmp_path, trained, engine, node, make_index,
                                                          index_name):
    """--apply compares the trained model with the index's pipeline on the dev questions; a tie is no win."""
    import uuid

    from es_rerank import pipelines

    from conftest import SAMPLE, drop

    make_index(index_name, SAMPLE)
    decoy = f"test-decoy-{uuid.uuid4().hex[:8]}"
    make_index(decoy, SAMPLE)
    decoy_meta = node.meta(node.alias_targets(decoy)[0])
    current = pipelines.apply(engine, index_name, pipelines.make(
        reranker="cross-encoder", model=str(SHARED_CE), backend="onnx", depth=10, final_k=3)).pipeline
    run_env = {**env, "ES_RERANK_INDEX": index_name, "ES_RERANK_RERANKER": "", "ES_RERANK_RERANKER_MODEL": "",
               "ES_RERANK_RERANKER_BACKEND": "", "ES_RERANK_DEPTH": "", "ES_RERANK_FINAL_K": "", "ES_RERANK_BLEND": "",
               "ES_RERANK_BLEND_WEIGHT": ""}
    # a learning rate too small to move the weights: the trained model ties the pipeline's own model
    args = ["train", "--data", str(data), "--base", str(SHARED_CE), "--max-steps", "1", "--learning-rate", "1e-12",
            "--apply", *FAST]
    try:
        r = _run(run_env, *args, "--out", str(tmp_path / "tie"))
        assert r.exit_code == 1, r.output
        assert "not a win" in r.output and "not applied" in r.output and "--force" in r.output
        assert (tmp_path / "tie" / "config.json").is_file()  # the model is written either way
        assert pipelines.read(engine, index_name).pipeline == current

        r = _run(run_env, *args, "--out", str(tmp_path / "forced"), "--force")
        assert r.exit_code == 0, r.output
        assert f"applied to {index_name}" in r.output and "not a win" in r.output
        stored = pipelines.read(engine, index_name)
        p = stored.pipeline
        assert p.how == "train" and p.model == str((tmp_path / "forced").resolve()) and p.model_fingerprint
        assert (p.depth, p.final_k, p.blend) == (10, 3, "none") and stored.history[0] == current
        ev = p.evidence
        assert ev["against_current"]["pipeline"] == current.label() and not ev["against_current"]["better"]
        assert ev["questions"]["queries"] == 4 and ev["questions"]["split"] == "held-out slice of train"
        assert set(ev["metrics"]) == {"ndcg@10", "recall@10"}
        out = CliRunner().invoke(cli, ["pipeline", "show"], env=run_env)
        assert out.exit_code == 0 and f"against {current.label()}" in out.output, out.output
    finally:
        assert node.meta(node.alias_targets(decoy)[0]) == decoy_meta, "the decoy's marker was touched"
        drop(engine, decoy)
