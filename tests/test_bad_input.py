"""Bad input, across the Python API and the CLI: each case raises a clear error of the expected
type that names the argument (or flag, or config key), and nothing was traced, compiled or
written before it. A silently wrong answer is the worst bug: every case here once returned
one, a NaN, a deep XLA error or a traceback."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from jax import monitoring

from icalign import cli, gd, losses, tasks
from icalign import model as M
from icalign import train as T
from icalign.analysis import compare, evaluate
from icalign.core import stats
from icalign.io import ResultExistsError
from icalign.selfcorrect import gd_learner, make_critics, sweep
from icalign.theory.contexts import separated_contexts

KEY = jax.random.PRNGKey(0)
KEYS3 = np.asarray(jax.random.split(KEY, 3))  # built here: a case's own call is all that is watched
R4 = np.array([0.1, 0.7, 0.4, 0.9], np.float32)
S4 = np.array([0.3, -0.2, 0.5, 0.1], np.float32)
YS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
X3 = np.array([0.5, -1.0, 0.3], np.float32)
W3 = np.eye(3, dtype=np.float32)
NAN = float("nan")
TOK = np.zeros((2, 6, 9), np.float32)  # valid tokens of the tiny model (stacked, d = 3, n = 5)


class _Inputs:
    """Everything the cases need, built before any case is watched (numpy where possible)."""

    def __init__(self):
        self.ctx = tasks.sample_contexts(jax.random.PRNGKey(1), 4, 3, 5)
        self.clean = np.asarray(self.ctx.r_true)[:, None, :]  # (B, 1, N): one level
        self.one = tasks.mixed_linear(jax.random.PRNGKey(2), 3, 5)
        self.cfg = M.ModelConfig(n_layers=1, n_heads=1, d_model=4, d=3, n=5, token_layout="stacked")
        self.params = M.init(jax.random.PRNGKey(0), self.cfg)
        self.params_R = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], self.params)
        self.critics = make_critics()[1]
        self.learner = gd_learner("gd", 2)


def _files(root):
    """Files that are not what a command expects, in a folder of their own (each case's
    tmp_path must stay empty)."""
    import json
    import os

    (root / "a-folder.toml").mkdir()
    os.mkfifo(root / "fifo.toml")  # opening it would wait for a writer forever
    (root / "deep.toml").write_text("a = " + "[" * 100_000 + "\n")
    (root / "big.toml").write_bytes(b"# " + b"x" * (2**20 + 10) + b"\n")
    (root / "latin1.toml").write_bytes(b"seed = 1 # \xe9\n")
    (root / "list.json").write_text("[1, 2]")
    (root / "deep.json").write_text("[" * 100_000)
    (root / "bad.json").write_text("{bad")
    (root / "no-fields.json").write_text(json.dumps({"experiment": "gd_baseline"}))
    (root / "no-experiment.json").write_text(json.dumps({"config": {}}))
    # a finished result whose figures were never written (the disk filled up after the JSON)
    done = root / "out" / "gd-baseline" / "quick"
    done.mkdir(parents=True)
    (done / "gd_baseline.json").write_text(json.dumps({"experiment": "gd_baseline"}))
    return root


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    inputs = _Inputs()
    inputs.files = _files(tmp_path_factory.mktemp("files"))
    return inputs


@pytest.fixture(scope="module")
def tiny(ctx):
    return ctx.cfg, ctx.params


def _with_nan(a, i=0):
    a = np.array(a, copy=True)
    a.flat[i] = np.nan
    return a


# (id, call(ctx, tiny, tmp_path), exception type, text the message must contain)
CASES = [
    # --- keys: a seed, None, a float or a batch is not a key
    ("key int", lambda c, m, p: tasks.mixed_linear(42), ValueError, "key must be a PRNG key"),
    ("key None", lambda c, m, p: tasks.sample_contexts(None, 4), ValueError, "key must be a PRNG key"),
    ("key float", lambda c, m, p: tasks.sample_contexts(1.5, 4), ValueError, "key must be a PRNG key"),
    ("key batch", lambda c, m, p: tasks.mixed_linear(KEYS3), ValueError, "pass one key"),
    ("key wrong dtype", lambda c, m, p: tasks.mixed_linear(np.zeros(2, np.float32)), ValueError, "key"),
    ("init key int", lambda c, m, p: M.init(3, m[0]), ValueError, "key must be a PRNG key"),
    ("fit key None", lambda c, m, p: gd.fit_linear(None, X3, YS, R4, 2), ValueError, "key"),
    ("sweep key int", lambda c, m, p: gd.baseline_sweep(0, c.ctx, [0.0], [2]), ValueError, "key"),
    ("gd_curves key", lambda c, m, p: evaluate.gd_curves(7, c.ctx, c.clean), ValueError, "key"),
    # --- tasks and corruption
    ("batch 0", lambda c, m, p: tasks.sample_contexts(KEY, 0), ValueError, "batch must be >= 1"),
    ("d -1", lambda c, m, p: tasks.sample_contexts(KEY, 4, d=-1), ValueError, "d must be >= 1"),
    ("n 1", lambda c, m, p: tasks.sample_contexts(KEY, 4, n=1), ValueError, "n must be >= 2"),
    ("n float", lambda c, m, p: tasks.mixed_linear(KEY, n=4.0), ValueError, "n must be an integer"),
    ("too many contexts", lambda c, m, p: tasks.sample_contexts(KEY, 10**10), ValueError, "reduce the number of contexts"),
    ("replace p 1.5", lambda c, m, p: tasks.replace_random(KEY, R4, 1.5), ValueError, "p must lie in [0, 1]"),
    ("replace p nan", lambda c, m, p: tasks.replace_random(KEY, R4, NAN), ValueError, "p must be finite"),
    ("gaussian sigma 1e300", lambda c, m, p: tasks.gaussian_noise(KEY, R4, 1e300), ValueError, "sigma must lie in"),
    ("gaussian sigma -1", lambda c, m, p: tasks.gaussian_noise(KEY, R4, -1.0), ValueError, "sigma must lie in"),
    ("reverse p -0.1", lambda c, m, p: tasks.reverse_random(KEY, R4, -0.1), ValueError, "p must lie in"),
    ("subset p 2", lambda c, m, p: tasks.subset_reversal(KEY, R4, 2.0), ValueError, "p must lie in"),
    ("corrupt NaN reward", lambda c, m, p: tasks.replace_random(KEY, _with_nan(R4), 0.5), ValueError,
     "rewards must be finite"),
    ("corrupt unknown", lambda c, m, p: tasks.corrupt("flip", KEY, R4, 0.1), ValueError, "corruption must be one of"),
    ("levels unknown kind", lambda c, m, p: tasks.check_corruption_levels("bad", [0.1]), ValueError, "corruption"),
    # --- losses and reward models
    ("reward l2", lambda c, m, p: losses.reward_scores(X3, YS, "l2"), ValueError, "reward must be one of"),
    ("reward shapes", lambda c, m, p: losses.reward_scores(np.ones(4, np.float32), YS), ValueError, "must share D"),
    ("sqdist beta 0", lambda c, m, p: losses.sqdist_reward(X3, YS, 0.0), ValueError, "beta must be"),
    ("bt inf", lambda c, m, p: losses.bradley_terry(np.inf, np.inf), ValueError, "score_preferred must be finite"),
    ("bt shapes", lambda c, m, p: losses.bradley_terry(S4, S4[:2]), ValueError, "same shape"),
    ("pl shapes", lambda c, m, p: losses.plackett_luce(S4, R4[:3]), ValueError, "rewards must have last axis"),
    ("pl NaN reward", lambda c, m, p: losses.plackett_luce(S4, _with_nan(R4, 2)), ValueError, "rewards must be finite"),
    ("pl NaN score", lambda c, m, p: losses.plackett_luce(_with_nan(S4), R4), ValueError, "scores must be finite"),
    ("pl one candidate", lambda c, m, p: losses.plackett_luce(S4[:1], R4[:1]), ValueError, "N >= 2"),
    ("pl float mask", lambda c, m, p: losses.plackett_luce(S4, R4, np.ones(4, np.float32)), ValueError,
     "mask must be a boolean"),
    ("prefix lengths > N", lambda c, m, p: losses.prefix_plackett_luce(np.ones((3, 4), np.float32), R4,
                                                                      np.array([1, 2, 9])), ValueError, "lengths must lie"),
    ("prefix lengths < 0", lambda c, m, p: losses.prefix_plackett_luce(np.ones((3, 4), np.float32), R4,
                                                                      np.array([1, -2, 3])), ValueError, "lengths must lie"),
    ("prefix lengths float", lambda c, m, p: losses.prefix_plackett_luce(np.ones((3, 4), np.float32), R4,
                                                                        np.array([1.0, 2.0, 3.0])), ValueError,
     "lengths must be integers"),
    ("prefix 1-D scores", lambda c, m, p: losses.prefix_plackett_luce(S4, R4), ValueError, "scores must have shape"),
    # --- closed-form GD learners
    ("fit reward l2", lambda c, m, p: gd.fit_linear(KEY, X3, YS, R4, 2, reward="l2"), ValueError, "reward must be one of"),
    ("fit t 0", lambda c, m, p: gd.fit_linear(KEY, X3, YS, R4, 0), ValueError, "t must lie in [1, 4]"),
    ("fit t -5", lambda c, m, p: gd.fit_linear(KEY, X3, YS, R4, -5), ValueError, "t must lie in [1, 4]"),
    ("fit t > N", lambda c, m, p: gd.fit_linear(KEY, X3, YS, R4, 100), ValueError, "t must lie in [1, 4]"),
    ("fit t 2.5", lambda c, m, p: gd.fit_linear(KEY, X3, YS, R4, 2.5), ValueError, "t must be integers"),
    ("fit learner", lambda c, m, p: gd.fit_linear(KEY, X3, YS, R4, 2, "sgd2"), ValueError, "learner must be one of"),
    ("fit steps -1", lambda c, m, p: gd.fit_linear(KEY, X3, YS, R4, 2, steps=-1), ValueError, "steps must be >= 0"),
    ("fit lr -1", lambda c, m, p: gd.fit_linear(KEY, X3, YS, R4, 2, lr=-1.0), ValueError, "lr must be a finite number > 0"),
    ("fit lr nan", lambda c, m, p: gd.fit_linear(KEY, X3, YS, R4, 2, lr=NAN), ValueError, "lr must be a finite"),
    ("fit x shape", lambda c, m, p: gd.fit_linear(KEY, YS, YS, R4, 2), ValueError, "x must have shape (D,)"),
    ("fit rewards shape", lambda c, m, p: gd.fit_linear(KEY, X3, YS, R4[:3], 2), ValueError, "rewards must have shape"),
    ("fit NaN ys", lambda c, m, p: gd.fit_linear(KEY, X3, _with_nan(YS), R4, 2), ValueError, "ys must be finite"),
    ("pl_gradient NaN reward", lambda c, m, p: gd.pl_gradient(W3, X3, YS, _with_nan(R4)), ValueError,
     "rewards must be finite"),
    ("pl_gradient W shape", lambda c, m, p: gd.pl_gradient(W3[:2], X3, YS, R4), ValueError, "W must have shape"),
    ("pl_gradient float mask", lambda c, m, p: gd.pl_gradient(W3, X3, YS, R4, mask=np.ones(4)), ValueError,
     "mask must be a boolean"),
    ("bt_gradient shapes", lambda c, m, p: gd.bt_gradient(W3, X3, YS[0], YS[1, :2]), ValueError, ""),
    ("gd_step eta 0", lambda c, m, p: gd.gd_step(W3, X3, YS, R4, 0.0), ValueError, "eta must be a finite number > 0"),
    ("gradient_descent eta -1", lambda c, m, p: gd.gradient_descent(W3, X3, YS, R4, -1.0, 2), ValueError, "eta"),
    ("sweep ts 2.5", lambda c, m, p: gd.baseline_sweep(KEY, c.ctx, [0.0], [2.5]), ValueError, "ts must be integers"),
    ("sweep ts 0", lambda c, m, p: gd.baseline_sweep(KEY, c.ctx, [0.0], [0, 2]), ValueError, "ts must lie in [2, 5]"),
    ("sweep levels empty", lambda c, m, p: gd.baseline_sweep(KEY, c.ctx, [], [2]), ValueError, "non-empty"),
    ("sweep level 1.5", lambda c, m, p: gd.baseline_sweep(KEY, c.ctx, [1.5], [2]), ValueError, "replace level p"),
    ("sweep unbatched", lambda c, m, p: gd.baseline_sweep(KEY, c.one, [0.0], [2]), ValueError,
     "ctx must be a batch of contexts"),
    ("sweep learner", lambda c, m, p: gd.baseline_sweep(KEY, c.ctx, [0.0], [2], learner="x"), ValueError, "learner"),
    ("sweep lr 0", lambda c, m, p: gd.baseline_sweep(KEY, c.ctx, [0.0], [2], lr=0.0), ValueError, "lr must be"),
    # --- evaluation and comparison
    ("gd_curves lr -1", lambda c, m, p: evaluate.gd_curves(KEY, c.ctx, c.clean, lr=-1.0), ValueError,
     "lr must be a finite number > 0"),
    ("gd_curves lr 0", lambda c, m, p: evaluate.gd_curves(KEY, c.ctx, c.clean, lr=0.0), ValueError, "lr"),
    ("gd_curves lr nan", lambda c, m, p: evaluate.gd_curves(KEY, c.ctx, c.clean, lr=NAN), ValueError, "lr"),
    ("gd_curves NaN rewards", lambda c, m, p: evaluate.gd_curves(KEY, c.ctx, _with_nan(c.clean)),
     ValueError, "rewards must be finite"),
    ("gd_curves rewards shape", lambda c, m, p: evaluate.gd_curves(KEY, c.ctx, np.asarray(c.ctx.r_true)), ValueError, "(B=4, L, N=5)"),
    ("corrupted levels empty", lambda c, m, p: evaluate.corrupted_rewards(KEY, c.ctx, "replace", []), ValueError,
     "non-empty"),
    ("tf curves rewards shape", lambda c, m, p: evaluate.transformer_curves(
        c.params_R, m[0], c.ctx, np.asarray(c.ctx.r_true)), ValueError, "rewards must have shape"),
    ("summarise 2-D seeds", lambda c, m, p: stats.summarise(np.zeros((3, 4)), "seeds"), ValueError,
     "(seeds R, contexts B, T)"),
    ("summarise unit", lambda c, m, p: stats.summarise(np.zeros((3, 4)), "runs"), ValueError, "unit must be"),
    ("summarise one seed", lambda c, m, p: stats.summarise(np.zeros((1, 4, 2)), "seeds"), ValueError,
     "at least 2 seeds"),
    ("summarise NaN", lambda c, m, p: stats.summarise(np.full((3, 2), NAN), "contexts"), ValueError, "must be finite"),
    ("compare ts 0", lambda c, m, p: compare.compare(m[1], m[0], c.ctx, KEY, ts=[0, 1]), ValueError, "ts must be"),
    ("compare learner", lambda c, m, p: compare.compare(m[1], m[0], c.ctx, KEY, learners=("sgd",)), ValueError, "learner"),
    ("compare n_sensitivity", lambda c, m, p: compare.compare(m[1], m[0], c.ctx, KEY, n_sensitivity=-1), ValueError,
     "n_sensitivity"),
    # --- the model
    ("init_std 1e30", lambda c, m, p: M.ModelConfig(init_std=1e30), ValueError, "ModelConfig.init_std"),
    ("d_model 10**7", lambda c, m, p: M.init(KEY, M.ModelConfig(d_model=10**7, n_heads=1)), ValueError,
     "reduce n_layers, d_model"),
    ("n_heads 0", lambda c, m, p: M.ModelConfig(n_heads=0), ValueError, "ModelConfig.n_heads"),
    ("attention sigmoid", lambda c, m, p: M.ModelConfig(attention="sigmoid"), ValueError, "ModelConfig.attention"),
    ("head_dim 0", lambda c, m, p: M.ModelConfig(head_dim=0), ValueError, "ModelConfig.head_dim"),
    ("apply token width", lambda c, m, p: M.apply(m[1], np.zeros((2, 6, 4), np.float32), m[0]), ValueError,
     "tokens must have shape"),
    ("apply too long", lambda c, m, p: M.apply(m[1], np.zeros((2, 7, 9), np.float32), m[0]), ValueError, "T=7"),
    ("apply wrong params", lambda c, m, p: M.apply(m[1], np.zeros((2, 6, 9), np.float32),
                                                   dataclasses.replace(m[0], ffn=False)), ValueError, "params.blocks.ffn"),
    ("apply capture", lambda c, m, p: M.apply(m[1], np.zeros((2, 6, 9), np.float32), m[0], capture=1), ValueError,
     "capture"),
    # --- training
    ("min_seen >= n", lambda c, m, p: T.train(m[0], T.TrainConfig(min_seen=5, steps=1, batch=2, chunk=1,
                                                                  checkpoint_every=1), checkpoint=False),
     ValueError, "TrainConfig.min_seen=5 must be <= ModelConfig.n - 1"),
    ("train lr 0", lambda c, m, p: T.TrainConfig(lr=0.0), ValueError, "TrainConfig.lr"),
    ("train chunk", lambda c, m, p: T.TrainConfig(chunk=50, checkpoint_every=75), ValueError, "multiple of chunk"),
    ("train seed 0.5", lambda c, m, p: T.make_runs((0.5,)), ValueError, "seed must be an integer"),
    ("train seed 2**70", lambda c, m, p: T.make_runs((2**70,)), ValueError, "seed must be < 2**32"),
    ("train lrs -1", lambda c, m, p: T.make_runs((0,), lrs=(-1.0,)), ValueError, "learning rates"),
    ("train noise 1.5", lambda c, m, p: T.make_runs((0,), noise_levels=(1.5,)), ValueError, "replace level p"),
    ("train batch too big", lambda c, m, p: T.train(M.BASE, T.TrainConfig(batch=10**7), checkpoint=False), ValueError,
     "reduce train.batch"),
    ("train not a config", lambda c, m, p: T.train({"n_layers": 2}, checkpoint=False), ValueError, "ModelConfig"),
    # --- self-correction
    ("critic flip 1.5", lambda c, m, p: make_critics({"x": (0.0, 1.5, 0.0)}), ValueError, "flip"),
    ("critics empty", lambda c, m, p: make_critics({}), ValueError, "at least one critic"),
    ("learner kind", lambda c, m, p: gd_learner("sgd"), ValueError, "kind must be one of"),
    ("sweep rounds 0", lambda c, m, p: sweep(KEY, c.ctx, c.critics, c.learner, rounds=0), ValueError,
     "rounds must be >= 1"),
    ("sweep draws 0", lambda c, m, p: sweep(KEY, c.ctx, c.critics, c.learner, draws=0), ValueError,
     "draws must be >= 1"),
    # --- every input that decides an answer: finite, real, floating; lists converted, the rest
    # refused by name (old outcome in brackets: NaN, complex, silent, traceback, deep error)
    ("apply NaN tokens", lambda c, m, p: M.apply(m[1], _with_nan(TOK), m[0]), ValueError,
     "tokens must be finite, got nan"),  # [NaN]
    ("apply inf tokens", lambda c, m, p: M.apply(m[1], np.full_like(TOK, np.inf), m[0]), ValueError,
     "tokens must be finite, got inf"),  # [NaN]
    ("apply complex tokens", lambda c, m, p: M.apply(m[1], TOK.astype(np.complex64), m[0]), ValueError,
     "tokens must be an array of real floating numbers (such as float32), got dtype complex64"),  # [complex]
    ("apply int tokens", lambda c, m, p: M.apply(m[1], TOK.astype(np.int32), m[0]), ValueError,
     "tokens must be an array of real floating numbers (such as float32), got dtype int32"),  # [silent]
    ("apply bool tokens", lambda c, m, p: M.apply(m[1], TOK.astype(bool), m[0]), ValueError, "got dtype bool"),
    ("apply None tokens", lambda c, m, p: M.apply(m[1], None, m[0]), ValueError, "tokens must be an array"),
    ("predict NaN ys", lambda c, m, p: M.predict(m[1], c.ctx.replace(ys=_with_nan(c.ctx.ys)), m[0]), ValueError,
     "ctx.ys must be finite"),  # [NaN]
    ("predict complex ys", lambda c, m, p: M.predict(m[1], c.ctx.replace(ys=np.asarray(c.ctx.ys, np.complex64)), m[0]),
     ValueError, "ctx.ys must be an array of real floating numbers"),  # [complex]
    ("predict int x", lambda c, m, p: M.predict(m[1], c.ctx.replace(x=np.asarray(c.ctx.x, np.int32)), m[0]),
     ValueError, "ctx.x must be an array of real floating numbers"),  # [silent]
    ("predict not a Context", lambda c, m, p: M.predict(m[1], {"x": 1}, m[0]), ValueError, "ctx must be an icalign"),
    ("sweep int contexts", lambda c, m, p: gd.baseline_sweep(KEY, c.ctx.replace(ys=np.asarray(c.ctx.ys, np.int32)),
                                                             [0.0], [2]), ValueError, "ctx.ys must be an array of real"),
    ("sweep complex rewards", lambda c, m, p: gd.baseline_sweep(
        KEY, c.ctx.replace(r_true=np.asarray(c.ctx.r_true, np.complex64)), [0.0], [2]), ValueError, "ctx.r_true"),
    ("sweep t 1 only", lambda c, m, p: gd.baseline_sweep(KEY, c.ctx, [0.0], [1]), ValueError,
     "ts must lie in [2, 5]"),  # [deep error]
    ("pl str scores", lambda c, m, p: losses.plackett_luce("abcd", R4), ValueError, "scores must be an array"),
    ("pl None rewards", lambda c, m, p: losses.plackett_luce(S4, None), ValueError, "rewards must be an array"),
    ("pl complex scores", lambda c, m, p: losses.plackett_luce(S4.astype(np.complex64), R4), ValueError,
     "scores must be an array of real floating numbers"),  # [complex]
    ("bt None", lambda c, m, p: losses.bradley_terry(None, 1.0), ValueError, "score_preferred must be an array"),
    ("bt str", lambda c, m, p: losses.bradley_terry(1.0, "b"), ValueError, "score_other must be an array"),
    ("sqdist None", lambda c, m, p: losses.sqdist_reward(None, YS), ValueError, "y_hat must be an array"),
    ("cosine None ys", lambda c, m, p: losses.cosine_reward(X3, None), ValueError, "ys must be an array"),
    ("reward_scores NaN", lambda c, m, p: losses.reward_scores(_with_nan(X3), YS, "cosine"), ValueError,
     "y_hat must be finite"),  # [NaN]
    ("prefix None scores", lambda c, m, p: losses.prefix_plackett_luce(None, R4), ValueError, "scores must be an array"),
    ("pl_gradient W None", lambda c, m, p: gd.pl_gradient(None, X3, YS, R4), ValueError, "W must be an array"),
    ("gd_step W str", lambda c, m, p: gd.gd_step("W", X3, YS, R4, 0.1), ValueError, "W must be an array"),
    ("fit complex x", lambda c, m, p: gd.fit_linear(KEY, X3.astype(np.complex64), YS, R4, 2), ValueError,
     "x must be an array of real"),  # [deep error]
    ("level str", lambda c, m, p: tasks.replace_random(KEY, R4, "0.5"), ValueError,
     "p must be a real number or an array of real numbers, got '0.5'"),  # [traceback]
    ("level str sigma", lambda c, m, p: tasks.gaussian_noise(KEY, R4, "0.5"), ValueError, "sigma must be a real"),
    ("level str in sweep", lambda c, m, p: gd.baseline_sweep(KEY, c.ctx, ["0.5"], [2]), ValueError,
     "replace level p must be a real number"),  # [silent: converted]
    ("level complex", lambda c, m, p: tasks.reverse_random(KEY, R4, 0.5 + 1j), ValueError, "p must be a real number"),
    ("level None", lambda c, m, p: tasks.subset_reversal(KEY, R4, None), ValueError, "p must be a real number"),
    ("empty rewards", lambda c, m, p: tasks.replace_random(KEY, np.zeros(0, np.float32), 0.5), ValueError,
     "rewards must have a last axis of N >= 1 candidates, got shape (0,)"),  # [silent]
    ("empty reward batch", lambda c, m, p: tasks.reverse_random(KEY, np.zeros((3, 0), np.float32), 0.5), ValueError,
     "N >= 1 candidates, got shape (3, 0)"),  # [silent]
    ("empty rewards subset", lambda c, m, p: tasks.subset_reversal(KEY, np.zeros(0, np.float32), 0.5), ValueError,
     "N >= 1"),  # [deep error]
    ("rewards None", lambda c, m, p: tasks.gaussian_noise(KEY, None, 0.1), ValueError, "rewards must be an array"),
    ("separated n 1", lambda c, m, p: separated_contexts(KEY, 2, 1, 3), ValueError, "n must be >= 2, got 1"),  # [silent]
    ("separated n 0", lambda c, m, p: separated_contexts(KEY, 2, 0, 3), ValueError, "n must be >= 2, got 0"),  # [silent]
    ("separated d -1", lambda c, m, p: separated_contexts(KEY, 2, 4, -1), ValueError, "d must be >= 1"),  # [deep]
    ("separated key int", lambda c, m, p: separated_contexts(3, 2, 4, 3), ValueError, "key must be a PRNG key"),
    ("contexts_bytes d -1", lambda c, m, p: tasks.contexts_bytes(4, -1, 5), ValueError, "d must be >= 1"),  # [silent]
    ("duplicate seeds", lambda c, m, p: T.make_runs((0, 0)), ValueError,
     "entry 1 repeats entry 0 (seed 0, lr 0.0001, noise 0)"),  # [silent]
    ("train duplicate seeds", lambda c, m, p: T.train(m[0], T.TrainConfig(steps=1, batch=2, chunk=1, checkpoint_every=1),
                                                      seeds=(3, 1, 3), checkpoint=False), ValueError, "entry 2 repeats"),
    ("train nothing to rank", lambda c, m, p: T.train(
        dataclasses.replace(m[0], n=2), T.TrainConfig(min_seen=1, steps=1, batch=2, chunk=1, checkpoint_every=1),
        checkpoint=False), ValueError, "ModelConfig.n=2 with TrainConfig.min_seen=1 leaves the training loss nothing"),
    ("train lr str", lambda c, m, p: T.TrainConfig(lr="1e-3"), ValueError, "TrainConfig.lr must be a finite number"),
    # --- the command line: files that are not what they claim (old: tracebacks and one hang)
    ("--config a folder", lambda c, m, p: cli.main(["run", "gd-baseline", "--config", str(c.files / "a-folder.toml")]),
     ValueError, "a-folder.toml: is a folder, not a file"),  # [traceback]
    ("--config a FIFO", lambda c, m, p: cli.main(["run", "gd-baseline", "--config", str(c.files / "fifo.toml")]),
     ValueError, "fifo.toml: is a FIFO (named pipe), not a regular file"),  # [hang]
    ("--config nested 100k", lambda c, m, p: cli.main(["run", "gd-baseline", "--config", str(c.files / "deep.toml")]),
     ValueError, "deep.toml: not valid TOML (nested too deeply to parse)"),  # [traceback]
    ("--config 1 MiB", lambda c, m, p: cli.main(["run", "gd-baseline", "--config", str(c.files / "big.toml")]),
     ValueError, "big.toml: is 1.0 MiB, more than the 1 MiB"),  # [silent: read whole]
    ("--config not UTF-8", lambda c, m, p: cli.main(["run", "gd-baseline", "--config", str(c.files / "latin1.toml")]),
     ValueError, "latin1.toml: is not UTF-8 text"),
    ("redraw missing", lambda c, m, p: cli.main(["redraw", str(c.files / "missing.json")]), ValueError,
     "missing.json: no such file"),  # [traceback]
    ("redraw a folder", lambda c, m, p: cli.main(["redraw", str(c.files / "a-folder.toml")]), ValueError,
     "is a folder, not a file"),  # [traceback]
    ("redraw a FIFO", lambda c, m, p: cli.main(["redraw", str(c.files / "fifo.toml")]), ValueError, "is a FIFO"),
    ("redraw a JSON list", lambda c, m, p: cli.main(["redraw", str(c.files / "list.json")]), ValueError,
     "list.json: holds a JSON list, not a result"),  # [traceback]
    ("redraw nested 100k", lambda c, m, p: cli.main(["redraw", str(c.files / "deep.json")]), ValueError,
     "deep.json: not valid JSON"),
    ("redraw bad JSON", lambda c, m, p: cli.main(["redraw", str(c.files / "bad.json")]), ValueError,
     "bad.json: not valid JSON"),  # [unclear: no file named]
    ("redraw no experiment", lambda c, m, p: cli.main(["redraw", str(c.files / "no-experiment.json")]), ValueError,
     "no-experiment.json: its field 'experiment' is None"),
    ("redraw lacks fields", lambda c, m, p: cli.main(["redraw", str(c.files / "no-fields.json")]), ValueError,
     "no-fields.json: lacks the field 'protocol', which the gd-baseline figures need"),  # [traceback]
    ("readme --repo missing", lambda c, m, p: cli.main(["readme", "--repo", "/nonexistent", "--results", str(c.files),
                                                                  "--check"]),
     ValueError, "--repo /nonexistent/README.md: no such file"),  # [traceback]
    ("readme --results missing", lambda c, m, p: cli.main(["readme", "--results", "/nonexistent", "--check"]),
     ValueError, "--results /nonexistent: not a folder"),  # [traceback]
    ("rerun names redraw", lambda c, m, p: cli.main(["run", "gd-baseline", "--out", str(c.files / "out")]),
     ResultExistsError, "Its figures are missing: redraw its markdown and figures from the JSON, without rerunning, "
                        "with `icalign redraw"),  # [unclear]
    # --- degenerate configs, refused before anything is created (old: silent, deep error)
    ("t range of one candidate", lambda c, m, p: cli.main(["run", "gd-baseline", "--set", "t_min=1", "--set", "t_max=1"]),
     ValueError, "t_min must be >= 2, got 1: a fit on t = 1 candidate has nothing to rank"),  # [deep error]
    ("--set n=2 min_seen=1", lambda c, m, p: cli.main(["run", "tf-vs-gd", "--set", "model.n=2", "--set",
                                                       "train.min_seen=1"]),
     ValueError, "ModelConfig.n=2 with TrainConfig.min_seen=1 leaves the training loss nothing to rank"),  # [silent]
]

CLI_CASES = [
    ("--set n_layers 0", ["run", "tf-vs-gd", "--set", "model.n_layers=0"], ValueError, "'model.n_layers'"),
    ("--set steps 0", ["run", "tf-vs-gd", "--set", "train.steps=0"], ValueError, "'train.steps'"),
    ("--set contexts 1", ["run", "gd-baseline", "--set", "eval.contexts=1"], ValueError, "'eval.contexts'"),
    ("--set unknown", ["run", "ablations", "--set", "model.layers=2"], ValueError, "valid keys under 'model'"),
    ("--set no value", ["run", "ablations", "--set", "model.n_layers"], ValueError, "--set needs KEY=VALUE"),
    ("--set factors", ["run", "ablations", "--set", "factors=width"], ValueError, "'factors'"),
    ("--set seeds 1", ["run", "reward-noise", "--set", "seeds=1"], ValueError, "'seeds'"),
    ("--set gaussian level", ["run", "reward-noise", "--set", "train.corruption=gaussian",
                              "--set", "train_levels=0,5000"], ValueError, "sigma must lie in"),
    ("--seed 2**70", ["run", "gd-baseline", "--seed", str(2**70)], ValueError, "seed must be < 2**32"),
    ("--seed -1", ["run", "gd-baseline", "--seed", "-1"], ValueError, "seed must be >= 0"),
    ("--set verify contexts -1", ["verify", "--set", "contexts=-1"], ValueError, "'contexts'"),
    ("--set self-correction steps", ["run", "self-correction", "--set", "train.steps=-5"], ValueError, "'train.steps'"),
    ("--set necessity ns", ["run", "necessity", "--set", "ns=1"], ValueError, "'ns'"),
    ("--set precision model.precision", ["run", "precision", "--set", "model.precision=bfloat16"], ValueError,
     "model.precision must stay 'float32'"),
    ("--config missing", ["run", "gd-baseline", "--config", "/nonexistent.toml"], ValueError, "--config"),
    ("--name slash", ["run", "gd-baseline", "--name", "a/b"], ValueError, "--name must be a plain folder name"),
    ("--name reserved", ["run", "gd-baseline", "--name", "full", "--set", "eval.contexts=8"], ValueError, "reserved"),
    ("--out under /proc", ["run", "gd-baseline", "--out", "/proc/icalign"], ValueError, "--out"),
    ("--run-root under /proc", ["run", "tf-vs-gd", "--run-root", "/proc/icalign"], ValueError, "--run-root"),
    ("contexts 10**8", ["run", "gd-baseline", "--set", "eval.contexts=100000000"], ValueError, "reduce eval.contexts"),
    ("model too big", ["run", "tf-vs-gd", "--set", "model.d_model=1000000", "--set", "model.n_heads=1"], ValueError,
     "reduce train.batch"),
    ("unknown experiment", ["run", "nope"], SystemExit, "unknown name 'nope'"),
]


class _Compiles:
    """Counts tracing and compilation events (JAX's monitoring hooks) while active."""

    def __init__(self):
        self.events = []

    def __call__(self, name, *args, **kwargs):
        if name.startswith("/jax/core/compile/"):
            self.events.append(name)

    def __enter__(self):
        monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        monitoring.unregister_event_duration_listener(self)


def _refused(call, exc, needle, tmp_path):
    with _Compiles() as compiles, pytest.raises(exc) as err:
        call()
    assert needle in str(err.value), str(err.value)
    assert compiles.events == [], f"traced or compiled before refusing: {compiles.events}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, call, exc, needle", CASES, ids=[c[0] for c in CASES])
