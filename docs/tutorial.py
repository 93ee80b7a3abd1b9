# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # icalign tutorial: transformers vs gradient descent on in-context alignment
#
# Each context holds a query x, N candidate responses y_j and rewards r_j from a critic; the
# learner must output a response close to the hidden answer y* (docs/theory.md). The claim
# under test: a transformer reading such a context can do what gradient descent (GD) on a
# ranking loss (Plackett-Luce, PL) does with a linear policy y_hat = W x fitted to the same
# context. This notebook walks through the six things you will do most:
#
# 1. vary an architecture and compare it with GD learners on the same contexts;
# 2. run a hand-built transformer whose forward pass *is* a GD step, and check it against the
#    closed form and `jax.grad`;
# 3. sweep a reward-corruption model over its levels, transformer and GD side by side;
# 4. load a saved training run and plot it inline;
# 5. add a corruption model and train with another loss;
# 6. look at where a trained model's heads attend.
#
# It is a jupytext "percent" file: open it as a notebook, or run it as a script
# (`python docs/tutorial.py`). It writes only under the working folder: `runs/` (the training
# runs of sections 3 and 5) and `results/tutorial/` (PNG copies of the figures); both are ignored by git.

# %%
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import icalign
from icalign import config as C
from icalign import model as M
from icalign.analysis import evaluate as E
from icalign.analysis.attention import best_candidate_attention
from icalign.core import keys
from icalign.core.metrics import normalised_mse, unit
from icalign.core.stats import summarise
from icalign.experiments import tf_vs_gd
from icalign.io import save_figure
from icalign.viz.style import NMSE_LABEL, band, floats, new_figure

# The one size switch. ICALIGN_TUTORIAL_SIZE=quick (the default) takes a few minutes on a
# laptop CPU and gives curves worth reading; tiny is what tests/test_tutorial.py runs (a
# handful of steps and contexts: seconds, numbers meaningless). Nothing below depends on the
# size except through this dict.
SIZES = {
    "quick": dict(steps=1000, batch=64, chunk=50, checkpoint_every=250, contexts=256, sensitivity_contexts=32,
                  sweep_seeds=3, construction_contexts=256),
    "tiny": dict(steps=4, batch=8, chunk=2, checkpoint_every=4, contexts=8, sensitivity_contexts=0,
                 sweep_seeds=2, construction_contexts=8),
}
SIZE = os.environ.get("ICALIGN_TUTORIAL_SIZE", "quick")
if SIZE not in SIZES:
    raise ValueError(f"ICALIGN_TUTORIAL_SIZE must be one of {sorted(SIZES)}, got {SIZE!r}")
S = SIZES[SIZE]
print(f"size {SIZE}: {S}; jax {jax.__version__} on {jax.default_backend()}")

FIGURES = Path("results/tutorial")


def show(fig, name: str) -> None:
    """Save ``fig`` as results/tutorial/<name>.png (through icalign's one writer) and display
    that PNG when running in a notebook. A Figure made without pyplot has no display hook of
    its own, and a script has nowhere to show it, so the PNG serves both."""
    path = save_figure(fig, FIGURES / name, formats=("png",))[0]
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # plain Python: the file is the output
        return
    if get_ipython() is not None:
        display(Image(filename=str(path)))


# %% [markdown]
# ## 1. Vary an architecture and compare it with GD
#
# An experiment's config is a frozen dataclass (`model`, `train`, `eval`, `seed`, `seeds`);
# `icalign.config.override` changes it from `"dotted.key=value"` strings, parsing each value
# to the field's type and validating the result before anything compiles. We start from the
# quick preset of `tf-vs-gd` (2 softmax layers, 2 heads, width 32, stacked tokens: one token
# per candidate) and ask whether a deeper, *linear*-attention model without FFN still behaves
# like GD. Linear attention is the setting of the classic "transformers learn in-context by
# gradient descent" constructions; here the loss is a ranking loss, not least squares.
#
# `run(cfg)` with `out=None` trains in memory (`seeds` models in one program), evaluates on fresh
# contexts and writes nothing: the result dict carries the normalised MSE 1 - cos(y_hat_t, y*) per
# number of in-context examples t for the transformer and two GD learners fitted on the first t
# candidates (Adam at lr 0.1, the published baseline, and plain GD): `res["comparison"]` for the
# first seed, `res["nmse"]` over every seed and context, with `res["claims"]`, the training
# health `res["health"]` and the trivial predictors' errors `res["reference"]`; and the figure
# under `res["figures"]`.

