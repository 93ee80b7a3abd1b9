"""Multi-round self-correction: convergence, uncertainty and the latent concept (issue 6;
THEORY.md section 5).

Part 1, critic sweep. Mixed-linear contexts (d = 5) with N0 = 9 clean candidates; T = 10
rounds; each round the learner answers, a critic scores the answer and it is appended
(``icalign.selfcorrect``). Learners: the published Adam baseline, plain GD, and a small
transformer trained here on the published task and loss (stacked layout, which a small model
learns within the quick budget). Critics: exact, Gaussian noise, flip probability, biased
towards the wrong answer. Per round: normalised MSE, choice entropy, spread across critic
draws, convergence round; the gain after T rounds against the critic's pairwise ranking
accuracy (Pearson r, p-value over critic settings).

Part 2, latent concept (``icalign.concept``). A transformer trained on the right-vs-wrong
family mixture with noisy critic scores and instructions; linear probes read the concept per
layer. The loop (N0 = 5 candidates, T = 10) with the task's critic scoring towards the true
concept's family or towards the other family (the wrong concept's critic), with and without
contrary instructions at rounds 2, 5 and 8; the probe's concept activation and the model's
uncertainty per round against the exact Bayes posterior.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from icalign import concept, model, plots_selfcorrect, results, selfcorrect, stats, tasks

DESCRIPTION = "self-correction rounds: critic sweep (GD + transformer), latent concept vs Bayes posterior"
NAME = "self_correction"
INJECTIONS = (2, 5, 8)

SIZES = {
    "quick": dict(contexts=64, draws=4, rounds=10, n0=9, gd_steps=50,
                  tf_layers=3, tf_heads=2, tf_width=32, tf_steps=500, tf_batch=64, tf_lr=1e-3,
                  c_n=16, c_layers=3, c_heads=2, c_width=32, c_steps=1000, c_batch=32, c_lr=1e-3, c_beta=5.0,
                  probe_contexts=512, c_loop_contexts=256, c_rounds=10),
    "full": dict(contexts=256, draws=8, rounds=10, n0=9, gd_steps=50,
                 tf_layers=8, tf_heads=4, tf_width=64, tf_steps=3000, tf_batch=256, tf_lr=3e-4,
                 c_n=16, c_layers=6, c_heads=4, c_width=64, c_steps=4000, c_batch=128, c_lr=5e-4, c_beta=5.0,
                 probe_contexts=2048, c_loop_contexts=1024, c_rounds=10),
}

CONCEPT_TASK = dict(strength=0.7, critic_sigma=0.5, critic_flip=0.0, spread=0.5, instr_prob=0.5, prior=0.5)


def add_arguments(p):
    p.add_argument("--tf-steps", type=int, default=None, help="override the transformers' training steps")
    p.add_argument("--no-transformer", action="store_true",
                   help="GD learners only (skip both transformers and the concept part)")


def _ci(values, axis=0):
    mean, low, high = stats.mean_ci(values, axis=axis)
    return {"mean": mean, "low": low, "high": high}


def _summary(m: dict, acc: np.ndarray, i: int, rounds: int, tol: float) -> dict:
    """Per-setting summary of ``selfcorrect.round_metrics`` output (index i of the settings)."""
    nmse = m["nmse"][i]  # (B, M, T+1)
    per_ctx = lambda a: a.mean(axis=1)  # average the draws first: contexts are the samples
    gain_T = nmse[..., 0] - nmse[..., -1]
    conv = m["conv_round"][i].ravel()
    mean_curve = per_ctx(nmse).mean(0)
    mean_change = np.abs(np.diff(mean_curve))
    return {
        "nmse": _ci(per_ctx(nmse)),
        "gain": _ci(per_ctx(m["gain"][i])),
        "gain_T": {k: float(v) for k, v in _ci(per_ctx(gain_T)).items()},
        "entropy": _ci(per_ctx(m["entropy"][i])),
        "entropy_all": _ci(per_ctx(m["entropy_all"][i])),
        "spread": _ci(m["spread"][i]),
        "change": _ci(per_ctx(m["change"][i])),
        "conv_round": {"median": float(np.median(conv)), "mean": float(conv.mean()),
                       "frac_converged": float(np.mean(conv <= rounds)),
                       "mean_curve": int(selfcorrect.convergence_round(mean_change[None], tol)[0])},
        "critic_accuracy": float(np.mean(acc[i])),
        "loop_accuracy": float(np.nanmean(m["loop_accuracy"][i])),
    }


def _critic_sweep(key, learner, ctx, critics, names, size, tol):
    from scipy.stats import pearsonr

    t0 = time.perf_counter()
    traj, acc = selfcorrect.sweep(key, ctx, critics, learner, rounds=size["rounds"], draws=size["draws"])
    m = selfcorrect.round_metrics(traj, ctx.y_star, tol=tol)
    acc = np.asarray(acc)
    secs = time.perf_counter() - t0
    settings = {n: _summary(m, acc, i, size["rounds"], tol) for i, n in enumerate(names)}
    y = np.array([settings[n]["gain_T"]["mean"] for n in names])
    gain_ctx = (m["nmse"][..., 0] - m["nmse"][..., -1]).mean(axis=2)  # (S, B)
    corr = {}
    # accuracy on the candidates (a property of the critic alone) and on the loop's own
    # answers (what the first paper's self-checking accuracy measures, but endogenous)
    for which, per_ctx in (("critic_accuracy", acc), ("loop_accuracy", np.nanmean(m["loop_accuracy"], axis=2))):
        x = np.array([settings[n][which] for n in names])
        r, p = pearsonr(x, y)
        ok = np.isfinite(per_ctx)
        rc, pc = pearsonr(per_ctx[ok], gain_ctx[ok])  # pooled over (setting, context) pairs
        corr[which] = {"r": float(r), "p": float(p), "n": len(names), "pooled_r": float(rc),
                       "pooled_p": float(pc), "pooled_n": int(ok.sum())}
    return {"settings": settings, "correlation": corr, "seconds_incl_compile": secs}


def _train_ml_transformer(seed, size):
    from icalign import train

    cfg = model.ModelConfig(n_layers=size["tf_layers"], n_heads=size["tf_heads"], d_model=size["tf_width"],
                            d=5, n=size["n0"] + size["rounds"] + 1, token_layout="stacked")
    tcfg = train.TrainConfig(lr=size["tf_lr"], batch=size["tf_batch"], steps=size["tf_steps"], chunk=50,
                             checkpoint_every=50 * max(1, size["tf_steps"] // 50))
    t0 = time.perf_counter()
    res = train.train(cfg, tcfg, seeds=(seed,), checkpoint=False, progress=True)
    secs = time.perf_counter() - t0
    losses = res.losses[0]
    info = {"model_config": cfg.to_dict(), "train_config": tcfg.to_dict(), "seconds": secs,
            "loss_first50": float(losses[:50].mean()), "loss_last50": float(losses[-50:].mean())}
    return res.params_of(0), cfg, info


def _concept_part(key, size, tol):
    task = concept.ConceptTask(n=size["c_n"], **CONCEPT_TASK)
    cfg = concept.concept_config(task, n_layers=size["c_layers"], n_heads=size["c_heads"], d_model=size["c_width"])
    k_train, k_probe, k_loop, k_ctx = jax.random.split(key, 4)
    t0 = time.perf_counter()
    params, losses = concept.train_concept(k_train, task, cfg, steps=size["c_steps"], batch=size["c_batch"],
                                           lr=size["c_lr"], beta=size["c_beta"])
    t_train = time.perf_counter() - t0
    probes, rep = concept.fit_layer_probes(k_probe, params, cfg, task, size["probe_contexts"])
    best = int(np.argmax(rep["corr_bayes"]))  # the layer whose probe tracks Bayes best (held out)
    print(f"[{NAME}] concept model: {t_train:.0f} s training; probe accuracy per layer "
          f"{np.round(rep['accuracy'], 3).tolist()} (Bayes {rep['bayes_accuracy']:.3f}); "
          f"r(probe, Bayes) {np.round(rep['corr_bayes'], 3).tolist()}")

    rounds = size["c_rounds"]
    n0 = task.n - rounds - 1
    # the task's critic, once towards the true concept's family and once towards the other
    # family (the other concept's critic: evidence for the wrong concept)
    _, task_critic = selfcorrect.make_critics({"task": (task.critic_sigma, 0.0, 0.0)})
    groups = (("task critic", "target"), ("wrong-concept critic", "other"))
    loop_names = [g[0] for g in groups]
    batch = concept.sample_concept(k_ctx, task, size["c_loop_contexts"], n=n0, instr_prob=0.0)
    learner = concept.concept_learner(params, cfg)
    conditions, tracking, raw = {}, {}, {}
    for cond, inj in (("plain", ()), ("injected", INJECTIONS)):
        outs = [concept.concept_loop(k_loop, params, cfg, task, task_critic, batch, rounds, probes, injections=inj,
                                     critic_towards=towards, learner=learner) for _, towards in groups]
        axis = {"probe_logit": 1, "probe_cos": 1, "instructions": None}
        out = {k: (outs[0][k] if axis.get(k, 0) is None else np.concatenate([o[k] for o in outs], axis=axis.get(k, 0)))
               for k in outs[0]}
        raw[cond] = out
        conditions[cond] = {}
        for i, name in enumerate(loop_names):
            pl = out["probe_logit"][best, i]
            conditions[cond][name] = {
                "bayes_post": _ci(out["bayes_post"][i]),
                "bayes_logit": _ci(out["bayes_logit"][i]),
                "probe_prob": _ci(1 / (1 + np.exp(-pl))),
                "probe_logit": _ci(pl),
                "probe_cos": _ci(out["probe_cos"][best, i]),
                "nmse": _ci(out["nmse"][i]),
                "entropy": _ci(out["entropy"][i]),
                "mutual_info": _ci(out["mutual_info"][i]),
                "instruction": _ci(out["instructions"]),
            }
    # Does the probe track the Bayes posterior? Per context x round correlation of log-odds
    # (plain instructions), and the injection dips of both.
    for i, name in enumerate(loop_names):
        o = raw["plain"]
        bl, pl = o["bayes_logit"][i], o["probe_logit"][best, i]
        per_layer = [float(np.corrcoef(bl.ravel(), o["probe_logit"][l, i].ravel())[0, 1])
                     for l in range(o["probe_logit"].shape[0])]
        pp = 1 / (1 + np.exp(-pl))
        from scipy.stats import pearsonr, spearmanr

        r, p = pearsonr(bl.ravel(), pl.ravel())
        rho, p_rho = spearmanr(bl.ravel(), pl.ravel())
        r_prob, _ = pearsonr(o["bayes_post"][i].ravel(), pp.ravel())
        slope = np.polyfit(np.arange(rounds + 1), bl.mean(0), 1)[0]
        dips = {}
        for t in INJECTIONS:
            inj = raw["injected"]
            dips[str(t)] = {
                "bayes_logit_change": float(inj["bayes_logit"][i][:, t].mean() - o["bayes_logit"][i][:, t].mean()),
                "probe_logit_change": float(inj["probe_logit"][best, i][:, t].mean() - pl[:, t].mean()),
                "bayes_logit_change_next": float(inj["bayes_logit"][i][:, min(t + 1, rounds)].mean()
                                                 - o["bayes_logit"][i][:, min(t + 1, rounds)].mean()),
                "probe_logit_change_next": float(inj["probe_logit"][best, i][:, min(t + 1, rounds)].mean()
                                                 - pl[:, min(t + 1, rounds)].mean()),
            }
        tracking[name] = {"corr": float(r), "p": float(p), "spearman": float(rho), "spearman_p": float(p_rho),
                          "corr_prob": float(r_prob), "corr_per_layer": per_layer,
                          "bayes_logit_mean": bl.mean(0), "probe_logit_mean": pl.mean(0),
                          "bayes_slope_per_round": float(slope), "injection": dips,
                          "probe_round_corr": float(np.corrcoef(bl.mean(0), pl.mean(0))[0, 1])}
    # the corrected analytic law with the measured start and per-round steps
    l0 = float(raw["plain"]["bayes_logit"][0][:, 0].mean())
    deltas = {name: tracking[name]["bayes_slope_per_round"] for name in loop_names}
    curves = {f"{n}: Delta = {d:+.2f}": np.asarray(concept.posterior_rounds(l0, d, rounds)) for n, d in deltas.items()}
    curves["Delta = -0.5 (locks in C-)"] = np.asarray(concept.posterior_rounds(l0, -0.5, rounds))
    return {
        "task": task.to_dict(), "model_config": cfg.to_dict(),
        "train": {"steps": size["c_steps"], "batch": size["c_batch"], "lr": size["c_lr"], "beta": size["c_beta"],
                  "loss": "full-context PL on true rewards (beta * cosine)", "seconds": t_train,
                  "loss_first50": float(losses[:50].mean()), "loss_last50": float(losses[-50:].mean())},
        "probes": {**rep, "best_layer": best},
        "critic_names": loop_names, "n0": n0,
        "conditions": conditions, "tracking": tracking,
        "analytic": {"l0": l0, "curves": curves},
    }


def run(args) -> int:
    t_start = time.perf_counter()
    out = results.claim_output(args.out / f"{NAME}.json", args.force)
    size_name = "quick" if args.quick else "full"
    size = dict(SIZES[size_name])
    if args.tf_steps is not None:
        size["tf_steps"] = size["c_steps"] = args.tf_steps
    tol = 1e-3
    key = jax.random.PRNGKey(args.seed)
    k_ctx, k_sweep, k_tf, k_concept = (jax.random.fold_in(key, i) for i in range(4))
    ctx = tasks.sample_contexts(k_ctx, size["contexts"], 5, size["n0"])
    names, critics = selfcorrect.make_critics()

    learners = {}
    for kind, label in (("adam", f"Adam baseline (lr 0.1, {size['gd_steps']} steps)"),
                        ("gd", f"plain GD (lr 1.0, {size['gd_steps']} steps)")):
        res = _critic_sweep(k_sweep, selfcorrect.gd_learner(kind, size["gd_steps"]), ctx, critics, names, size, tol)
        learners[kind] = {"label": label, **res}
        c = res["correlation"]["critic_accuracy"]
        print(f"[{NAME}] {kind}: critic sweep in {res['seconds_incl_compile']:.1f} s; "
              f"r(accuracy, gain) = {c['r']:.3f} (p = {c['p']:.2g})")
    concept_res = None
    if not args.no_transformer:
        params, cfg, info = _train_ml_transformer(args.seed, size)
        res = _critic_sweep(k_sweep, selfcorrect.transformer_learner(params, cfg), ctx, critics, names, size, tol)
        learners["transformer"] = {
            "label": f"transformer ({cfg.n_layers} layers, width {cfg.d_model}, {size['tf_steps']} steps, stacked)",
            "train": info, **res}
        c = res["correlation"]["critic_accuracy"]
        print(f"[{NAME}] transformer: trained in {info['seconds']:.0f} s, critic sweep in "
              f"{res['seconds_incl_compile']:.1f} s; r(accuracy, gain) = {c['r']:.3f} (p = {c['p']:.2g})")
        concept_res = _concept_part(k_concept, size, tol)

    res = {
        "experiment": NAME,
        "size": size_name,
        "sizes": size,
        "seed": args.seed,
        "rounds": size["rounds"],
        "n0": size["n0"],
        "concept_rounds": size["c_rounds"],
        "injections": list(INJECTIONS),
        "tolerance": tol,
        "critic_names": names,
        "critic_settings": {n: v for n, v in selfcorrect.CRITIC_SETTINGS.items()},
        "metrics": {
            "nmse": "1 - cos(y_hat_t, y*), mean over contexts (draws averaged first), 95% t-interval",
            "gain_T": "nmse_0 - nmse_T per context",
            "entropy": "entropy of softmax_j cos(y_hat, y_j) over the N0 initial candidates (nats)",
            "spread": "1 - |mean unit y_hat| across critic-noise draws",
            "conv_round": f"first round from which 1 - cos(y_hat_t, y_hat_t-1) < {tol} stays below; "
                          "rounds + 1 = not converged",
            "critic_accuracy": "critic pairwise ranking accuracy on the N0 candidates (fresh draws)",
            "loop_accuracy": "critic pairwise ranking accuracy over pairs with at least one of the loop's answers",
        },
        "learners": learners,
        "concept": concept_res,
        "wall_seconds": None,
        "hardware": results.hardware(),
    }
    res["wall_seconds"] = time.perf_counter() - t_start
    results.write_json(out, res)
    figs = plots_selfcorrect.all_figures(results.read_json(out), out.parent, NAME)
    print(f"[{NAME}] wrote {out} and {len(figs)} figure files in {time.perf_counter() - t_start:.0f} s")
    for lname, L in learners.items():
        conv = {n: L["settings"][n]["conv_round"]["median"] for n in names}
        print(f"  {lname}: median convergence round per critic {conv}")
    return 0
