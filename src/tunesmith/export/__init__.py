"""Ship a run: merge the adapter, export (Hugging Face, GGUF, ONNX + Triton), quantize (int8).

Every format is loaded back and checked against the fine-tuned model before the output directory
appears. See docs/deploy.md for which format suits which runtime.
"""

from ..errors import ExportError
from .common import CHECK_PROMPTS, CheckResult
from .run import DTYPES, FORMATS, QUANTIZE, REPORT, ExportOptions, run_export

__all__ = [
    "CHECK_PROMPTS",
    "DTYPES",
    "FORMATS",
    "QUANTIZE",
    "REPORT",
    "CheckResult",
    "ExportError",
    "ExportOptions",
    "run_export",
]