def test_api_refuses_bad_input(name, call, exc, needle, ctx, tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(lambda: call(ctx, tiny, tmp_path), exc, needle, tmp_path)


@pytest.mark.parametrize("name, argv, exc, needle", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_input(name, argv, exc, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(lambda: cli.main(argv), exc, needle, tmp_path)


def test_the_table_is_large_enough():
    assert len(CASES) + len(CLI_CASES) >= 80


def test_cli_user_errors_are_one_line_without_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["icalign", "run", "gd-baseline", "--out", "/proc/x"])
    assert cli.entry() == 2  # the input was refused before any work
    err = capsys.readouterr().err
    assert err.startswith("icalign: error: --out /proc/x") and "Traceback" not in err and err.count("\n") == 1


def test_file_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["icalign", "redraw", "gone.json"])
    assert cli.entry() == 2
    err = capsys.readouterr().err
    assert err == "icalign: error: icalign redraw: gone.json: no such file\n"


def test_numpy_scalars_are_accepted_as_the_python_numbers_they_hold():
    from icalign import config as C
    from icalign.experiment import EvalConfig

    tc = T.TrainConfig(lr=np.float32(1e-3), steps=np.int64(20), chunk=np.int32(10), checkpoint_every=np.int64(10),
                       b1=np.float64(0.9))
    assert type(tc.lr) is float and tc.lr == float(np.float32(1e-3)) and type(tc.steps) is int and tc.steps == 20
    assert C.override(T.TrainConfig(), C._flatten(__import__("tomllib").loads(C.to_toml(tc)))) == tc  # TOML round trip
    mc = M.ModelConfig(n=np.int64(7), init_std=np.float32(0.5))
    assert type(mc.n) is int and type(mc.init_std) is float and mc == M.ModelConfig(n=7, init_std=0.5)
    assert type(EvalConfig(contexts=np.int64(4)).contexts) is int


def test_lists_and_integers_are_converted_to_the_arrays_they_spell():
    scores, rewards = [0.3, -0.2, 0.5, 0.1], [1, 3, 2, 0]  # integer rewards: a ranking
    np.testing.assert_array_equal(losses.plackett_luce(scores, rewards),
                                  losses.plackett_luce(np.asarray(scores, np.float32), np.asarray(rewards, np.float32)))
    np.testing.assert_array_equal(tasks.replace_random(KEY, R4.tolist(), 0.5), tasks.replace_random(KEY, R4, 0.5))


def test_half_precision_contexts_are_swept_in_float32(ctx):
    """float16 contexts gave NaN; they are computed in float32, where they are exact: the
    answer is that of the same contexts given as float32."""
    half = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float16), ctx.ctx)
    got, _ = gd.baseline_sweep(KEY, half, [0.0, 0.5], [2, 5], steps=3)
    want, _ = gd.baseline_sweep(KEY, jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), half), [0.0, 0.5],
                                [2, 5], steps=3)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, want)


