"""Metrics against small cases worked out by hand, and the BEIR loader's errors."""

import copy
import math

import pytest

from es_rerank.errors import InputError, ValidationError
from es_rerank.evaluate.data import load_beir
from es_rerank.evaluate.metrics import doc_scores, evaluate_run, percentiles
from es_rerank.evaluate.sweep import plateau_depth

QRELS = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 1}, "q3": {"d9": 1}}
RUN = {"q1": doc_scores(["d1", "dx", "d2"]), "q2": doc_scores(["dy", "d3"]), "q3": {}}


def test_metrics_by_hand():
    m = evaluate_run(QRELS, RUN, ["recall@1", "recall@3", "hit_rate@1", "mrr@10", "ndcg@10"])
    assert m["recall@1"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert m["recall@3"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["hit_rate@1"] == pytest.approx(1 / 3)
    assert m["mrr@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_q2 = (1 / math.log2(3)) / 1
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + 0) / 3)


def test_query_missing_from_run_counts_as_zero():
    m = evaluate_run(QRELS, {"q1": RUN["q1"]}, ["recall@3"])
    assert m["recall@3"] == pytest.approx(1 / 3)


def test_metrics_never_mutate_inputs():
    qrels, run = copy.deepcopy(QRELS), copy.deepcopy(RUN)
    evaluate_run(qrels, run, ["ndcg@10"])
    assert qrels == QRELS and run == RUN


def test_doc_rank_is_best_chunk():
    assert doc_scores(["d2", "d1", "d2", "d3"]) == {"d2": 3.0, "d1": 2.0, "d3": 1.0}
    assert doc_scores([]) == {}


@pytest.mark.parametrize("qrels,run,match", [
    ({}, {}, "qrels is empty"),
    ({"q": {"d": 1}}, {"q": ["d"]}, r"run\['q'\] must map doc ids to scores"),
])
def test_evaluate_rejects_bad_input(qrels, run, match):
    with pytest.raises(ValidationError, match=match):
        evaluate_run(qrels, run, ["recall@1"])


def test_percentiles():
    p = percentiles([10.0, 20.0, 30.0, 40.0])
    assert p["p50"] == 25.0 and p["p95"] == pytest.approx(38.5) and p["mean"] == 25.0
    assert percentiles([]) == {"p50": 0.0, "p95": 0.0, "mean": 0.0}


@pytest.mark.parametrize("recalls,tol,expected", [
    ([0.70, 0.745, 0.75], 0.01, 50), ([0.70, 0.745, 0.75], 0.001, 100), ([0.8, 0.7, 0.6], 0.0, 20)])
def test_plateau(recalls, tol, expected):
    assert plateau_depth([20, 50, 100], recalls, tol) == expected


def _beir(tmp_path, qrels_lines, queries=('{"_id": "q1", "text": "a"}',), corpus=('{"_id": "d1", "text": "x"}',)):
    (tmp_path / "qrels").mkdir(exist_ok=True)
    (tmp_path / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (tmp_path / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(l + "\n" for l in qrels_lines))
    return tmp_path


def test_load_beir_counts_unknown_ids(tmp_path):
    root = _beir(tmp_path, ["q1\td1\t1", "q1\tmissing-doc\t1", "q404\td1\t1"])
    data = load_beir(root, "test")
    assert data.queries == {"q1": "a"} and data.qrels == {"q1": {"d1": 1, "missing-doc": 1}}
    assert data.unknown_query_ids == ("q404",) and data.unknown_doc_ids == ("missing-doc",)


def test_load_beir_missing_file(tmp_path):
    _beir(tmp_path, ["q1\td1\t1"])
    with pytest.raises(InputError, match=r"qrels/dev.tsv: missing"):
        load_beir(tmp_path, "dev")


def test_load_beir_empty_split(tmp_path):
    root = _beir(tmp_path, [])
    with pytest.raises(InputError, match="no judged query of split 'test'"):
        load_beir(root, "test")


def test_load_beir_bad_qrels_line(tmp_path):
    root = _beir(tmp_path, ["q1\td1"])
    with pytest.raises(InputError, match=r"test.tsv:2: expected 3 tab-separated columns"):
        load_beir(root, "test")


from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

doc_ids = st.sampled_from([f"d{i}" for i in range(8)])
rankings = st.lists(doc_ids, max_size=12)
qrel_sets = st.dictionaries(doc_ids, st.integers(1, 2), min_size=1, max_size=4)


@hsettings(deadline=None, max_examples=60)
@given(st.dictionaries(st.sampled_from(["q1", "q2", "q3"]), st.tuples(qrel_sets, rankings), min_size=1))
def test_metric_properties(cases):
    qrels = {q: rel for q, (rel, _) in cases.items()}
    run = {q: doc_scores(ranking) for q, (_, ranking) in cases.items()}
    snapshot = copy.deepcopy((qrels, run))
    m = evaluate_run(qrels, run, ["recall@1", "recall@3", "recall@10", "ndcg@10", "mrr@10", "hit_rate@10"])
    assert (qrels, run) == snapshot  # inputs untouched
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in m.values())
    assert m["recall@1"] <= m["recall@3"] + 1e-12 <= m["recall@10"] + 2e-12  # recall grows with k
    assert m["recall@10"] <= m["hit_rate@10"] + 1e-12


@pytest.mark.parametrize("target,content,message", [
    ("corpus.jsonl", '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n', r"corpus.jsonl:2: invalid JSON"),
    ("corpus.jsonl", '{"_id": "d1", "text": "ok"}\n["not", "an object"]\n', r"corpus.jsonl:2: expected a JSON object"),
    ("queries.jsonl", '{"_id": "q1", "text": "fine"}\n{"_id": "q2"}\n', r"queries.jsonl:2: expected an object"),
    ("queries.jsonl", b'{"_id": "q1", "text": "caf\xe9"}\n', r"queries.jsonl:1: not valid UTF-8"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\n", r"test.tsv:2: expected 3 tab-separated columns"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n", r"test.tsv:2: score must be an integer"),
])
def test_malformed_beir_files_name_the_line(tmp_path, target, content, message):
    from es_rerank.errors import InputError
    from es_rerank.evaluate.data import load_beir

    (tmp_path / "qrels").mkdir()
    files = {"corpus.jsonl": '{"_id": "d1", "text": "ok"}\n',
             "queries.jsonl": '{"_id": "q1", "text": "question"}\n',
             "qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    path = tmp_path / target
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message):
        load_beir(tmp_path, "test")


def test_beir_with_byte_order_marks_loads(tmp_path):
    from es_rerank.evaluate.data import load_beir

    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_bytes(b'\xef\xbb\xbf{"_id": "d1", "text": "ok"}\n')
    (tmp_path / "queries.jsonl").write_bytes(b'\xef\xbb\xbf{"_id": "q1", "text": "question"}\n')
    (tmp_path / "qrels" / "test.tsv").write_bytes(b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\nq1\td1\t1\n")
    data = load_beir(tmp_path, "test")
    assert data.queries == {"q1": "question"} and data.qrels == {"q1": {"d1": 1}}


def test_metric_names_for_any_depth():
    from es_rerank.evaluate.metrics import metric_names

    assert metric_names([1, 3, 5], final_k=5, depth=5) == ["recall@1", "recall@3", "recall@5", "hit_rate@5",
                                                           "ndcg@10", "mrr@10"]
    assert "hit_rate@8" in metric_names([1, 3, 5, 8], final_k=5, depth=8)
