"""Build-time tools: export models to ONNX and OpenVINO, quantize, calibrate.

These need torch (``pip install 'es-rerank[torch]'``) and, for OpenVINO, ``openvino`` and
``nncf`` (``es-rerank[openvino]``). Calibration retrieves real candidates with a
:class:`~es_rerank.client.Searcher`, so this package sits above the client; query-time
code never imports it.
"""

from .onnx import export_onnx, quantize_onnx
from .openvino import FP_FILE, INT8_FILE, calibration_from_index, export_openvino, read_queries

__all__ = ["export_onnx", "quantize_onnx", "export_openvino", "calibration_from_index", "read_queries", "FP_FILE",
           "INT8_FILE"]
