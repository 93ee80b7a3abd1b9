"""Where a head looks: does it attend to the best shown candidate, as the construction's head A
does? (docs/theory.md sections 3.2 and 7.1)

In the hand-built construction (``icalign.theory.construct``, ``icalign.theory.blocks``) every
block has a *selection* head, head A: its logit on a candidate is ``B r_j`` over the alive
candidates (eliminated ones sit ``M`` below, the query token is a sink at ``-M/2``) and its value
copies ``(y_j, r_j)`` into the G and RMAX slots. With ``B`` large its softmax is a hard argmax,
so in the first block of each GD step, where every candidate is alive, head A puts nearly all of
its mass on the highest-reward candidate among those the position sees; the FFN then eliminates
that candidate, and head A of the next block selects the best *remaining* one (the second
best overall, and so on). A transformer that runs GD the construction's way therefore has a
head whose row for "t seen" puts its mass on the best of the first t candidates; uniform mixing
puts ``1 / visible keys`` on each token.

:func:`best_candidate_attention` measures, for every layer, head and context, the attention mass
that the read-out position for t seen triplets puts on the token(s) of the best of the first t
candidates (by the shown rewards), the mass on the worst one, and the uniform baseline. Where a
candidate's tokens are, per ``ModelConfig.token_layout`` (``icalign.model.tokens``):

* ``stacked``: position 0 is the query, candidate j (1-based) is position j and the read-out for
  t seen is position t; the candidate's token is its one token.
* ``interleaved``: triplet j is positions 3(j-1), 3(j-1)+1, 3(j-1)+2 (x_j, y_j, r_j) and the
  read-out for t seen is position 3t (the next x token); the candidate's tokens are its y and r
  tokens (masses summed). Its x token is left out: with a shared query every triplet's x token
  carries the same x, so it tells nothing about the candidate.

The uniform baseline is the mass a uniform row would put on the same tokens: the candidate's
token count over the visible keys (1/(t+1) stacked, 2/(3t+1) interleaved). Only causal softmax
models are measured: without the mask the row for t sees every candidate (the "first t" is not
what it read), and the linear variants' weights are not a distribution, so "mass" and the
baseline mean nothing there. The head is chosen on the fitting half of the contexts and its
values are reported on the test half (``icalign.analysis.mechanism.halves``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from icalign import model as M
from icalign.analysis.mechanism import halves
from icalign.core.stats import summarise
from icalign.core.tasks import Context, check_context_values

__all__ = ["best_candidate_attention", "candidate_keys", "PREDICTIONS", "MIN_SEEN"]

MIN_SEEN = 2  # pooled summaries and the head choice use t >= 2, where best and worst differ

PREDICTIONS = {
    "GD": "Some head puts most of its read-out row's mass on the best shown candidate, far above the "
          "uniform baseline and above the worst one, as the construction's head A does in the first "
          "block of a GD step.",
    "minimiser": "Nothing about attention: the minimiser is defined by the answers alone, so a learner "
                 "computing it may or may not attend by reward.",
    "neither": "Nothing about attention; a model that learned nothing (random weights) attends about "
               "uniformly, with best-candidate mass near the baseline.",
}

# Per layout: (key offsets of candidate j's tokens from its triplet's first position, tokens per
# triplet, position of candidate 1's first token). Read-out positions come from model.tokens.
_CANDIDATE_TOKENS = {
    "stacked": ((0,), 1, 1, "the candidate's own token"),
    "interleaved": ((1, 2), 3, 0, "the candidate's y and r tokens (masses summed)"),
}


def candidate_keys(config: M.ModelConfig) -> np.ndarray:
    """Key positions of each candidate's tokens, (N, k): row j-1 for candidate j."""
    if config.token_layout not in _CANDIDATE_TOKENS:
        raise ValueError(f"config.token_layout must be one of {sorted(_CANDIDATE_TOKENS)} to map candidates to "
                         f"key positions, got {config.token_layout!r}")
    offsets, stride, first, _ = _CANDIDATE_TOKENS[config.token_layout]
    j = np.arange(config.n)
    return first + stride * j[:, None] + np.asarray(offsets)[None, :]


@partial(jax.jit, static_argnums=(2,))
def _masses(params, ctx, config, rows_T, best_BxTxK, worst_BxTxK):
    """(best, worst) mass, (L, B, H, T'): the attention rows at ``rows_T`` summed over the key
    positions of the chosen candidate of each context and t (one compiled call, tokenizing
    included)."""
    _, att = M.apply(params, M.tokenize(ctx, config), config, capture="attention")  # (L, B, H, T, T)
    rows = att[:, :, :, rows_T, :]  # (L, B, H, T', T)

    def mass(keys_BxTxK):
        idx = jnp.broadcast_to(keys_BxTxK[None, :, None], rows.shape[:-1] + keys_BxTxK.shape[-1:])
        return jnp.take_along_axis(rows, idx, axis=-1).sum(-1)

    return mass(best_BxTxK), mass(worst_BxTxK)


