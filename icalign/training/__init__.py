"""Layer 3: training. One loop (:mod:`icalign.training.loop`) for every trained model, the
published in-context-alignment objective (:mod:`icalign.training.ica`), run folders and
checkpoints (:mod:`icalign.training.checkpoint`). ``icalign.train`` is this package."""

from icalign.training.config import (RunSpec, TrainConfig, check_objective, loss_trend, make_runs, runs_from_keys,
                                     select_run)
from icalign.training.ica import (ICAObjective, TrainResult, batch_for_step, context_objective, load_run, loss_fn,
                                  run_dir_for, train, train_or_load, training_bytes)
from icalign.training.checkpoint import CheckpointError
from icalign.training.group import groups, train_group
from icalign.training.loop import (LoopResult, NonFiniteLossError, Objective, RunExistsError, RunIdentityError,
                                   TrainState, fit, init_states, load_finished, run_chunk, run_identity,
                                   states_from)

__all__ = ["TrainConfig", "RunSpec", "make_runs", "runs_from_keys", "select_run", "ICAObjective", "TrainResult",
           "loss_fn", "batch_for_step", "train", "train_or_load", "load_run", "run_dir_for", "training_bytes", "Objective",
           "TrainState", "LoopResult", "RunExistsError", "RunIdentityError", "NonFiniteLossError", "CheckpointError", "fit",
           "init_states", "states_from", "run_chunk", "run_identity", "groups", "train_group"]
__all__ += ["check_objective", "loss_trend", "context_objective", "load_finished"]
