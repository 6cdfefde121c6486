"""The ``eval.at_end`` hook of ``run_train``: evaluate the finished run, keep headline numbers in its card."""

from __future__ import annotations

from pathlib import Path

from ..config import EvalConfig
from ..data.formats import Conversation
from ..errors import TunesmithError
from ..logs import get_logger
from ..runcard import read_run_card, write_run_card
from .items import EvalItem, load_eval_items
from .runner import EvalOptions, EvalResult, run_eval

log = get_logger(__name__)


def check_eval_inputs(ecfg: EvalConfig) -> None:
    """Read ``eval.data`` and ``eval.general`` now, so a bad file fails before training, not after.

    Raises:
        DatasetError: either file is missing, empty or malformed.
    """
    for path in (ecfg.data, ecfg.general):
        if path:
            load_eval_items(path, limit=ecfg.limit)


def eval_after_training(run_dir: str | Path, ecfg: EvalConfig, held_out: list[Conversation]) -> EvalResult:
    """Evaluate a just-finished run and re-write its run card with ``metrics["eval"]``.

    Args:
        run_dir: the finished run directory (its run card is already written).
        ecfg: the ``eval`` config section.
        held_out: the validation conversations, used when ``eval.data`` is not set.

    Raises:
        RunDirError: the evaluation failed; the message says the run itself is complete.
    """
    from ..errors import RunDirError

    run_dir = Path(run_dir)
    data = ecfg.data or [EvalItem.from_conversation(c) for c in held_out]
    opts = EvalOptions(
        limit=ecfg.limit,
        general=ecfg.general,
        samples=ecfg.samples,
        batch_size=ecfg.batch_size,
        data_label=None if ecfg.data else "the validation split of the training data",
    )
    try:
        result = run_eval(run_dir, data, opts)
    except TunesmithError as e:
        raise RunDirError(
            f"training finished and {run_dir} is complete, but the evaluation after it failed: {e}\n"
            f"Retry it with: tunesmith eval {run_dir} --data FILE"
        ) from None
    card = read_run_card(run_dir)
    card.metrics["eval"] = result.headline()
    write_run_card(run_dir, card)  # atomic: the card is replaced whole
    log.info("evaluation: report in %s; headline metrics added to the run card", result.out_dir)
    return result
