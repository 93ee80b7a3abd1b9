"""The transformer of the latent-concept task: its config and tokens, its training objective
(through the one loop), per-layer linear probes of the concept, and the self-correction loop
with it as the learner (docs/theory.md section 5).

The model is trained on the concept mixture with full-context PL (row n is scored by PL over
all N candidates, most of them unseen at row n, ranked by their true rewards; the model reads
only the noisy shown scores and the instructions; y* never enters). The published prefix loss
would not do: it scores row n on the seen candidates only, which the model reads directly, so
an instruction could never lower it. Linear probes read C from the residual stream of every
layer (``model.apply(..., capture=True)``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from functools import partial
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from icalign import model
from icalign.core.losses import cosine_reward, plackett_luce
from icalign.core.metrics import normalised_mse
from icalign.core.tasks import Context
from icalign.core.validate import check_choice, check_int, check_positive
from icalign.theory.bayes import predictive_entropy
from icalign.selfcorrect.concept import (ConceptBatch, ConceptTask, cumulative_log_odds, evidence_log_odds,
                                         loop_instructions, sample_concept)
from icalign.selfcorrect.critics import Critic
from icalign.selfcorrect.loop import sweep, transformer_learner
from icalign.training import Objective, fit, load_finished, runs_from_keys

__all__ = ["concept_config", "concept_tokens", "concept_predict", "concept_learner", "concept_loss",
           "ConceptObjective", "train_concept", "hidden_states", "Probe", "fit_probe", "probe_logit",
           "probe_cosine", "fit_layer_probes", "concept_loop"]


def concept_config(task: ConceptTask, **fields):
    """The model config for the concept task: the theory's stacked layout (one token per
    candidate holding x, y and r, which a small model learns in a few hundred steps; the
    interleaved layout needs far more) with one extra response feature, d = task.d + 1, that
    carries the instruction: the model sees the response (y; z) and the query (x; 0).
    Other fields (n_layers, ...) pass through."""
    for name in ("d", "n", "token_layout"):
        if name in fields:
            raise ValueError(f"{name} is fixed by the task for the concept model; do not pass it")
    return model.ModelConfig(d=task.d + 1, n=task.n, token_layout="stacked", **fields)


def _check_concept_cfg(cfg, d: int):
    if cfg.token_layout != "stacked" or cfg.d != d + 1:
        raise ValueError(f"the concept model needs token_layout='stacked' and d = task d + 1 = {d + 1} "
                         f"(see concept_config), got token_layout={cfg.token_layout!r}, d={cfg.d}")


def concept_tokens(x, ys, rewards, instr, cfg) -> jax.Array:
    """``model.tokenize`` (stacked) of the context with query (x; 0) and responses
    (y_j; z_j): the instruction z_j is one more feature of its response. Leading batch axes
    allowed. x (..., D), ys (..., S, D), rewards and instr (..., S)."""
    _check_concept_cfg(cfg, ys.shape[-1])
    x1 = jnp.concatenate([x, jnp.zeros_like(x[..., :1])], axis=-1)
    ys1 = jnp.concatenate([ys, instr[..., None].astype(ys.dtype)], axis=-1)
    ctx = Context(x=x1, ys=ys1, r_true=rewards, rewards=rewards, y_star=jnp.zeros_like(x1))
    return model.tokenize(ctx, cfg)


def concept_predict(params, tokens, cfg) -> jax.Array:
    """Predictions after n = 0..N-1 seen triplets, first D features of the read-out:
    tokens (..., N+1, 2(D+1)+2) -> (..., N, D)."""
    out = model.apply(params, tokens, cfg)
    return out[..., jnp.asarray(model.readout_positions(cfg)), : cfg.d - 1]


def concept_learner(params, cfg, name: str = "concept transformer"):
    """The concept model as a ``selfcorrect.Learner`` (it reads the slots' instructions)."""
    return transformer_learner(params, cfg, name, features=cfg.d - 1, reads_instructions=True,
                               tokens=lambda s, c: concept_tokens(s.x, s.ys, s.rewards, s.instr, c))


# ---------------------------------------------------------------------------------------------
# Training a transformer on the mixture
# ---------------------------------------------------------------------------------------------


def concept_loss(params, batch: ConceptBatch, cfg, ranking: str = "true", beta: float = 1.0) -> jax.Array:
    """Full-context PL with the cosine reward: row n (prediction after n seen triplets) is
    scored by PL over all N candidates, most of them unseen at row n; mean over rows and
    batch. ``ranking='true'``: the candidates are ranked by their true rewards (a noiseless
    critic's full ranking; the model itself reads only the noisy shown scores and the
    instructions); ``'shown'``: by the shown scores (a much weaker signal). y* never enters."""

    check_choice("ranking", ranking, ("true", "shown"))
    tokens = concept_tokens(batch.x, batch.ys, batch.rewards, batch.instr, cfg)
    y_hat = concept_predict(params, tokens, cfg)  # (B, N, D)
    scores = cosine_reward(y_hat, batch.ys[..., None, :, :])  # (B, N, N)
    rank_by = batch.r_true if ranking == "true" else batch.rewards
    return jnp.mean(plackett_luce(beta * scores, rank_by[..., None, :]))


@dataclasses.dataclass(frozen=True)
class ConceptObjective(Objective):
    """:func:`concept_loss` on fresh concept contexts every step (batch i from
    ``fold_in(k_data, i)``), Adam."""

    task: ConceptTask
    cfg: model.ModelConfig
    batch_size: int
    ranking: str = "true"
    beta: float = 1.0

    def init(self, run):
        return model.init(run.k_init, self.cfg)

    def batch(self, run, step):
        return sample_concept(jax.random.fold_in(run.k_data, step), self.task, self.batch_size)

    def loss(self, params, batch):
        return concept_loss(params, batch, self.cfg, self.ranking, self.beta)


def train_concept(key, task: ConceptTask, cfg, steps: int = 600, batch: int = 32, lr: float = 3e-3,
                  chunk: int = 50, progress: bool = True, ranking: str = "true", beta: float = 1.0,
                  run_dir: Optional[Path] = None, force: bool = False):
    """Train ``icalign.model`` on the concept mixture through the one training loop (Adam,
    fresh contexts every step; init and data keys split from ``key``). ``run_dir`` makes the
    run resumable, and a finished run there is loaded (``force``: retrained). Returns
    (params, losses (steps,))."""
    steps = check_int("steps", steps, minimum=1)
    batch = check_int("batch", batch, minimum=1)
    chunk = check_int("chunk", chunk, minimum=1)
    check_positive("lr", lr)
    check_choice("ranking", ranking, ("true", "shown"))
    check_positive("beta", beta)
    _check_concept_cfg(cfg, task.d)
    if cfg.n != task.n:
        raise ValueError(f"cfg.n = {cfg.n} must match task.n = {task.n} (use concept_config)")
    k_init, k_data = jax.random.split(key)
    runs_R = runs_from_keys(k_init[None], k_data[None], lr)
    objective = ConceptObjective(task, cfg, batch, ranking, float(beta))
    meta = {"objective": "concept", "task": task.to_dict(), "config": cfg.to_dict(), "batch": batch,
            "ranking": ranking, "beta": float(beta)}
    out = None if force else load_finished(objective, runs_R, [{"lr": lr}], steps=steps, run_dir=run_dir, meta=meta)
    out = out or fit(objective, runs_R, [{"lr": lr}], steps=steps, chunk=chunk, checkpoint_every=chunk,
                     run_dir=run_dir, force=force, progress=progress, desc="train concept model", meta=meta)
    return jax.tree_util.tree_map(lambda a: a[0], out.state.params), out.losses[0]


@partial(jax.jit, static_argnames=("cfg",))
def hidden_states(params, tokens: jax.Array, cfg) -> jax.Array:
    """Residual stream after the read-in (layer 0) and after each block: tokens (..., T,
    token_dim) -> (n_layers + 1, ..., T, d_model) (``model.apply(..., capture=True)``)."""
    return model.apply(params, tokens, cfg, capture=True)[1]


@struct.dataclass
class Probe:
    """Logistic probe on standardised features: logit = ((h - mu) / sd) . w + b."""

    w: jax.Array
    b: jax.Array
    mu: jax.Array
    sd: jax.Array


def fit_probe(h: jax.Array, labels: jax.Array, l2: float = 1e-3, iters: int = 30) -> Probe:
    """L2-regularised logistic regression of ``labels`` (0/1) on ``h`` (M, F), solved by
    Newton's method (F is small: the model width); ``l2`` scales the penalty l2/2 |w|^2 per
    sample. vmap it over a layer axis to fit one probe per layer."""
    iters = check_int("iters", iters, minimum=1)
    check_positive("l2", l2)
    if h.ndim != 2 or labels.shape != h.shape[:1]:
        raise ValueError(f"h must be (M, F) and labels (M,), got {h.shape} and {labels.shape}")
    mu = jnp.mean(h, axis=0)
    sd = jnp.std(h, axis=0) + 1e-6
    X = jnp.concatenate([(h - mu[None]) / sd[None], jnp.ones((h.shape[0], 1), h.dtype)], axis=1)
    y = labels.astype(h.dtype)
    m, f1 = X.shape
    reg = l2 * jnp.eye(f1, dtype=h.dtype).at[-1, -1].set(0.0)  # no penalty on the bias

    def newton(theta, _):
        p = jax.nn.sigmoid(X @ theta)
        grad = X.T @ (p - y) / m + reg @ theta
        hess = (X * (p * (1 - p))[:, None]).T @ X / m + reg
        return theta - jnp.linalg.solve(hess, grad), None

    theta, _ = jax.lax.scan(newton, jnp.zeros(f1, h.dtype), None, length=iters)
    return Probe(w=theta[:-1], b=theta[-1], mu=mu, sd=sd)


def _lead(v, h):
    """v (F,) shaped to broadcast against h (..., F) (explicit: rank promotion may raise)."""
    return v.reshape((1,) * (h.ndim - 1) + v.shape)


def probe_logit(probe: Probe, h: jax.Array) -> jax.Array:
    """The probe's log-odds of C+ for hidden states h (..., F) -> (...)."""
    return jnp.sum((h - _lead(probe.mu, h)) / _lead(probe.sd, h) * _lead(probe.w, h), axis=-1) + probe.b


def probe_cosine(probe: Probe, h: jax.Array) -> jax.Array:
    """The paper's concept activation: cos(h - mu, probe direction) with the direction
    w / sd in raw hidden-state coordinates. (..., F) -> (...)."""
    v = probe.w / probe.sd
    hc = h - _lead(probe.mu, h)
    return jnp.sum(hc * _lead(v, h), -1) / (jnp.linalg.norm(hc, axis=-1) * jnp.linalg.norm(v) + 1e-12)


def fit_layer_probes(key, params, cfg, task: ConceptTask, contexts: int = 512, l2: float = 1e-3):
    """One logistic probe per layer (read-in and every block) reading C from the hidden state
    at every read-out position n >= 1 of training-distribution contexts.

    Half the contexts fit the probes, the other half score them. Returns (probes: Probe with
    a leading layer axis, report: dict of per-layer held-out 'accuracy', 'corr_bayes' (Pearson
    r between the probe's logit and the exact Bayes log-odds, over contexts and positions)
    and 'bayes_accuracy', the accuracy of the Bayes posterior on the same held-out data)."""
    contexts = check_int("contexts", contexts, minimum=4)
    b = sample_concept(key, task, contexts)
    tokens = concept_tokens(b.x, b.ys, b.rewards, b.instr, cfg)
    pos = jnp.asarray(model.readout_positions(cfg))[1:]
    h = hidden_states(params, tokens, cfg)[:, :, pos]  # (L+1, B, N-1, W)
    bayes = cumulative_log_odds(task, evidence_log_odds(task, b.ys, b.rewards, b.instr, b.a, b.b))[:, 1:task.n]
    label = jnp.broadcast_to((b.concept > 0)[:, None], bayes.shape)
    half = contexts // 2
    n_layers, _, npos, width = h.shape
    fit = h[:, :half].reshape(n_layers, -1, width)
    probes = jax.vmap(lambda hl: fit_probe(hl, label[:half].reshape(-1), l2))(fit)
    held = jax.vmap(probe_logit)(probes, h[:, half:])  # (L+1, B-half, N-1)
    acc = jnp.mean((held > 0) == label[half:][None], axis=(1, 2))
    bh = np.asarray(bayes[half:]).ravel()
    corr = [float(np.corrcoef(np.asarray(held[l]).ravel(), bh)[0, 1]) for l in range(n_layers)]
    report = {"accuracy": np.asarray(acc), "corr_bayes": np.asarray(corr),
              "bayes_accuracy": float(jnp.mean((bayes[half:] > 0) == label[half:])),
              "contexts": contexts, "positions": int(npos)}
    return probes, report


def concept_loop(key, params, cfg, task: ConceptTask, critics: Critic, batch: ConceptBatch, rounds: int,
                 probes: Probe, injections: Sequence[int] = (), beta: float = 1.0, critic_towards: str = "target",
                 learner=None) -> dict[str, np.ndarray]:
    """Self-correction on the concept task with the concept model as learner
    (``selfcorrect.sweep``): ``batch`` holds the N0 initial candidates (no instructions) and
    ``cfg.n`` must be N0 + rounds + 1. Round t reads the instruction z_t
    (``loop_instructions``, contrary at ``injections``), answers, and its answer is scored by
    each critic setting (towards the context's target) and appended.

    Returns arrays with axes (S critic settings, B contexts, T+1 rounds), signs aligned with
    each context's true concept (positive = towards it):
      bayes_logit: exact log-odds of the true concept for an observer who knows a, b and the
                   task's critic (not the loop's: a different loop critic is a misspecified one);
      bayes_post:  its posterior probability; probe_logit, probe_cos (L+1 layers first):
                   the probes' log-odds and the paper's cosine activation; nmse against the
                   target; entropy of the model's choice over the N0 initial candidates;
                   mutual_info: the Bayes predictive's concept-ambiguity term for that choice
                   (p(j | C) = softmax_j(beta cos(target_C, y_j))).
    """
    rounds = check_int("rounds", rounds, minimum=1)
    check_choice("critic_towards", critic_towards, ("target", "other"))
    n0 = batch.ys.shape[-2]
    if cfg.n != n0 + rounds + 1:
        raise ValueError(f"cfg.n = {cfg.n} must be N0 + rounds + 1 = {n0 + rounds + 1}")
    k_instr, k_loop = jax.random.split(key)
    instructions = loop_instructions(k_instr, task, batch.concept, rounds, injections)
    towards, away = (batch.target, batch.other) if critic_towards == "target" else (batch.other, batch.target)
    # the initial candidates keep their shown scores (from the task's critic); r_true is only
    # read for the N0 initial slots' bookkeeping
    ctx = Context(x=batch.x, ys=batch.ys, r_true=batch.r_true, rewards=batch.rewards, y_star=towards)
    learner = concept_learner(params, cfg) if learner is None else learner
    traj, _ = sweep(k_loop, ctx, critics, learner, rounds, draws=1, instructions=instructions,
                                beta=beta, y_wrong=away)
    final = jax.tree_util.tree_map(lambda a: a[:, :, 0], traj.final)  # drop the draw axis
    t_idx = n0 + jnp.arange(rounds + 1)
    sign = batch.concept[None, :, None]
    ev = evidence_log_odds(task, final.ys, final.rewards, final.instr, batch.a[None], batch.b[None])
    logit = cumulative_log_odds(task, ev)[..., t_idx] * sign  # (S, B, T+1)
    tokens = concept_tokens(final.x, final.ys, final.rewards, final.instr, cfg)
    pos = jnp.asarray(model.readout_positions(cfg))[t_idx]
    h = hidden_states(params, tokens, cfg)[:, :, :, pos]  # (L+1, S, B, T+1, W)
    if probes.w.shape[0] != h.shape[0]:
        raise ValueError(f"probes must have one probe per layer ({h.shape[0]}: read-in and each block; "
                         f"fit_layer_probes), got {probes.w.shape[0]}")
    p_logit = jax.vmap(probe_logit)(probes, h) * sign[None]
    p_cos = jax.vmap(probe_cosine)(probes, h) * sign[None]
    y_hat = traj.y_hat[:, :, 0]  # (S, B, T+1, D)
    nmse = normalised_mse(y_hat, batch.target[None, :, None, :])
    # the Bayes predictive over the initial candidates and its concept-ambiguity term
    cos_a = cosine_reward(batch.a, batch.ys)  # (B, N0)
    cos_b = cosine_reward(batch.b, batch.ys)
    cond = jax.nn.softmax(beta * jnp.stack([cos_a, cos_b], axis=1), axis=-1)  # (B, 2, N0): C+, C-
    lo_plus = logit * sign  # log-odds of C+
    post = jnp.stack([jax.nn.sigmoid(lo_plus), jax.nn.sigmoid(-lo_plus)], axis=-1)  # (S, B, T+1, 2)
    mi = predictive_entropy(post, cond[None, :, None])["mutual_info"]
    out = {"bayes_logit": logit, "bayes_post": jax.nn.sigmoid(logit), "probe_logit": p_logit,
           "probe_cos": p_cos, "nmse": nmse, "entropy": traj.entropy[:, :, 0], "mutual_info": mi,
           "instructions": instructions * batch.concept[:, None]}
    return {k: np.asarray(v) for k, v in out.items()}
