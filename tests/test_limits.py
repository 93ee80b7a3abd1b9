"""What no weights of the architecture can do (docs/theory.md section 3.8), checked where a
number can check it: the linear-growth lemma behind "no context-independent step on W"."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from icalign import construct, gd, model, tasks


def ray(t, n=3, d=3):
    """Contexts whose query is t x0 and whose candidates and rewards are fixed."""
    rng = np.random.default_rng(0)
    x0, ys, r = rng.normal(size=d), rng.normal(size=(n, d)), np.array([0.9, 0.2, 0.55])
    f = lambda a: jnp.asarray(a, jnp.float64)
    return tasks.Context(x=f(t * x0), ys=f(ys), r_true=f(r), rewards=f(r), y_star=f(np.zeros(d)))


def growth(f, ts=(1e3, 1e4)):
    """||f(t1 x)|| / ||f(t0 x)|| for t1 = 10 t0: about 10 or less for linear growth."""
    a, b = (float(jnp.linalg.norm(f(ray(t)))) for t in ts)
    return b / a


def test_softmax_and_relu_layers_grow_at_most_linearly_in_the_query_scale(x64):
    """The lemma: with softmax attention (convex mixing) and ReLU FFNs every residual grows at
    most linearly in t, so no weights output the fixed-eta_W step, which grows like t^2.
    Linear attention multiplies tokens and escapes the lemma (the test can fail)."""
    spec = construct.spec_for(3, 3, np.zeros((3, 3)))  # y_hat_0 = 0: the PL step is constant in t
    built = lambda ctx: construct.run(spec, ctx)
    assert growth(built) <= 10.0 + 1e-9
    target = lambda ctx: gd.gd_step(jnp.zeros((3, 3)), ctx.x, ctx.ys, ctx.rewards, 0.1) @ ctx.x  # eta_W fixed
    assert growth(target) > 99.0  # quadratic: the construction cannot follow it for any weights
    base = model.ModelConfig(n_layers=3, n_heads=2, d_model=16, layer_norm=False, token_layout="stacked",
                             d=3, n=3, positional=False)
    for attention, grows in (("softmax", False), ("linear", True)):
        cfg = dataclasses.replace(base, attention=attention)
        params = model.init(jax.random.PRNGKey(1), cfg, jnp.float64)
        params = jax.tree_util.tree_map(lambda a: 20 * a, params)  # away from the small-init regime
        f = lambda ctx: model.apply(params, model.tokenize(ctx, cfg), cfg)
        assert (growth(f) > 20.0) == grows, (attention, growth(f))