# %%
# The architecture change under study (the same at every size).
VARIANT = ["model.n_layers=3", "model.n_heads=4", "model.attention=linear", "model.ffn=false", "train.lr=3e-4"]


def budget(size: dict) -> list[str]:
    """The compute budget of a size as overrides (at the quick size: the preset's own values)."""
    return [f"train.steps={size['steps']}", f"train.batch={size['batch']}", f"train.chunk={size['chunk']}",
            f"train.checkpoint_every={size['checkpoint_every']}", f"eval.contexts={size['contexts']}",
            f"eval.sensitivity_contexts={size['sensitivity_contexts']}"]


BUDGET = budget(S)
variant_cfg = C.override(tf_vs_gd.QUICK, VARIANT + BUDGET)
print(C.to_toml(variant_cfg))
# The same run from the shell (it would write results/tf-vs-gd/variant-<hash>/):
print("icalign run tf-vs-gd " + " ".join(f"--set {a}" for a in VARIANT + BUDGET))
print("variant hash:", C.short_hash(variant_cfg))

# %%
variant_res = tf_vs_gd.run(variant_cfg, out=None)


def nmse_table(cmp: dict) -> str:
    """Mean normalised MSE per t, one column per learner. Rows follow the result's own t axis
    (cmp["t"]), so nothing assumes that t starts at 1."""
    names = list(cmp["nmse"])
    means = {k: floats(cmp["nmse"][k]["mean"]) for k in names}
    lines = ["  t  " + "  ".join(f"{k:>11}" for k in names)]
    lines += [f"{t:3d}  " + "  ".join(f"{means[k][i]:11.3f}" for k in names) for i, t in enumerate(cmp["t"])]
    return "\n".join(lines)


print(f"normalised MSE, mean over {variant_res['comparison']['n_contexts']} contexts "
      f"(1 = a random direction):")
print(nmse_table(variant_res["comparison"]))
variant_fig = variant_res["figures"][""]
show(variant_fig, "1_variant_vs_gd")

# %% [markdown]
# The same variant from the command line (`--set` once per key; `icalign run tf-vs-gd --help`
# lists every key). At the quick size the budget keys above are the preset's own values, so
# this is the same config as this section's (same hash); the CLI writes the result JSON and
# figure to `results/tf-vs-gd/variant-<hash>/` and keeps the training run under `runs/`:
#
# ```bash
# icalign run tf-vs-gd --set model.n_layers=3 --set model.n_heads=4 --set model.attention=linear \
#     --set model.ffn=false --set train.lr=3e-4
# ```
#
# Add `--show-config` to print the resolved config as TOML (and save it for `--config FILE`).

# %% [markdown]
# ## 2. A hand-built transformer that is a GD step, checked against the closed form
#
# `icalign.construct` builds transformer weights (an ordinary `Params` for an ordinary
# `ModelConfig`, run by the same `model.apply`) whose output at the query token is
# `steps` gradient steps on the PL loss with the squared-distance reward
# s_j = -beta/2 ||y_hat - y_j||^2, starting from y_hat_0 = W0 x:
#
#     y_hat <- y_hat - eta * dL_PL/dy_hat.
#
# Each PL term takes one block (two softmax heads: one selects the next-best candidate by
# reward, one forms the PL softmax over the remaining candidates; a ReLU FFN retires the
# selected one), so one step over N candidates takes N - 1 blocks. For the linear policy
# y_hat = W x with a shared query x, dL/dW = (dL/dy_hat) x^T, so this equals GD on W with
# step eta / ||x||^2, seen at x. We check the transformer against two independent
# references: the closed-form GD of `icalign.gd.gradient_descent`, and `jax.grad` of
# `icalign.losses.plackett_luce`. Everything runs in float64, where "equal" means equal up to
# rounding through all the layers (below 1e-9). `separated_contexts` draws contexts that meet
# the construction's preconditions (distinct rewards with a minimum gap).

