"""`icalign verify` (= `icalign run verify`): every theorem-as-code claim checked in float64
against independent references (icalign.theory.verify), each construction claim against its
documented per-context bound and its relative tolerance on the step, with an adversarial
hunt for counterexamples inside the preconditions, in seven families of edge cases
(ill-conditioned W0, x near zero and huge, far clusters, every gap at the built-for gap,
long runs; short by default, `--search` runs the wide one: N up to 32, d up to 16). Prints
the table and the hunt per family, writes it as JSON, and exits 1 if any claim fails."""

from __future__ import annotations

import dataclasses

from icalign.core.validate import check_int
from icalign.experiment import check_seed, config_record, publish, result_path, runner
from icalign.io import hardware
from icalign.theory import verify as V

NAME = "verify"
DESCRIPTION = "check every construction against closed-form GD and jax.grad (float64 table) and hunt for counterexamples"
FLAGS = {"--search": ("search=true", "run the wide adversarial hunt (N up to 32, d up to 16, seven families; minutes)")}


@dataclasses.dataclass(frozen=True)
class Config:
    contexts: int = 64
    seed: int = 0
    search: bool = False

    def __post_init__(self):
        check_seed(self.seed)
        check_int("contexts", self.contexts, minimum=1)
        if not isinstance(self.search, bool):
            raise ValueError(f"search must be true or false, got {self.search!r}")


QUICK = FULL = Config()


@runner
def run(cfg: Config = QUICK, out=None, *, force: bool = False, progress: bool = True, run_root=None) -> dict:
    path = result_path(out, NAME, force)
    result = V.verify(cfg.seed, cfg.contexts, progress=progress, search_wide=cfg.search)
    print(V.table(result))
    return publish(path, {"experiment": NAME, **config_record(cfg), **result, "hardware": hardware()})


def exit_code(result: dict) -> int:
    return 0 if result["all_pass"] else 1
