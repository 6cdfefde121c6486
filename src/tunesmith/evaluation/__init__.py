"""Evaluation of a run: base vs fine-tuned perplexity, answer metrics, decoding sweep, report.

Entry point: ``run_eval(run_dir, data, EvalOptions(...))``; ``tunesmith eval`` wraps it.
"""

from .at_end import check_eval_inputs, eval_after_training
from .generate import DEFAULT_SWEEP, SWEEP_KEYS, generate_all, parse_sweep
from .items import EvalItem, load_eval_items
from .perplexity import answer_perplexity
from .runner import EvalOptions, EvalResult, check_base_model, run_eval

__all__ = [
    "DEFAULT_SWEEP",
    "SWEEP_KEYS",
    "EvalItem",
    "EvalOptions",
    "EvalResult",
    "answer_perplexity",
    "check_base_model",
    "check_eval_inputs",
    "eval_after_training",
    "generate_all",
    "load_eval_items",
    "parse_sweep",
    "run_eval",
]
