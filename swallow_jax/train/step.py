"""Train state and the jitted train step (gradient accumulation, z-loss, NEFTune, AdamW,
token-chunked loss, document masking on or off).

The state is a plain dict so Orbax saves it as-is and restores it onto any mesh:
    {'step': int32[], 'params': ..., 'opt_state': ..., 'rng': uint32[2]}
"""

from collections.abc import Callable, Mapping
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from swallow_jax import parallel
from swallow_jax.model import Llama, init_params
from swallow_jax.model.llama import head_kernel
from swallow_jax.train.loss import chunked_cross_entropy, weighted_cross_entropy

State = dict[str, Any]
Batch = Mapping[str, jax.Array]
BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_weights")


def state_from_params(params: Any, tx: optax.GradientTransformation, seed: int) -> State:
  """A fresh train state (step 0, new optimizer moments) around existing parameters."""
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
          "rng": jax.random.fold_in(jax.random.PRNGKey(seed), 1)}


def init_state(model_cfg: Any, tx: optax.GradientTransformation, seed: int) -> State:
  """Randomly initialized parameters (key = PRNGKey(seed) folded with 0) in a fresh state."""
  params = init_params(model_cfg, jax.random.fold_in(jax.random.PRNGKey(seed), 0))
  return state_from_params(params, tx, seed)


def state_shardings(abstract_state: State, tx: optax.GradientTransformation, param_shardings: Any,
                    mesh: jax.sharding.Mesh) -> State:
  rep = parallel.replicated(mesh)
  return {"step": rep, "rng": rep, "params": param_shardings,
          "opt_state": parallel.opt_state_shardings(tx, abstract_state["opt_state"],
                                                    param_shardings, mesh)}


def _microbatches(batch: Batch, n: int) -> Batch:
  """[B, ...] -> [n, B/n, ...] with microbatch i = rows i, i+n, ...: every device keeps its rows.

  Entries that are None (a batch without positions/segment ids) stay None.
  """
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={n}")
    x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, *parallel.BATCH_AXES))
  return jax.tree.map(split, {k: batch[k] for k in BATCH_KEYS})


def make_train_step(model_cfg: Any, tx: optax.GradientTransformation, lr: optax.Schedule, *,
                    z_loss: float = 0.0, grad_accum_steps: int = 1, neftune_alpha: float = 0.0,
                    loss_chunk_size: int = 0, document_masking: bool = True,
                    param_shardings: Any = None) -> Callable[[State, Batch], tuple[State, dict]]:
  """Returns the pure step `(state, batch) -> (state, metrics)`; jit it with `jit_train_step`.

  The objective is normalized by the loss weight of the whole global batch, so accumulating n
  microbatches gives the same gradient as one big batch. Metrics (fp32 scalars): loss (mean
  cross-entropy, without z-loss), z_loss, grad_norm (before clipping), param_norm (after the
  update; non-finite means the new state is unusable), lr (used by this update), loss_tokens
  (sum of loss weights).

  `loss_chunk_size` > 0 computes the loss from the final hidden states `loss_chunk_size`
  positions at a time (`chunked_cross_entropy`: no [B, T, V] float32 logits); 0 = full logits.
  `document_masking=False` ignores the batch's positions and segment ids: plain causal attention
  over the whole packed row with positions 0..T-1, as Megatron-LM trains by default (and the
  fused kernels' `is_causal` path on GPU); loss weights are used as given.
  """
  if loss_chunk_size < 0:
    raise ValueError(f"loss_chunk_size must be >= 0 (0 = full logits), got {loss_chunk_size}")
  model = Llama(model_cfg)

  def loss_fn(params, mb, rng, total_weight):
    kwargs = {}
    if neftune_alpha > 0:
      kwargs = dict(neftune_alpha=neftune_alpha, rngs={"neftune": rng})
    positions, segment_ids = ((mb["positions"], mb["segment_ids"]) if document_masking
                              else (None, None))
    out = model.apply({"params": params}, mb["inputs"], positions, segment_ids,
                      return_hidden=loss_chunk_size > 0, **kwargs)
    if loss_chunk_size > 0:
      ce, z = chunked_cross_entropy(out, head_kernel(model_cfg, params), mb["targets"],
                                    mb["loss_weights"], z_loss, loss_chunk_size)
    else:
      ce, z = weighted_cross_entropy(out, mb["targets"], mb["loss_weights"], z_loss)
    return (ce + z) / total_weight, (ce, z)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def constrain(grads):
    if param_shardings is None:
      return grads
    return jax.lax.with_sharding_constraint(grads, param_shardings)

  def train_step(state: State, batch: Batch) -> tuple[State, dict]:
    params = state["params"]
    rng = jax.random.fold_in(state["rng"], state["step"])
    total = jnp.sum(batch["loss_weights"].astype(jnp.float32))
    total_weight = jnp.where(total > 0, total, 1.0)
    if grad_accum_steps == 1:
      (_, (ce, z)), grads = grad_fn(params, batch, rng, total_weight)
    else:
      def body(carry, xs):
        acc, ce_acc, z_acc = carry
        mb, i = xs
        (_, (ce, z)), g = grad_fn(params, mb, jax.random.fold_in(rng, i), total_weight)
        return (constrain(jax.tree.map(jnp.add, acc, g)), ce_acc + ce, z_acc + z), None
      zeros = constrain(jax.tree.map(jnp.zeros_like, params))
      (grads, ce, z), _ = jax.lax.scan(
          body, (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)),
          (_microbatches(batch, grad_accum_steps), jnp.arange(grad_accum_steps)))
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state,
                 "rng": state["rng"]}
    metrics = {"loss": ce / total_weight, "z_loss": z / total_weight, "grad_norm": grad_norm,
               "param_norm": optax.tree.norm(new_params),
               "lr": jnp.asarray(lr(state["step"]), jnp.float32), "loss_tokens": total}
    return new_state, metrics

  return train_step


def jit_train_step(step_fn: Callable, shardings: State, mesh: jax.sharding.Mesh) -> Callable:
  """jit with explicit state/batch shardings; the input state is donated (updated in place)."""
  return jax.jit(step_fn, in_shardings=(shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))


def jit_init(model_cfg: Any, tx: optax.GradientTransformation, seed: int,
             shardings: State) -> Callable[[], State]:
  """Initialization compiled straight into the target shardings (no full copy on one device)."""
  return jax.jit(functools.partial(init_state, model_cfg, tx, seed), out_shardings=shardings)
