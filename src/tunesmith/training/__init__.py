"""Training: ``run_train`` (run.py) dispatches by task to the language-model (lm.py) or the
classifier (classifier.py) path; both share the run-dir lifecycle of lifecycle.py and rundir.py.
The other modules are the levers they pull: PEFT methods, optimizer, fast loss, replay, DDP."""

from .run import run_train

__all__ = ["run_train"]