# %%
N_C, D_C, STEPS_C, ETA, BETA = 6, 3, 2, 0.2, 0.8  # 2 GD steps over 6 candidates: 10 blocks


def closed_form(spec, ctx):
    """Closed-form reference: ``spec.steps`` GD steps on W with step eta / ||x||^2, seen at x."""
    def one(x, ys, r):
        W = icalign.gd.gradient_descent(jnp.asarray(spec.W0), x, ys, r, spec.eta / jnp.dot(x, x), spec.steps,
                                        "sqdist", spec.beta)
        return W @ x
    return jax.jit(jax.vmap(one))(ctx.x, ctx.ys, ctx.rewards)


def autodiff(spec, ctx):
    """Autodiff reference: the same steps taken on y_hat with jax.grad of the PL loss."""
    def one(x, ys, r):
        loss = lambda y: icalign.losses.plackett_luce(icalign.losses.sqdist_reward(y, ys, spec.beta), r)
        y = jnp.asarray(spec.W0) @ x
        for _ in range(spec.steps):
            y = y - spec.eta * jax.grad(loss)(y)
        return y
    return jax.jit(jax.vmap(one))(ctx.x, ctx.ys, ctx.rewards)


with jax.enable_x64(True):  # the construction's identities are checked in double precision
    k_w0, k_ctx = jax.random.split(jax.random.PRNGKey(0))
    W0 = np.asarray(jax.random.normal(k_w0, (D_C, D_C), jnp.float64))
    spec = icalign.construct.spec_for(N_C, D_C, W0, eta=ETA, beta=BETA, steps=STEPS_C)
    construction_ctx = icalign.construct.separated_contexts(k_ctx, S["construction_contexts"], N_C, D_C)
    y_transformer = icalign.construct.run(spec, construction_ctx)  # preconditions are checked first
    y_closed = closed_form(spec, construction_ctx)
    y_autodiff = autodiff(spec, construction_ctx)
    construction_errors = {
        "transformer vs closed form": float(jnp.max(jnp.abs(y_transformer - y_closed))),
        "transformer vs jax.grad": float(jnp.max(jnp.abs(y_transformer - y_autodiff))),
        "closed form vs jax.grad": float(jnp.max(jnp.abs(y_closed - y_autodiff))),
    }

cc = spec.config()
print(f"construction: {cc.n_layers} blocks, {cc.n_heads} heads, width {cc.d_model}, dtype {y_transformer.dtype}; "
      f"{S['construction_contexts']} contexts")
for name, err in construction_errors.items():
    print(f"  max abs error, {name}: {err:.2e}")
construction_error = max(construction_errors.values())

# %% [markdown]
# ## 3. A corruption sweep: transformer and GD under a noisy critic
#
# The critic's scores are what the learner sees; the truth is fixed. `icalign.tasks` has four built-in
# corruption models of the shown rewards (`replace`: each reward replaced by a fresh U(0, 1)
# with probability p, the published one; `gaussian`; `reverse`; `subset_reversal`), each with
# a default range of levels in `DEFAULT_LEVELS`. The evaluation draws the corrupted rewards
# once (`corrupted_rewards`, shape (contexts, levels, N)) and feeds the *same* corrupted
# contexts to every learner, so differences between learners are not sampling noise.
#
# We train the quick preset's model (softmax attention) for a few seeds, all seeds in one
# vmapped program, in the run folder `runs/run-<hash>` (the hash covers both configs and the
# seeds). `train_or_load` is `icalign.train.train(..., run_root="runs")` with checkpoints,
# resuming a partial run, except that a finished run with these settings is loaded instead
# of retrained (`train` itself refuses to overwrite it), so this cell can run twice.
#
# Intervals are 95% Student-t intervals (`icalign.core.stats.summarise`): over seeds for the
# transformer (each trained model is one sample), over contexts for the GD learners (they
# have no training seed).