def _online_pl_rows(scores_TxN, rewards_N):
    """Row t: PL of the first t candidates ranked by reward, written out in numpy."""
    rows = []
    for t, s in enumerate(scores_TxN):
        s = s[:t][np.argsort(-rewards_N[:t], kind="stable")]
        rows.append(sum(np.log(np.exp(s[i:]).sum()) - s[i] for i in range(t)))
    return np.array(rows)


def test_the_objective_rule_matches_the_loss_it_guards():
    """check_objective(n, min_seen) accepts exactly the (n, min_seen) whose online PL loss,
    averaged over rows min_seen..n-1, is not identically 0 (computed here on random scores)."""
    rng = np.random.default_rng(0)
    for n in range(2, 7):
        for min_seen in range(1, n):
            scores, rewards = rng.normal(size=(n, n)), rng.uniform(size=n)
            ranks = abs(_online_pl_rows(scores, rewards)[min_seen:].mean()) > 1e-12
            try:
                T.check_objective(n, min_seen)
                accepted = True
            except ValueError:
                accepted = False
            assert accepted == ranks, (n, min_seen)
    with pytest.raises(ValueError, match="min_seen=4 must be <= ModelConfig.n - 1 = 3"):
        T.check_objective(4, 4)


def test_loss_trend_warns_exactly_when_the_loss_did_not_fall():
    rng = np.random.default_rng(1)
    steps = np.arange(400)
    falling = 17.7 - 0.002 * steps + rng.normal(0, 0.1, 400)  # 0.8 over the run, noise 0.1 per step
    flat = 17.7 + rng.normal(0, 0.1, 400)
    rising = 17.7 + 0.002 * steps + rng.normal(0, 0.1, 400)
    note = T.loss_trend(np.stack([falling, flat, rising]))
    assert note["window"] == 50 and note["fell"] == [True, False, False]
    assert "run 1: " in note["warning"] and "run 2: " in note["warning"] and "run 0" not in note["warning"]
    assert T.loss_trend(falling[None])["warning"] is None
    assert T.loss_trend(falling[None, :20])["window"] == 5  # a short run: a quarter of it


def test_chunk_larger_than_steps_is_one_call_and_says_so():
    assert T.TrainConfig(steps=20, chunk=50, checkpoint_every=50).notes() == [
        "train.chunk=50 > train.steps=20: the run is one compiled call of 20 steps, checkpointed at its end"]
    assert T.TrainConfig(steps=100, chunk=50, checkpoint_every=50).notes() == []
