"""The ONNX graph of a BERT encoder, built from ``config.json`` and safetensors weights without torch.

Offline model folders hold Hugging Face weights, not ONNX files, and ``torch.onnx`` needs torch
(the CUDA build from PyPI: gigabytes). BERT, the architecture of the usual small rerankers and
embedders, is short enough to write out directly: this module reads the config and the weights
with ``safetensors`` and ``numpy`` and emits an opset-17 graph with ``onnx.helper``.

The graph has the interface of the files :func:`es_rerank.export.export_onnx` writes, so the
runtime's heads (:mod:`es_rerank.runtime.heads`) run it unchanged: int64 inputs ``input_ids``, ``attention_mask`` and ``token_type_ids`` of shape
``[batch, sequence]`` (both axes dynamic) and one float output, ``output``: the logits
``[batch, num_labels]`` of a cross-encoder (``BertForSequenceClassification``), or an embedder's
last hidden state ``[batch, sequence, hidden]`` (pooling and normalisation happen outside).

It is written in the shapes ONNX Runtime's optimizer fuses: ``LayerNormalization`` (opset 17),
attention as MatMul/Softmax with an additive mask, GELU in its exact Erf form.

:func:`build_bert_onnx` returns a self-contained ``onnx.ModelProto`` (to save, inspect or run);
:func:`open_bert_session` goes straight to an ONNX Runtime session, handing the weights over as
arrays, which takes about half as long (no protobuf round trip of the weights): fast enough to
convert at every load, with no cache on disk.

Example:
    >>> import onnxruntime as ort
    >>> proto = build_bert_onnx("path/to/cross-encoder", kind="cross-encoder")  # doctest: +SKIP
    >>> session = ort.InferenceSession(proto.SerializeToString())                # doctest: +SKIP
    >>> session = open_bert_session("path/to/cross-encoder", kind="cross-encoder")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError

logger = logging.getLogger(__name__)

KINDS = ("cross-encoder", "embedder")
OPSET = 17
# IR version 8 goes with opset 17: older ONNX Runtime releases refuse newer IR versions.
IR_VERSION = 8
SUPPORTED = ("BERT models (model_type 'bert'; BertForSequenceClassification for a cross-encoder, any Bert* "
             "architecture for an embedder) with hidden_act 'gelu', absolute position embeddings and "
             "safetensors weights (fp32, fp16 or bf16)")
OTHER_MODELS = "for other models, pip install 'es-rerank[torch]' and run `es-rerank export-onnx MODEL`"
# protobuf cannot serialize a message of 2 GiB or more
_MAX_PROTO_BYTES = 2**31 - 2**24
# added to the attention scores of padding; finite (unlike -inf or float32's minimum it stays
# finite in fp16 too) and far enough below any real score that exp() underflows to exactly 0
_MASK_VALUE = -10000.0
# the location named by weights handed to ONNX Runtime as arrays (no such file is read)
_IN_MEMORY = "es-rerank-in-memory"


@dataclass(frozen=True)
class BertSpec:
    """What :func:`read_bert_spec` found: the numbers that shape the graph, and where the weights are.

    Attributes:
        kind: ``cross-encoder`` or ``embedder``.
        model_dir: The folder asked for.
        transformer_dir: The folder holding ``config.json`` and the weights (a sentence-transformers
            folder may keep its transformer module in a subfolder).
        weight_files: The safetensors files (several when sharded).
        hidden_size: Width of the hidden states.
        num_heads: Attention heads per layer.
        num_layers: Encoder layers.
        intermediate_size: Width of the feed-forward layer.
        layer_norm_eps: LayerNorm epsilon.
        max_positions: ``max_position_embeddings``: the longest input the graph accepts.
        type_vocab_size: Rows of the token-type embedding.
        vocab_size: Rows of the word embedding.
        num_labels: Logits per pair (cross-encoder); 0 for an embedder.
    """

    kind: str
    model_dir: Path
    transformer_dir: Path
    weight_files: tuple[Path, ...]
    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    layer_norm_eps: float
    max_positions: int
    type_vocab_size: int
    vocab_size: int
    num_labels: int


def read_bert_spec(model_dir: str | Path, *, kind: str) -> BertSpec:
    """Check that a folder holds a BERT model this module converts, without reading its weights.

    Args:
        model_dir: A Hugging Face or sentence-transformers model folder.
        kind: ``cross-encoder`` (``BertForSequenceClassification``) or ``embedder`` (the encoder's
            last hidden state; a sentence-transformers folder must pool by mean).

    Returns:
        The model's dimensions and weight files.

    Raises:
        ConfigError: Unknown kind, a missing or unreadable file, or a model this module does not
            convert (the message says what is supported and how to export other models).
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    root = Path(model_dir)
    if not root.is_dir():
        raise ConfigError(f"model folder {str(root)!r} not found (the ONNX converter needs a local folder)")
    folder = _transformer_dir(root, kind)
    config_path = folder / "config.json"
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path}: expected a JSON object, got {type(config).__name__}")

    def unsupported(what: str) -> ConfigError:
        return ConfigError(f"{config_path}: {what}; the built-in ONNX converter supports {SUPPORTED}; "
                           f"{OTHER_MODELS}")

    model_type = config.get("model_type")
    if model_type != "bert":
        raise unsupported(f"model_type {model_type!r} is not 'bert'")
    architectures = config.get("architectures") or []
    if kind == "cross-encoder" and "BertForSequenceClassification" not in architectures:
        raise unsupported(f"a cross-encoder must be BertForSequenceClassification, architectures is {architectures!r}")
    if kind == "embedder" and not all(isinstance(a, str) and a.startswith("Bert") for a in architectures):
        raise unsupported(f"architectures {architectures!r} are not all BERT")
    # the defaults are transformers' BertConfig defaults, so a sparse config reads as transformers reads it
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise unsupported(f"hidden_act {act!r} is not 'gelu' (the exact Erf form)")
    position = config.get("position_embedding_type", "absolute")
    if position not in (None, "absolute"):
        raise unsupported(f"position_embedding_type {position!r} is not 'absolute'")
    if config.get("is_decoder"):
        raise unsupported("is_decoder is true (a causal decoder)")
    if config.get("quantization_config") is not None:
        raise unsupported("the weights are quantized (quantization_config)")

    def positive_int(key: str, default: int) -> int:
        value = config.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{config_path}: {key} must be a positive integer, got {value!r}")
        return value

    hidden = positive_int("hidden_size", 768)
    heads = positive_int("num_attention_heads", 12)
    if hidden % heads:
        raise ConfigError(f"{config_path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    eps = config.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise ConfigError(f"{config_path}: layer_norm_eps must be a number in (0, 1), got {eps!r}")
    num_labels = 0
    if kind == "cross-encoder":
        labels = config.get("id2label")
        num_labels = len(labels) if isinstance(labels, dict) and labels else positive_int("num_labels", 2)
    return BertSpec(kind=kind, model_dir=root, transformer_dir=folder, weight_files=_weight_files(folder),
                    hidden_size=hidden, num_heads=heads, num_layers=positive_int("num_hidden_layers", 12),
                    intermediate_size=positive_int("intermediate_size", 3072), layer_norm_eps=float(eps),
                    max_positions=positive_int("max_position_embeddings", 512),
                    type_vocab_size=positive_int("type_vocab_size", 2), vocab_size=positive_int("vocab_size", 30522),
                    num_labels=num_labels)


def build_bert_onnx(model_dir: str | Path, *, kind: str):
    """Build the ONNX graph of a BERT cross-encoder or embedder, weights included, in memory.

    fp16 and bf16 weights are upcast to fp32 (exactly, as transformers loads them); the graph
    computes in fp32. Weight names may carry a ``bert.`` prefix (``BertForSequenceClassification``)
    or none (``BertModel``, as sentence-transformers saves it), and the legacy LayerNorm names
    ``gamma``/``beta``.

    Args:
        model_dir: A Hugging Face or sentence-transformers model folder with ``config.json`` and
            ``model.safetensors`` (or a sharded ``model.safetensors.index.json``).
        kind: ``cross-encoder``: output ``[batch, num_labels]`` raw logits (pooler, then
            classifier); ``embedder``: output ``[batch, sequence, hidden]``, the last hidden state.

    Returns:
        An ``onnx.ModelProto`` (opset 17, IR version 8); ``SerializeToString()`` gives the bytes
        that ``onnxruntime.InferenceSession`` accepts.

    Raises:
        ConfigError: The folder does not hold a model this module converts, or a weight is missing
            or has the wrong shape (the message names the tensor and the file).

    Example:
        >>> proto = build_bert_onnx("../shared/models/minilm-l6-scifact-ce", kind="cross-encoder")  # doctest: +SKIP
        >>> [o.name for o in proto.graph.output]  # doctest: +SKIP
        ['output']
    """
    spec = read_bert_spec(model_dir, kind=kind)
    try:
        import onnx  # noqa: F401  (imported here so that read_bert_spec works without it)
    except ImportError as e:
        raise ConfigError("building an ONNX graph needs the onnx package: pip install onnx onnxruntime (both are es-rerank dependencies)") from e
    started = time.perf_counter()
    with _Weights(spec.weight_files) as weights:
        proto = _build(spec, weights).model
    logger.info("built the ONNX graph of %s (%s, %d layers) in %.2f s", spec.model_dir, kind, spec.num_layers,
                time.perf_counter() - started)
    return proto


def open_bert_session(model_dir: str | Path, *, kind: str, options=None, providers: Sequence[str] | None = None):
    """An ONNX Runtime session on a BERT model folder, the graph built in memory, nothing written.

    The same graph as :func:`build_bert_onnx`, but the weights never enter the protobuf: they go to
    ONNX Runtime as arrays (``SessionOptions.add_external_initializers``), which skips serializing
    and parsing them; this halves the time from folder to session (see benchmarks/bert_onnx.py).

    Args:
        model_dir: A Hugging Face or sentence-transformers model folder (see :func:`build_bert_onnx`).
        kind: ``cross-encoder`` or ``embedder``.
        options: ``onnxruntime.SessionOptions`` (threads, optimization level) made for this
            session: the weights are added to it, so it cannot serve a second call. Defaults to
            ONNX Runtime's defaults.
        providers: Execution providers. Defaults to ``["CPUExecutionProvider"]``.

    Returns:
        An ``onnxruntime.InferenceSession`` with inputs ``input_ids``, ``attention_mask``,
        ``token_type_ids`` and output ``output``. It holds the weight arrays it reads in place.

    Raises:
        ConfigError: As :func:`build_bert_onnx`, or onnxruntime is not installed.

    Example:
        >>> session = open_bert_session("../shared/models/minilm-l6-scifact-ce", kind="cross-encoder")  # doctest: +SKIP
        >>> session.run(None, feed)[0].shape  # doctest: +SKIP
        (2, 1)
    """
    spec = read_bert_spec(model_dir, kind=kind)
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as e:
        raise ConfigError("running a BERT model needs onnx and onnxruntime: pip install onnx onnxruntime (both are es-rerank dependencies)") from e
    started = time.perf_counter()
    with _Weights(spec.weight_files) as weights:
        graph = _build(spec, weights, external=True)
    options = ort.SessionOptions() if options is None else options
    names = list(graph.external)
    values = [ort.OrtValue.ortvalue_from_numpy(graph.external[n]) for n in names]
    options.add_external_initializers(names, values)
    session = ort.InferenceSession(graph.model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"] if providers is None else list(providers))
    # ONNX Runtime reads these buffers in place: they must live as long as the session
    session._es_rerank_weights = (graph.external, values)
    logger.info("opened an ONNX Runtime session on %s (%s) in %.2f s", spec.model_dir, kind,
                time.perf_counter() - started)
    return session


# --- the folder ----------------------------------------------------------------------------------

def _read_json(path: Path):
    if not path.is_file():
        raise ConfigError(f"{path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e


def _module_type(module: dict) -> str:
    """``sentence_transformers.models.Pooling`` -> ``Pooling`` (the package path changed across versions)."""
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _transformer_dir(root: Path, kind: str) -> Path:
    """The folder of the transformer: ``root``, or a sentence-transformers module's path."""
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        return root
    modules = _read_json(modules_path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ConfigError(f"{modules_path}: expected a list of module objects")
    types = [_module_type(m) for m in modules]
    transformers = [m for m, t in zip(modules, types) if t == "Transformer"]
    if len(transformers) != 1:
        raise ConfigError(f"{modules_path}: expected one Transformer module, found module types {types}")
    allowed = ("Transformer", "Pooling", "Normalize") if kind == "embedder" else ("Transformer",)
    extra = [t for t in types if t not in allowed]
    if extra:
        raise ConfigError(f"{modules_path}: module types {extra} are not supported for kind {kind!r} (supported: "
                          f"{', '.join(allowed)}; the runtime mean-pools and normalises); {OTHER_MODELS}")
    if kind == "embedder":
        for module, module_type in zip(modules, types):
            if module_type == "Pooling":
                _check_pooling(root / str(module.get("path", "")) / "config.json")
    return root / str(transformers[0].get("path", ""))


def _check_pooling(path: Path) -> None:
    """The runtime pools by mean: refuse a sentence-transformers model that pools otherwise."""
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    if "pooling_mode" in config:  # sentence-transformers 6: "mean", or a list of modes
        mode = config["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode)
    else:  # earlier versions: one flag per mode
        modes = [k[len("pooling_mode_"):] for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
        modes = ["mean" if m == "mean_tokens" else m for m in modes]
    if modes != ["mean"]:
        raise ConfigError(f"{path}: pooling {modes} is not supported (the ONNX runtime pools by mean only); "
                          f"{OTHER_MODELS}")


def _weight_files(folder: Path) -> tuple[Path, ...]:
    single = folder / "model.safetensors"
    if single.is_file():
        return (single,)
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        index = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConfigError(f"{index_path}: no weight_map")
        files = tuple(folder / name for name in sorted(set(map(str, weight_map.values()))))
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ConfigError(f"{index_path}: shards not found: {', '.join(missing)}")
        return files
    others = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".h5", ".msgpack", ".pt", ".ckpt"))
    found = f" (found {', '.join(others)})" if others else ""
    raise ConfigError(f"{folder}: no model.safetensors{found}; the built-in ONNX converter reads safetensors "
                      f"weights only; {OTHER_MODELS}")


# --- the weights ---------------------------------------------------------------------------------

class _Weights:
    """Tensors by name across safetensors files, read as fp32 and checked against expected shapes."""

    _FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")

    def __init__(self, files: tuple[Path, ...]):
        self.files = files
        self._stack = contextlib.ExitStack()
        self._where: dict[str, tuple[Path, object]] = {}
        self.prefix = ""

    def __enter__(self) -> "_Weights":
        try:
            from safetensors import safe_open
        except ImportError as e:
            raise ConfigError("reading model weights needs the safetensors package: pip install safetensors") from e

        for path in self.files:
            try:
                handle = self._stack.enter_context(safe_open(str(path), framework="np"))
            except Exception as e:  # safetensors raises its own SafetensorError for a bad file
                self._stack.close()
                raise ConfigError(f"{path}: not a readable safetensors file: {e}") from e
            for name in handle.keys():
                self._where[name] = (path, handle)
        suffix = "embeddings.word_embeddings.weight"
        prefixes = sorted(n[:-len(suffix)] for n in self._where if n.endswith(suffix))
        prefixes = [p for p in prefixes if p == "" or p.endswith(".")]
        if len(prefixes) != 1:
            self._stack.close()
            raise ConfigError(f"{self.files[0]}: expected one BERT encoder's {suffix}, found "
                              f"{len(prefixes)} (prefixes {prefixes}); {OTHER_MODELS}")
        self.prefix = prefixes[0]
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def has(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str, shape: tuple[int, ...], *, encoder: bool = True) -> np.ndarray:
        """The tensor ``name`` (under the encoder's prefix when ``encoder``) as fp32, shape checked."""
        full = self.prefix + name if encoder else name
        if full not in self._where and full.endswith((".LayerNorm.weight", ".LayerNorm.bias")):
            legacy = full.rsplit(".", 1)[0] + (".gamma" if full.endswith(".weight") else ".beta")
            full = legacy if legacy in self._where else full
        if full not in self._where:
            raise ConfigError(f"{self.files[0].parent}: weight {full!r} not found in "
                              f"{', '.join(f.name for f in self.files)}; {OTHER_MODELS}")
        path, handle = self._where[full]
        dtype = handle.get_slice(full).get_dtype()
        if dtype not in self._FLOAT_DTYPES:
            raise ConfigError(f"{path}: weight {full!r} has dtype {dtype}; supported: fp32, fp16, bf16")
        array = _read_bf16(path, full) if dtype == "BF16" else handle.get_tensor(full)
        if tuple(array.shape) != tuple(shape):
            raise ConfigError(f"{path}: weight {full!r} has shape {list(array.shape)}, config.json implies "
                              f"{list(shape)}")
        return np.ascontiguousarray(array, dtype=np.float32)


def _read_bf16(path: Path, name: str) -> np.ndarray:
    """A bfloat16 tensor as fp32 (numpy has no bfloat16, so safetensors' numpy reader refuses it)."""
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    entry = header[name]
    start, end = entry["data_offsets"]
    raw = np.fromfile(path, dtype="<u2", count=(end - start) // 2, offset=8 + header_len + start)
    # bf16 is the top half of an fp32: shifting it up is exact
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


# --- the graph -----------------------------------------------------------------------------------

class _Graph:
    """A ModelProto filled in place: each node named after its output, weights written once.

    ``onnx.helper.make_graph`` and ``make_model`` copy every initializer (twice): for 90 MB of
    weights that is most of the build time, so the tensors go straight into the model. With
    ``external``, large weights stay numpy arrays in ``self.external`` and the model only names
    them (ONNX Runtime takes them as ``add_external_initializers``).
    """

    _EXTERNAL_MIN_BYTES = 1024

    def __init__(self, *, external: bool = False):
        from onnx import ModelProto

        self.model = ModelProto()
        self.nbytes = 0
        self.external: dict[str, np.ndarray] | None = {} if external else None

    def weight(self, name: str, array: np.ndarray) -> str:
        from onnx import TensorProto

        types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}
        if array.dtype not in types:
            raise TypeError(f"initializer {name!r}: dtype {array.dtype} is neither float32 nor int64")
        tensor = self.model.graph.initializer.add()
        tensor.name = name
        tensor.data_type = types[array.dtype]
        tensor.dims.extend(array.shape)
        self.nbytes += array.nbytes
        if self.external is not None and array.nbytes >= self._EXTERNAL_MIN_BYTES:
            # the runtime replaces an external initializer by the array of the same name
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", _IN_MEMORY), ("offset", "0"), ("length", str(array.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            self.external[name] = np.ascontiguousarray(array)
        else:
            # raw_data is little-endian whatever the machine
            tensor.raw_data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        self.model.graph.node.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output


def _build(spec: BertSpec, weights: _Weights, *, external: bool = False) -> _Graph:
    from onnx import TensorProto, helper

    g = _Graph(external=external)
    hidden, heads = spec.hidden_size, spec.num_heads
    head_size = hidden // heads
    eps = spec.layer_norm_eps
    f32 = np.float32
    one = g.weight("const/one", np.array(1.0, f32))
    g.weight("const/mask_value", np.array(_MASK_VALUE, f32))
    g.weight("const/sqrt_head_size", np.array(math.sqrt(head_size), f32))
    g.weight("const/sqrt2", np.array(math.sqrt(2.0), f32))
    g.weight("const/half", np.array(0.5, f32))
    g.weight("const/heads_shape", np.array([0, 0, heads, head_size], np.int64))
    g.weight("const/hidden_shape", np.array([0, 0, hidden], np.int64))
    g.weight("const/axis1", np.array([1], np.int64))
    g.weight("const/axis2", np.array([2], np.int64))
    g.weight("const/zero", np.array([0], np.int64))

    def layer_norm(x: str, prefix: str, out: str) -> str:
        scale = g.weight(f"{prefix}.weight", weights.get(f"{prefix}.weight", (hidden,)))
        bias = g.weight(f"{prefix}.bias", weights.get(f"{prefix}.bias", (hidden,)))
        return g.op("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=eps)

    def linear(x: str, prefix: str, n_in: int, n_out: int, out: str) -> str:
        # torch keeps Linear weights as [out, in]; MatMul wants [in, out]
        w = g.weight(f"{prefix}.weight", np.ascontiguousarray(weights.get(f"{prefix}.weight", (n_out, n_in)).T))
        b = g.weight(f"{prefix}.bias", weights.get(f"{prefix}.bias", (n_out,)))
        return g.op("Add", [g.op("MatMul", [x, w], f"{out}/matmul"), b], out)

    # embeddings: word + token type + position (the first `sequence` rows of the table), then LayerNorm
    word = g.op("Gather", [g.weight("embeddings.word_embeddings.weight", weights.get(
        "embeddings.word_embeddings.weight", (spec.vocab_size, hidden))), "input_ids"], "embeddings/word")
    types = g.op("Gather", [g.weight("embeddings.token_type_embeddings.weight", weights.get(
        "embeddings.token_type_embeddings.weight", (spec.type_vocab_size, hidden))), "token_type_ids"],
                 "embeddings/token_type")
    seq_len = g.op("Shape", ["input_ids"], "embeddings/sequence_length", start=1, end=2)
    positions = g.op("Slice", [g.weight("embeddings.position_embeddings.weight", weights.get(
        "embeddings.position_embeddings.weight", (spec.max_positions, hidden))), "const/zero", seq_len,
        "const/zero"], "embeddings/position")
    summed = g.op("Add", [g.op("Add", [word, types], "embeddings/word_type"), positions], "embeddings/sum")
    x = layer_norm(summed, "embeddings.LayerNorm", "embeddings/output")

    # additive mask [batch, 1, 1, sequence]: 0 where attended, _MASK_VALUE on padding
    mask = g.op("Unsqueeze", ["attention_mask", "const/axis1"], "mask/unsqueeze1")
    mask = g.op("Unsqueeze", [mask, "const/axis2"], "mask/unsqueeze2")
    mask = g.op("Cast", [mask], "mask/float", to=TensorProto.FLOAT)
    mask = g.op("Mul", [g.op("Sub", [one, mask], "mask/inverted"), "const/mask_value"], "mask/additive")

    for i in range(spec.num_layers):
        p, n = f"encoder.layer.{i}", f"layer{i}"
        att = f"{p}.attention"

        def heads_of(name: str, perm: list[int]) -> str:
            t = linear(x, f"{att}.self.{name}", hidden, hidden, f"{n}/{name}")
            t = g.op("Reshape", [t, "const/heads_shape"], f"{n}/{name}/heads")
            return g.op("Transpose", [t], f"{n}/{name}/transposed", perm=perm)

        q = heads_of("query", [0, 2, 1, 3])  # [batch, heads, sequence, head_size]
        k = heads_of("key", [0, 2, 3, 1])    # [batch, heads, head_size, sequence]
        v = heads_of("value", [0, 2, 1, 3])
        scores = g.op("Div", [g.op("MatMul", [q, k], f"{n}/scores/matmul"), "const/sqrt_head_size"], f"{n}/scores")
        scores = g.op("Add", [scores, mask], f"{n}/scores/masked")
        probs = g.op("Softmax", [scores], f"{n}/probs", axis=3)
        context = g.op("Transpose", [g.op("MatMul", [probs, v], f"{n}/context/heads")], f"{n}/context/transposed",
                       perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, "const/hidden_shape"], f"{n}/context")
        attended = linear(context, f"{att}.output.dense", hidden, hidden, f"{n}/attention/dense")
        x = layer_norm(g.op("Add", [attended, x], f"{n}/attention/residual"), f"{att}.output.LayerNorm",
                       f"{n}/attention/output")

        inner = linear(x, f"{p}.intermediate.dense", hidden, spec.intermediate_size, f"{n}/intermediate")
        # exact GELU: x * (1 + erf(x / sqrt(2))) / 2
        erf = g.op("Erf", [g.op("Div", [inner, "const/sqrt2"], f"{n}/gelu/scaled")], f"{n}/gelu/erf")
        gelu = g.op("Mul", [inner, g.op("Add", [erf, one], f"{n}/gelu/erf_plus_one")], f"{n}/gelu/product")
        gelu = g.op("Mul", [gelu, "const/half"], f"{n}/gelu")
        out = linear(gelu, f"{p}.output.dense", spec.intermediate_size, hidden, f"{n}/output/dense")
        last = "output" if spec.kind == "embedder" and i == spec.num_layers - 1 else f"{n}/output"
        x = layer_norm(g.op("Add", [out, x], f"{n}/output/residual"), f"{p}.output.LayerNorm", last)

    if spec.kind == "cross-encoder":
        # BertForSequenceClassification: tanh(dense(hidden state of [CLS])), then the classifier
        g.weight("const/cls_index", np.array(0, np.int64))
        cls = g.op("Gather", [x, "const/cls_index"], "pooler/cls", axis=1)
        pw = g.weight("pooler.dense.weight", weights.get("pooler.dense.weight", (hidden, hidden)))
        pb = g.weight("pooler.dense.bias", weights.get("pooler.dense.bias", (hidden,)))
        pooled = g.op("Tanh", [g.op("Gemm", [cls, pw, pb], "pooler/dense", transB=1)], "pooler/output")
        cw = g.weight("classifier.weight", weights.get("classifier.weight", (spec.num_labels, hidden), encoder=False))
        cb = g.weight("classifier.bias", weights.get("classifier.bias", (spec.num_labels,), encoder=False))
        g.op("Gemm", [pooled, cw, cb], "output", transB=1)
        output_shape = ["batch", spec.num_labels]
    else:
        output_shape = ["batch", "sequence", hidden]

    if weights.has(f"{weights.prefix}encoder.layer.{spec.num_layers}.attention.self.query.weight"):
        raise ConfigError(f"{spec.transformer_dir / 'config.json'}: num_hidden_layers is {spec.num_layers} "
                          f"but the weights hold more layers")
    if g.external is None and g.nbytes > _MAX_PROTO_BYTES:
        raise ConfigError(f"{spec.model_dir}: {g.nbytes / 2**30:.1f} GiB of weights is too large for one ONNX "
                          f"protobuf (2 GiB at most); open_bert_session keeps the weights out of it")
    model = g.model
    model.ir_version = IR_VERSION
    model.producer_name = "es-rerank.runtime.bert_onnx"
    model.opset_import.append(helper.make_opsetid("", OPSET))
    model.graph.name = f"bert-{spec.kind}"
    model.graph.input.extend(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
                             for name in ("input_ids", "attention_mask", "token_type_ids"))
    model.graph.output.append(helper.make_tensor_value_info("output", TensorProto.FLOAT, output_shape))
    helper.set_model_props(model, {"es_rerank.kind": spec.kind, "es_rerank.source": str(spec.model_dir)})
    return g
