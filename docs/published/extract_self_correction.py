"""Extract the published transformer's error under reward noise from Wang et al.'s notebook.

Usage (from the repository root; GIT_DIR is a clone or bare mirror of
https://github.com/yifeiwang77/Self-Correction):

    python docs/published/extract_self_correction.py GIT_DIR [COMMIT] > docs/published/self_correction_reward_noise.json

It reads ``synthetic_experiment/evaluate_wrong_reward.ipynb`` at COMMIT (default HEAD) with
``git show``, finds the one code cell that calls ``evaluate(`` and prints the five curves, and
parses the numpy arrays printed in that cell's text output. Nothing is digitised from a plot: the
notebook's GD curves exist only inside its PNG output and are left out.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

REPOSITORY = "yifeiwang77/Self-Correction"
PATH = "synthetic_experiment/evaluate_wrong_reward.ipynb"
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the notebook's `for p in [0, 0.25, 0.5, 0.75, 1]`, printed in this order
TS = list(range(2, 16))  # its evaluate() returns eval_losses[2:16]; the plotting cell uses t_values = range(2, 16)


def _git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, *args], check=True, capture_output=True, text=True).stdout


def _cell(nb: dict) -> tuple[int, str]:
    """(index, printed text) of the code cell that runs evaluate() and prints its curves."""
    hits = [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            and "= evaluate(" in "".join(c["source"]) and "print(eval_losses_0" in "".join(c["source"])]
    if len(hits) != 1:
        raise ValueError(f"{PATH}: expected one cell that calls evaluate() and prints the curves, found {len(hits)}")
    i, cell = hits[0]
    # stderr carries tqdm's progress bars ("[05:26<00:00, ...]"); the print() goes to stdout
    texts = ["".join(o["text"]) for o in cell.get("outputs", []) if o.get("output_type") == "stream"
             and o.get("name") == "stdout"]
    arrays = [t for t in texts if t.strip()]
    if len(arrays) != 1:
        raise ValueError(f"{PATH} cell {i}: expected one text output holding the printed arrays, found {len(arrays)}")
    return i, arrays[0]


def extract(git_dir: str, commit: str = "HEAD") -> dict:
    sha = _git(git_dir, "rev-parse", commit).strip()
    nb = json.loads(_git(git_dir, "show", f"{sha}:{PATH}"))
    index, text = _cell(nb)
    curves = [[float(v) for v in body.split()] for body in re.findall(r"\[([^\]]*)\]", text)]
    if len(curves) != len(LEVELS) or any(len(c) != len(TS) for c in curves):
        raise ValueError(f"{PATH} cell {index}: expected {len(LEVELS)} arrays of {len(TS)} numbers, got "
                         f"{[len(c) for c in curves]}")
    return {
        "repository": f"https://github.com/{REPOSITORY}",
        "path": PATH,
        "commit": sha,
        "blob": _git(git_dir, "rev-parse", f"{sha}:{PATH}").strip(),
        "cell_index": index,
        "cell_source_first_line": "".join(nb["cells"][index]["source"]).strip().splitlines()[0],
        "learner": ("the published base transformer (GPT-2, 20 layers, 3 heads, width 96, interleaved tokens), one "
                    "training run with clean rewards (conf/train-n_layer-20.yaml: batch 256, lr 1e-4, 3000 steps, "
                    "unseeded), loaded from ../models/alignment-n_layer-20/FFN_True_Softmax_True/state.pt"),
        "metric": "1 - cos(prediction, W* x), averaged over one batch of 256 evaluation contexts (no interval)",
        "corruption": ("shown rewards only: each replaced by a fresh U(0, 1) draw with probability p (random_replace); "
                       "the responses are built from the true rewards; one corruption draw per level"),
        "x_axis": "t = number of complete (x, y, r) triplets seen before the prediction (read at x token t)",
        "ts": TS,
        "levels": list(LEVELS),
        "nmse": {str(p): c for p, c in zip(LEVELS, curves)},
        "left_out": ("the notebook's GD curves (GD[p], 50 - 25p Adam steps) are only drawn into the cell's PNG "
                     "output, never printed, so they are not extracted"),
        "mapping": (
            "Same quantity as icalign's: normalised MSE 1 - cos(y_hat_t, y*) at t seen triplets (docs/theory.md "
            "section 4), and the same corruption: icalign's `replace` at level p (icalign.core.tasks.replace_random: "
            "each shown reward becomes a fresh U(0, 1) draw with probability p; responses keep their true mixing). "
            "It matches icalign's reward-noise result for the transformer trained at p = 0 ('TF trained clean') "
            "evaluated at p, at t = 2..15 of icalign's t = 1..19, and the full size matches the published model "
            "and training protocol. It does not map onto icalign's transformers trained at p > 0. The published "
            "numbers are one unseeded model on one batch of contexts with one corruption draw: they carry no "
            "interval, so a difference from icalign's curves is shown, not judged."),
        "extracted_by": "docs/published/extract_self_correction.py",
    }


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    print(json.dumps(extract(*sys.argv[1:]), indent=1))