# %%
SWEEP_MODEL = tf_vs_gd.QUICK.model
SWEEP_TRAIN = C.override(tf_vs_gd.QUICK.train, {k: S[k] for k in ("steps", "batch", "chunk", "checkpoint_every")})
SWEEP_SEEDS = tuple(range(S["sweep_seeds"]))
CORRUPTION = "replace"  # any key of icalign.tasks.CORRUPTIONS
LEVELS = icalign.tasks.DEFAULT_LEVELS[CORRUPTION]

trained = icalign.train.train_or_load(SWEEP_MODEL, SWEEP_TRAIN, seeds=SWEEP_SEEDS, run_root="runs")
run_folder = trained.run_dir.name  # the name under runs/; section 4 loads the run by it
last = min(50, SWEEP_TRAIN.steps)
print(f"run folder runs/{run_folder}: {len(SWEEP_SEEDS)} seeds x {SWEEP_TRAIN.steps} steps; training loss "
      f"over the last {last} steps, per seed: {', '.join(f'{v:.3f}' for v in trained.losses[:, -last:].mean(axis=1))}")

# %%
# Evaluation keys come from the seed's evaluation stream: never a training batch.
k_eval_ctx, k_corrupt, k_gd = keys.eval_keys(0, 3)
sweep_ctx = icalign.tasks.sample_contexts(k_eval_ctx, S["contexts"], SWEEP_MODEL.d, SWEEP_MODEL.n)
shown = E.corrupted_rewards(k_corrupt, sweep_ctx, CORRUPTION, LEVELS)  # (contexts, levels, N)
curves = {"transformer": E.transformer_curves(trained.params, SWEEP_MODEL, sweep_ctx, shown),  # (R, L, B, T)
          "adam": E.gd_curves(k_gd, sweep_ctx, shown, "adam"),                               # (L, B, T)
          "gd": E.gd_curves(k_gd, sweep_ctx, shown, "gd")}


def level_summaries(c: E.Curves, over: str) -> list:
    """summarise() of the normalised MSE at every level, ``over`` "seeds" or "contexts": the
    level axis is second in the transformer's (runs, levels, contexts, t) and first in a GD
    learner's (levels, contexts, t)."""
    axis = 1 if over == "seeds" else 0
    return [summarise(np.take(c.nmse, i, axis=axis), over) for i in range(c.nmse.shape[axis])]


sweep = {"corruption": CORRUPTION, "levels": list(LEVELS), "t": curves["transformer"].t.tolist(),
         "nmse": {name: level_summaries(c, "seeds" if name == "transformer" else "contexts")
                  for name, c in curves.items()}}
t_last = sweep["t"][-1]
print(f"normalised MSE at t = {t_last} under '{CORRUPTION}' corruption, mean [95% interval]:")
print("  level  " + "  ".join(f"{name:>24}" for name in sweep["nmse"]))
for i, level in enumerate(sweep["levels"]):
    cells = [f"{s[i]['mean'][-1]:.3f} [{s[i]['low'][-1]:.3f}, {s[i]['high'][-1]:.3f}]"
             for s in sweep["nmse"].values()]
    print(f"  {level:5.2f}  " + "  ".join(f"{c:>24}" for c in cells))