def _check(params, config, ctx):
    if not isinstance(config, M.ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    if not isinstance(ctx, Context):
        raise ValueError(f"ctx must be an icalign.tasks.Context, got {type(ctx).__name__}")
    candidate_keys(config)  # refuses a layout it cannot map
    if not config.causal:
        raise ValueError("config.causal must be True: without the causal mask the read-out row for t seen "
                         "attends to every candidate, so 'the best of the first t' is not what it read")
    if config.attention != "softmax":
        raise ValueError(f"config.attention must be 'softmax' (its rows are distributions over the visible keys), "
                         f"got {config.attention!r}: the linear variants' weights are not masses")
    M.check_params(params, config)
    check_context_values(ctx)
    if np.ndim(ctx.ys) != 3:
        raise ValueError(f"ctx must have one leading batch axis, ctx.ys (B, N, D); got shape {np.shape(ctx.ys)}")
    B, N, D = np.shape(ctx.ys)
    if (N, D) != (config.n, config.d):
        raise ValueError(f"ctx has (N, D) = ({N}, {D}) but the config says (n, d) = ({config.n}, {config.d})")
    if B < 4:
        raise ValueError(f"ctx needs at least 4 contexts (2 per half for an interval), got B={B}")
    if N < MIN_SEEN + 1:
        raise ValueError(f"config.n must be >= {MIN_SEEN + 1} (rows with at least {MIN_SEEN} candidates seen), got {N}")


def _extremes(rewards_BxN: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(best, worst) candidate index among the first t, (B, n_rows) for t = 1..n_rows. A tie for
    either is refused: the mass "on the best candidate" would depend on how it was broken."""
    best, worst = [], []
    for t in range(1, n_rows + 1):
        r = rewards_BxN[:, :t]
        for name, ext in (("highest", r.max(1)), ("lowest", r.min(1))):
            tied = np.sum(r == ext[:, None], axis=1) > 1
            if t > 1 and tied.any():
                b = int(np.flatnonzero(tied)[0])
                raise ValueError(f"ctx.rewards: context {b} has a tie for the {name} reward among its first {t} "
                                 "candidates, so its best (or worst) candidate is not defined")
        best.append(r.argmax(1))
        worst.append(r.argmin(1))
    return np.stack(best, 1), np.stack(worst, 1)


def best_candidate_attention(params, config: M.ModelConfig, ctx: Context) -> dict:
    """Attention mass on the best shown candidate, per layer, head, context and t >= 1.

    ``ctx`` holds B >= 4 contexts (one leading batch axis; the first half fits, the second is
    judged). Returns a JSON-able dict:

    * ``best``, ``worst``: (B, L, H, N-1) lists, the mass the read-out row for t seen
      (t = ``t`` = 1..N-1) puts on the token(s) of the highest-reward (lowest-reward) candidate
      among the first t, by the shown rewards; at t = 1 they are the same candidate;
    * ``uniform``: (N-1,), the mass a uniform row puts on those tokens (same for every context);
    * ``heads``: per "layer l head h" (0-based), the test half's mean over contexts and
      t >= MIN_SEEN of ``lift`` (best - uniform) and ``contrast`` (best - worst), and the mean best
      mass;
    * ``fit``: the head with the largest mean lift on the fitting half (t >= MIN_SEEN), and its
      fitting-half lift;
    * ``per_t``: for that head, ``best``, ``lift`` and ``contrast`` summarised per t over the test
      contexts (mean, 95% interval; :func:`icalign.core.stats.summarise`);
    * ``lift``, ``contrast``: that head's per-test-context means over t >= MIN_SEEN, (C_test,), for
      the lead's claims; ``test``, ``predictions``, ``halves``, ``candidate_tokens``.
    """
    _check(params, config, ctx)

    B, N = np.shape(ctx.ys)[:2]
    ts = np.arange(1, N)
    best_i, worst_i = _extremes(np.asarray(ctx.rewards, np.float64), N - 1)
    keys_NxK = candidate_keys(config)
    rows = np.asarray(M.readout_positions(config))[ts]
    best_m, worst_m = _masses(params, ctx, config, jnp.asarray(rows),
                              jnp.asarray(keys_NxK[best_i]), jnp.asarray(keys_NxK[worst_i]))
    best = np.moveaxis(np.asarray(best_m, np.float64), 1, 0)  # (B, L, H, T')
    worst = np.moveaxis(np.asarray(worst_m, np.float64), 1, 0)
    uniform = keys_NxK.shape[1] / (rows + 1.0)  # causal: row p sees keys 0..p

    split = halves(B)
    half = split["fit"][1]
    pooled = ts >= MIN_SEEN
    lift = best - uniform  # (B, L, H, T')
    contrast = best - worst
    fit_lift = lift[:half][..., pooled].mean(axis=(0, 3))  # (L, H)
    layer, head = (int(i) for i in np.unravel_index(np.argmax(fit_lift), fit_lift.shape))
    L, H = fit_lift.shape
    test = slice(half, B)
    heads = {f"layer {l} head {h}": {
        "lift": float(lift[test, l, h][:, pooled].mean()), "contrast": float(contrast[test, l, h][:, pooled].mean()),
        "best": float(best[test, l, h][:, pooled].mean())} for l in range(L) for h in range(H)}
    return {
        "test": "best-candidate attention",
        "predictions": dict(PREDICTIONS),
        "t": ts.tolist(),
        "candidate_tokens": _CANDIDATE_TOKENS[config.token_layout][3],
        "halves": split,
        "best": best.tolist(),
        "worst": worst.tolist(),
        "uniform": uniform.tolist(),
        "heads": heads,
        "fit": {"layer": layer, "head": head, "chosen_on": "fit", "rule": f"largest mean lift over t >= {MIN_SEEN}",
                "fit_lift": float(fit_lift[layer, head])},
        "per_t": {name: summarise(v[test, layer, head], unit="contexts")
                  for name, v in (("best", best), ("lift", lift), ("contrast", contrast))},
        "lift": lift[test, layer, head][:, pooled].mean(-1).tolist(),
        "contrast": contrast[test, layer, head][:, pooled].mean(-1).tolist(),
    }
