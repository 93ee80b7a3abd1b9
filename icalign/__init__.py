"""icalign: a JAX sandbox for self-correction as in-context alignment.

The package is layered; data flows one way::

    key -> core (tasks) -> model | theory -> training -> analysis -> io (result files) -> viz

``core`` tasks, losses, metrics, statistics, PRNG streams; ``model`` the one transformer;
``theory`` analytic GD, hand-built constructions, necessity, verification; ``training`` the
one loop; ``analysis`` TF-vs-GD comparisons, evaluation sweeps, ablation grids, verdicts;
``selfcorrect`` critics, the multi-round loop and the latent-concept model; ``viz`` figures;
``io`` the one writer.

The public modules that notebooks import keep their short names: ``icalign.tasks``,
``icalign.losses``, ``icalign.gd``, ``icalign.model``, ``icalign.train`` and
``icalign.construct`` are the modules of their layer (the same module objects).
"""

import sys as _sys

from icalign import model
from icalign import training as train
from icalign.core import losses, tasks
from icalign.theory import construct, gd

__version__ = "0.1.0"
__all__ = ["tasks", "losses", "gd", "model", "train", "construct", "compare"]

for _name, _module in {"tasks": tasks, "losses": losses, "gd": gd, "train": train,
                       "construct": construct}.items():
    # ``import icalign.tasks`` finds the layer's module itself (no copy, no shim).
    _sys.modules[f"{__name__}.{_name}"] = _module
del _name, _module


def compare(cfgs, experiment: str = "tf-vs-gd", **kwargs) -> dict:
    """Train, evaluate and judge variants of one experiment's model on the same contexts and
    seeds: :func:`icalign.comparison.compare` (imported on first use: it loads the experiments,
    which ``import icalign`` should not)."""
    from icalign.comparison import compare as run

    return run(cfgs, experiment, **kwargs)