def sweep_figure(sweep: dict):
    """Normalised MSE at the largest t against the corruption level, with 95% intervals."""
    fig, axes = new_figure(1, 1, figsize=(5.5, 4.0))
    ax = axes[0, 0]
    styles = {"transformer": ("C0", "-", "transformer (interval over seeds)"),
              "adam": ("C1", "--", "GD, Adam (interval over contexts)"),
              "gd": ("C2", ":", "plain GD (interval over contexts)")}
    for name, per_level in sweep["nmse"].items():
        color, ls, label = styles[name]
        at_last = {k: [s[k][-1] for s in per_level] for k in ("mean", "low", "high")}  # [-1]: the largest t
        band(ax, sweep["levels"], at_last, color, label=label, ls=ls)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(f"corruption level ({sweep['corruption']})")
    ax.set_ylabel(f"{NMSE_LABEL} at t = {sweep['t'][-1]}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


sweep_fig = sweep_figure(sweep)
show(sweep_fig, "3_corruption_sweep")

# %% [markdown]
# ## 4. Load a saved run and plot it inline
#
# A run folder holds its configs (`meta.json`), a per-chunk log and a checkpoint. `load_run`
# takes the folder, or its name under `run_root` (what results store as `run_folder`), and
# returns the params with a leading run axis, both configs and the per-step losses. Figures
# are `matplotlib.figure.Figure` objects made by `icalign.viz.style.new_figure`, never through
# pyplot, so nothing here touches a global backend or figure registry.
#
# Left: the training loss of every seed (online PL loss, cosine reward). Right: the loaded
# model's predictions after all N - 1 seen candidates against the truth, as unit vectors (the
# cosine reward and the metric ignore scale): coordinates on the diagonal mean y_hat points
# along y*.

# %%
loaded = icalign.train.load_run(run_folder, run_root="runs")
mc = loaded.model_config
print(f"loaded runs/{run_folder}: {mc.n_layers} layers, {mc.n_heads} heads, {mc.attention} attention, "
      f"{len(loaded.runs)} runs, losses {loaded.losses.shape}, finished={loaded.finished}")
y_hat = M.predict(loaded.params_of(0), sweep_ctx, mc)[:, -1]  # (B, D): after N - 1 candidates, clean rewards
loaded_nmse = np.asarray(normalised_mse(y_hat, sweep_ctx.y_star))


def run_figure(losses: np.ndarray, y_hat, y_star, smooth: int, title: str):
    """Training loss per seed (moving average over ``smooth`` steps) and unit(y_hat) against
    unit(y*), coordinate by coordinate."""
    fig, axes = new_figure(1, 2, figsize=(10.5, 4.0))
    ax, ax2 = axes[0]
    kernel = np.ones(smooth) / smooth
    for r, seed_losses in enumerate(losses):
        ax.plot(np.arange(smooth, len(seed_losses) + 1), np.convolve(seed_losses, kernel, "valid"), label=f"seed {r}")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"training loss (mean over {smooth} steps)")
    ax.legend(fontsize=8)
    u_hat, u_star = np.asarray(unit(y_hat)).ravel(), np.asarray(unit(y_star)).ravel()
    ax2.scatter(u_star, u_hat, s=6, alpha=0.5)
    ax2.plot([-1, 1], [-1, 1], color="grey", lw=0.8, ls=":")
    ax2.set_xlabel("unit(y*) coordinates")
    ax2.set_ylabel("unit(y_hat) coordinates, seed 0")
    ax2.set_title(f"normalised MSE {float(jnp.mean(normalised_mse(y_hat, y_star))):.3f} "
                  f"over {len(y_hat)} contexts", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


run_fig = run_figure(loaded.losses, y_hat, sweep_ctx.y_star, smooth=max(1, min(50, loaded.losses.shape[1] // 4)),
                     title=f"runs/{run_folder}: {mc.n_layers} layers, {mc.n_heads} heads, {mc.attention} attention, "
                           f"{loaded.train_config.steps} steps")
show(run_fig, "4_loaded_run")
print(f"seed 0, clean rewards, t = {mc.n - 1}: normalised MSE {loaded_nmse.mean():.3f} "
      f"over {len(loaded_nmse)} contexts")

# %% [markdown]
# ## 5. Extend: a new corruption model and another training loss
#
# Corruption models and ranking losses are registries, `icalign.tasks.CORRUPTIONS` and
# `icalign.losses.LOSSES`. A config names an entry (`train.corruption`, `train.loss`, also
# through `--set` on the command line), and training, the health gate, the references, the GD
# learners and every sweep look the name up there, so a registered entry reaches all of them.
# A corruption model is a pure function `fn(key, rewards, level)` of the shown rewards, with
# its default sweep levels and allowed range; level 0 must be the clean critic (checked when it
# is registered). A loss is added the same way, `icalign.losses.register_loss(name, fn)` with
# `fn(y_hat, ys, rewards, mask)` (see `icalign.losses.Loss`). A user-registered function is
# part of a run's identity: a hash of its source goes into the run folder's name, so editing
# the function and rerunning trains afresh instead of loading the stale run.
#
# Here: a critic that abstains, showing 0.5 (which ranks nothing) with probability p, and a
# model trained under it at p = 0.25 with the squared-distance PL loss (`sqdist_pl`, the
# theory's reward; the built-in losses are `cosine_pl`, the published one, `sqdist_pl` and
# `cosine_bt`, Bradley-Terry on every pair). Both models, this one and the cosine-PL model of
# section 3 (seed 0), are then evaluated under the new corruption on the same contexts.

# %%
def abstain(key, rewards, p):
    """With probability p the critic abstains: it shows 0.5 instead of its score."""
    return jnp.where(jax.random.bernoulli(key, p, rewards.shape), 0.5, rewards)


icalign.tasks.register_corruption("abstain", abstain, levels=(0.0, 0.5, 1.0), range=(0.0, 1.0), level_name="p")
EXT_TRAIN = C.override(SWEEP_TRAIN, ["loss=sqdist_pl", "corruption=abstain", "noise=0.25"])
ext = icalign.train.train_or_load(SWEEP_MODEL, EXT_TRAIN, seeds=SWEEP_SEEDS[:1], run_root="runs")
print(f"run folder {ext.run_dir}: {EXT_TRAIN.loss} under '{EXT_TRAIN.corruption}' p = {EXT_TRAIN.noise}; "
      f"training loss over the last {last} steps {ext.losses[0, -last:].mean():.3f}")

EXT_LEVELS = icalign.tasks.DEFAULT_LEVELS["abstain"]
ext_shown = E.corrupted_rewards(k_corrupt, sweep_ctx, "abstain", EXT_LEVELS)  # (contexts, levels, N)
seed0 = jax.tree_util.tree_map(lambda a: a[:1], trained.params)
ext_nmse = {"cosine PL, clean critic (section 3)": E.transformer_curves(seed0, SWEEP_MODEL, sweep_ctx, ext_shown),
            f"{EXT_TRAIN.loss}, abstaining critic": E.transformer_curves(ext.params, SWEEP_MODEL, sweep_ctx, ext_shown)}
print(f"normalised MSE at t = {t_last}, mean over {S['contexts']} contexts, under the abstaining critic:")
print("  p      " + "  ".join(f"{name:>36}" for name in ext_nmse))
for i, level in enumerate(EXT_LEVELS):
    print(f"  {level:4.2f}   " + "  ".join(f"{float(c.nmse[0, i, :, -1].mean()):>36.3f}" for c in ext_nmse.values()))
icalign.tasks.unregister_corruption("abstain")  # leave this session's registry as it was

# %% [markdown]
# ## 6. Where the heads look: attention on the best candidate
#
# `model.apply(params, tokens, config, capture="attention")` returns every layer's per-head
# attention weights, (n_layers, ..., n_heads, T, T), as the forward pass uses them.
# `best_candidate_attention` reads, for every layer and head, the mass that the read-out row for
# t seen candidates puts on the best of the first t (by the shown rewards), against the mass a
# uniform row would put there (lift = best - uniform) and the mass on the worst one
# (contrast = best - worst). The construction's selection head (section 2) has lift near
# 1 - uniform and contrast near 1. The head with the largest lift is chosen on the first half of
# the contexts; every number printed is from the second half (t >= 2).

# %%
attn = best_candidate_attention(loaded.params_of(0), mc, sweep_ctx)
print(f"runs/{run_folder}, seed 0: lift and contrast per head, test-half mean over t >= 2")
for layer in range(mc.n_layers):
    cells = [attn["heads"][f"layer {layer} head {h}"] for h in range(mc.n_heads)]
    print(f"  layer {layer}: " + "; ".join(f"head {h} lift {c['lift']:+.3f} contrast {c['contrast']:+.3f}"
                                          for h, c in enumerate(cells)))
print(f"  chosen on the fitting half: layer {attn['fit']['layer']} head {attn['fit']['head']}")
