"""Inference sessions: run a model file on numpy feeds with ONNX Runtime or OpenVINO.

A session knows nothing of tokens or heads; it maps a feed (``input_ids``, ``attention_mask``,
``token_type_ids`` as int64 arrays) to the model's first output. Both are safe to share
between threads: ONNX Runtime's ``run`` is; OpenVINO gets one infer request per thread.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import ModelError

logger = logging.getLogger(__name__)

Feed = Mapping[str, np.ndarray]


def _onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ModelError("the ONNX backends need onnxruntime: pip install onnxruntime") from e
    return ort


def _options(threads: int | None):
    """One intra-op pool sized to the cores, no inter-op pool (the graph is sequential)."""
    ort = _onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


class OnnxSession:
    """ONNX Runtime on the CPU: one intra-op pool sized to the cores, no inter-op pool.

    Args:
        model: Path of an ``.onnx`` file, or the serialized model as bytes.
        threads: Intra-op threads. Defaults to the number of cores.
    """

    parallel_batches = 1

    def __init__(self, model: str | Path | bytes, *, threads: int | None = None):
        ort = _onnxruntime()
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(source, _options(threads), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._session.get_inputs()]

    @classmethod
    def from_bert_weights(cls, folder: str | Path, *, kind: str, threads: int | None = None) -> "OnnxSession":
        """A session on a BERT folder's safetensors weights, its graph built in memory (no torch, no file)."""
        from .bert_onnx import open_bert_session

        self = cls.__new__(cls)
        self._session = open_bert_session(folder, kind=kind, options=_options(threads))
        self.input_names = [i.name for i in self._session.get_inputs()]
        return self

    def run(self, feed: Feed) -> np.ndarray:
        return self._session.run(None, dict(feed))[0]

    def run_many(self, feeds: Sequence[Feed]) -> Iterator[np.ndarray]:
        """Outputs of several batches, in order."""
        for feed in feeds:
            yield self.run(feed)


class OpenVinoSession:
    """OpenVINO's CPU plugin: one compiled form for single batches (all cores on it), one with
    a stream per core that runs several batches in parallel.

    A core busy with something else (Elasticsearch, the bulk thread) then delays one batch
    instead of stalling every thread at each layer. At run time OpenVINO picks the CPU's
    fastest float precision (bf16 with AVX512-BF16/AMX) unless ``precision`` forces one.

    Args:
        path: The ``.xml`` IR file (its ``.bin`` beside it).
        threads: Inference threads. Defaults to the number of cores.
        precision: None (the CPU's best) or ``f32``.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, precision: str | None = None):
        try:
            import openvino as ov
        except ImportError as e:
            raise ModelError("the OpenVINO backends need openvino: pip install 'es-rerank[openvino]'") from e
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        model = core.read_model(str(path))
        self._latency = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
        throughput = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT"})
        self.parallel_batches = int(throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._queue = ov.AsyncInferQueue(throughput, self.parallel_batches)
        self._queue_lock = threading.Lock()
        self.input_names = [i.get_any_name() for i in self._latency.inputs]
        self._output = self._latency.outputs[0]
        self._local = threading.local()  # an infer request serves one thread at a time
        logger.debug("OpenVINO %s: precision %s, %d streams for batches", Path(path).name,
                     self._latency.get_property("INFERENCE_PRECISION_HINT"), self.parallel_batches)

    def run(self, feed: Feed) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._latency.create_infer_request()
        return request.infer(dict(feed))[self._output].copy()

    def run_many(self, feeds: Sequence[Feed]) -> Iterator[np.ndarray]:
        feeds = list(feeds)
        if len(feeds) < 2 or self.parallel_batches < 2:
            for feed in feeds:
                yield self.run(feed)
            return
        results: dict[int, np.ndarray] = {}

        def done(request, i):
            results[i] = request.get_output_tensor(0).data.copy()

        with self._queue_lock:
            self._queue.set_callback(done)
            for i, feed in enumerate(feeds):
                self._queue.start_async(dict(feed), i)
            self._queue.wait_all()
        for i in range(len(feeds)):
            yield results[i]


def batches(lengths: Sequence[int], batch_size: int, parallel: int = 1) -> Iterable[np.ndarray]:
    """Positions per batch, longest first, so that a batch holds similar lengths.

    With ``parallel`` runners the items are split into a multiple of ``parallel`` equal
    batches, so that none idles at the end.

    Example:
        >>> [b.tolist() for b in batches([3, 9, 5, 1], 2)]
        [[1, 2], [0, 3]]
    """
    order = np.argsort([-n for n in lengths], kind="stable")
    size = batch_size
    if parallel > 1 and len(order) > 1:
        n = -(-len(order) // size)
        n = -(-n // parallel) * parallel
        size = -(-len(order) // min(n, len(order)))
    return [order[start:start + size] for start in range(0, len(order), size)]
