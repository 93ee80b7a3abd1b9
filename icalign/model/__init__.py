"""The one transformer: a frozen config, a typed params pytree, ``init`` and a pure ``apply``.

Trained weights (``icalign.train``) and hand-built weights (the constructions of docs/theory.md
section 3) are the same :class:`Params` type fed to the same :func:`apply`; every
architecture variant is a static toggle of :class:`ModelConfig`, never a copy of the model.

Architecture (GPT-2, pre-LN; docs/theory.md section 4)::

    h_0   = read_in(token) + pos                      (pos only if ``positional``)
    h_l+1 = h_l + Attn(LN1(h_l));  h_l+1 += FFN(LN2(h_l+1))   (LN is the identity if not
                                                                ``layer_norm``; FFN only if ``ffn``)
    out   = read_out(LN_f(h_L))                       (LN_f only if ``final_norm``)

    Attn(h) = sum_heads  w(q k^T / sqrt(head_dim), mask) v  W_o,  with the causal mask kept
    by every variant of w:
        softmax: w = softmax over visible keys          (GPT-2)
        linear : w = logits * visible                   (scaled, unnormalised: the published
                                                          "no softmax" variant)
        relu   : w = relu(logits) * visible             (unnormalised)

Token layouts (see :func:`tokenize` and :func:`readout_positions`):

* ``interleaved`` (published): x_1, y_1, r_1, x_2, y_2, r_2, ... with the reward padded to D
  dims (r, 0, ..., 0); 3N tokens of width D. The prediction is read at each x token: token 3n
  has seen the n complete triplets before it, n = 0..N-1.
* ``stacked`` (the theory's): a query token [x; 0; 0; 0; 0] followed by one token
  [x; y_j; r_j; 1; ||y_j||^2 / 2] per candidate; N+1 tokens of width 2D+3. The flag (1 on
  candidates, 0 on the query) is the construction's "alive" bit. ||y_j||^2 / 2 is there for
  the softmax identity of docs/theory.md section 2 (the key-side logit bias -beta ||y_j||^2 / 2):
  it is not a linear function of the other features, so no read-in could supply it, and a
  trained model is free to ignore it. Position n (0-indexed) has seen exactly
  the candidates 1..n, so the prediction for "n seen" is read at position n: the query token
  for n = 0, the n-th candidate's own token for n >= 1. :func:`predict` returns n = 0..N-1
  like the interleaved layout; ``apply`` also gives position N (all N seen).

"n seen" holds only with ``causal=True`` (the default, and kept by every ablation: the
published no-softmax and no-FFN variants dropped the mask and leaked the answer).

CPU speed: dense layers act on 2-D (tokens x features) arrays, the batch and time axes folded
together; only attention uses (batch, heads, time, head_dim). The layers are a ``lax.scan``
over a stacked :class:`Block` (leading axis ``n_layers``), so compile time does not grow with
depth.
"""

from icalign.model.config import ACTIVATIONS, ATTENTIONS, BASE, LAYOUTS, ModelConfig, config_hash
from icalign.model.forward import LN_EPS, apply, attention_weights, predict, readout, resume
from icalign.model.params import (FFN, Attention, Block, Dense, LayerNorm, Params, check_params, config_param_count,
                                  init, param_count, stack_blocks, unstack_blocks)
from icalign.model.tokens import readout_positions, seq_len, token_dim, tokenize

__all__ = [
    "ModelConfig", "BASE", "ATTENTIONS", "ACTIVATIONS", "LAYOUTS", "LN_EPS", "config_hash",
    "Dense", "LayerNorm", "Attention", "FFN", "Block", "Params", "init", "param_count", "config_param_count", "check_params",
    "stack_blocks", "unstack_blocks", "apply", "predict", "readout", "resume", "attention_weights",
    "tokenize", "readout_positions", "token_dim", "seq_len",
]
