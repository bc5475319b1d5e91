"""Train state and the jitted train step (gradient accumulation, z-loss, NEFTune, AdamW,
token-chunked loss, document masking on or off, LoRA).

The state is a plain dict that Orbax saves as-is and restores onto any mesh: {'step', 'params',
'opt_state', 'rng'}, with LoRA also 'lora' and ['extra'] (docs/training.md, "LoRA").
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from swallow_jax import parallel
from swallow_jax.model import Llama, init_params, param_logical_axes
from swallow_jax.model import lora as lora_lib
from swallow_jax.model.llama import head_kernel
from swallow_jax.train.loss import chunked_cross_entropy, weighted_cross_entropy

State = dict[str, Any]
Batch = Mapping[str, jax.Array]
BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_weights")
TRAINABLE_KEYS = ("lora", "extra")  # The LoRA state's trained parts; "params" stays frozen.


def _lora_on(lora_cfg: lora_lib.LoraConfig | None) -> bool:
  return lora_cfg is not None and lora_cfg.rank > 0


def trainable(state: State) -> Any:
  """What the optimizer updates: state['params'] (full training), or {'lora': adapter, ['extra':
  fully trained params]} with LoRA."""
  if "lora" not in state:
    return state["params"]
  return {k: state[k] for k in TRAINABLE_KEYS if k in state}


def checkpointed(state: State) -> State:
  """The part of the state a checkpoint holds: all of it, or with LoRA all but the frozen base."""
  return state if "lora" not in state else {k: v for k, v in state.items() if k != "params"}


def state_from_params(params: Any, tx: optax.GradientTransformation, seed: int,
                      lora_cfg: lora_lib.LoraConfig | None = None) -> State:
  """A fresh train state (step 0, new optimizer moments) around existing parameters.

  With `lora_cfg.rank` > 0, `params` become the frozen base; a new fp32 adapter (B = 0: step 0
  is the base model) and fp32 copies of the `lora_cfg.trainable` params are what trains."""
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "rng": jax.random.fold_in(jax.random.PRNGKey(seed), 1)}
  if _lora_on(lora_cfg):
    state["lora"] = lora_lib.init_lora_like(
        params, lora_cfg, jax.random.fold_in(jax.random.PRNGKey(seed), 2))
    if lora_cfg.trainable:
      state["extra"] = {k: jax.tree.map(lambda x: x.astype(jnp.float32),
                                        lora_lib.adapter_leaf(params, (k,)))
                        for k in lora_cfg.trainable}
  state["opt_state"] = tx.init(trainable(state))
  return state


def init_state(model_cfg: Any, tx: optax.GradientTransformation, seed: int,
               lora_cfg: lora_lib.LoraConfig | None = None) -> State:
  """Randomly initialized parameters (key = PRNGKey(seed) folded with 0) in a fresh state."""
  params = init_params(model_cfg, jax.random.fold_in(jax.random.PRNGKey(seed), 0))
  return state_from_params(params, tx, seed, lora_cfg)


def lora_shardings(model_cfg: Any, lora_cfg: lora_lib.LoraConfig, abstract_lora: Any,
                   mesh: jax.sharding.Mesh) -> Any:
  """The adapter's shardings: each A/B like the kernel it adapts (`lora_logical_axes`)."""
  return parallel.param_shardings(abstract_lora, lora_lib.lora_logical_axes(model_cfg, lora_cfg),
                                  mesh)


def _trainable_shardings(param_shardings: Any, lora_sh: Any, extra_keys: Any) -> Any:
  out = {"lora": lora_sh}
  if extra_keys:
    out["extra"] = {k: param_shardings[k] for k in extra_keys}
  return out


def state_shardings(abstract_state: State, tx: optax.GradientTransformation, param_shardings: Any,
                    mesh: jax.sharding.Mesh, lora_shardings: Any = None) -> State:
  """Shardings of every state entry; a LoRA state (with 'lora') needs `lora_shardings`."""
  rep = parallel.replicated(mesh)
  out = {"step": rep, "rng": rep, "params": param_shardings}
  if "lora" in abstract_state:
    if lora_shardings is None:
      raise ValueError("state_shardings: a LoRA state needs lora_shardings (see lora_shardings())")
    out.update(_trainable_shardings(param_shardings, lora_shardings, abstract_state.get("extra")))
  out["opt_state"] = parallel.opt_state_shardings(tx, abstract_state["opt_state"], trainable(out),
                                                  mesh)
  return out


def _microbatches(batch: Batch, n: int) -> Batch:
  """[B, ...] -> [n, B/n, ...] with microbatch i = rows i, i+n, ...: every device keeps its rows."""
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={n}")
    x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, *parallel.BATCH_AXES))
  return jax.tree.map(split, {k: batch[k] for k in BATCH_KEYS})


def make_train_step(model_cfg: Any, tx: optax.GradientTransformation, lr: optax.Schedule, *,
                    z_loss: float = 0.0, grad_accum_steps: int = 1, neftune_alpha: float = 0.0,
                    loss_chunk_size: int = 0, document_masking: bool = True,
                    param_shardings: Any = None, lora_cfg: lora_lib.LoraConfig | None = None,
                    lora_shardings: Any = None) -> Callable[[State, Batch], tuple[State, dict]]:
  """Returns the pure step `(state, batch) -> (state, metrics)`; jit it with `jit_train_step`.

  The objective is normalized by the loss weight of the whole global batch, so accumulating n
  microbatches gives the same gradient as one big batch. Metrics (fp32 scalars): those of
  metrics.jsonl (docs/training.md, "Files in the workdir"); a non-finite param_norm means the new
  state is unusable. `loss_chunk_size` (0 = full logits) and `document_masking`: docs/training.md,
  "Loss and attention options". `lora_cfg` with rank > 0 trains a LoRA state (gradients of
  `trainable(state)` only); `param_shardings` and `lora_shardings` keep the accumulated gradients
  sharded like what trains (None: unconstrained).
  """
  if loss_chunk_size < 0:
    raise ValueError(f"loss_chunk_size must be >= 0 (0 = full logits), got {loss_chunk_size}")
  use_lora = _lora_on(lora_cfg)
  model = Llama(model_cfg, lora=lora_cfg if use_lora else None)

  def loss_fn(train, frozen, mb, rng, total_weight):
    rngs = {"neftune": rng} if neftune_alpha > 0 else {}
    if use_lora:  # The base enters as a constant: its gradient is never formed.
      params = {**jax.lax.stop_gradient(frozen), **train.get("extra", {})}
      variables = {"params": params, "lora": train["lora"]}
      if lora_cfg.dropout > 0:
        rngs["lora_dropout"] = jax.random.fold_in(rng, 1)
    else:
      params, variables = train, {"params": train}
    pos, seg = (mb["positions"], mb["segment_ids"]) if document_masking else (None, None)
    out = model.apply(variables, mb["inputs"], pos, seg, max(neftune_alpha, 0.0),
                      return_hidden=loss_chunk_size > 0, rngs=rngs)
    if loss_chunk_size > 0:
      ce, z = chunked_cross_entropy(out, head_kernel(model_cfg, params), mb["targets"],
                                    mb["loss_weights"], z_loss, loss_chunk_size)
    else:
      ce, z = weighted_cross_entropy(out, mb["targets"], mb["loss_weights"], z_loss)
    return (ce + z) / total_weight, (ce, z)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  grad_shardings = param_shardings
  if use_lora:
    grad_shardings = (None if param_shardings is None or lora_shardings is None else
                      _trainable_shardings(param_shardings, lora_shardings, lora_cfg.trainable))

  def constrain(grads):
    return grads if grad_shardings is None else jax.lax.with_sharding_constraint(
        grads, grad_shardings)

  def train_step(state: State, batch: Batch) -> tuple[State, dict]:
    train, frozen = trainable(state), state["params"] if use_lora else None
    rng = jax.random.fold_in(state["rng"], state["step"])
    total = jnp.sum(batch["loss_weights"].astype(jnp.float32))
    total_weight = jnp.where(total > 0, total, 1.0)
    if grad_accum_steps == 1:
      (_, (ce, z)), grads = grad_fn(train, frozen, batch, rng, total_weight)
    else:
      def body(carry, xs):
        acc, ce_acc, z_acc = carry
        mb, i = xs
        (_, (ce, z)), g = grad_fn(train, frozen, mb, jax.random.fold_in(rng, i), total_weight)
        return (constrain(jax.tree.map(jnp.add, acc, g)), ce_acc + ce, z_acc + z), None
      zero = jnp.zeros((), jnp.float32)
      (grads, ce, z), _ = jax.lax.scan(
          body, (constrain(jax.tree.map(jnp.zeros_like, train)), zero, zero),
          (_microbatches(batch, grad_accum_steps), jnp.arange(grad_accum_steps)))
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], train)
    new_train = optax.apply_updates(train, updates)
    new_state = {**state, "step": state["step"] + 1, "opt_state": opt_state,
                 **(new_train if use_lora else {"params": new_train})}
    return new_state, {"loss": ce / total_weight, "z_loss": z / total_weight,
                       "grad_norm": grad_norm, "param_norm": optax.tree.norm(new_train),
                       "lr": jnp.asarray(lr(state["step"]), jnp.float32), "loss_tokens": total}

  return train_step


def merged_params(state: State, model_cfg: Any, lora_cfg: lora_lib.LoraConfig | None) -> Any:
  """The model a state stands for: its params, or with LoRA the base with the extra trainable
  tensors (cast to the base dtype) and the adapter merged in (a full copy)."""
  if "lora" not in state:
    return state["params"]
  params = dict(state["params"])
  for k, sub in state.get("extra", {}).items():
    params[k] = jax.tree.map(lambda x, p: x.astype(p.dtype), sub, params[k])
  return lora_lib.merge_lora(model_cfg, params, state["lora"], lora_cfg)


def jit_train_step(step_fn: Callable, shardings: State, mesh: jax.sharding.Mesh) -> Callable:
  """jit with explicit state/batch shardings; the input state is donated (updated in place)."""
  return jax.jit(step_fn, in_shardings=(shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))


def jit_init(model_cfg: Any, tx: optax.GradientTransformation, seed: int,
             shardings: State, lora_cfg: lora_lib.LoraConfig | None = None) -> Callable[[], State]:
  """Initialization compiled straight into the target shardings (no full copy on one device)."""
  return jax.jit(lambda: init_state(model_cfg, tx, seed, lora_cfg), out_shardings=shardings)


def sharded_train_step(model_cfg: Any, tx: optax.GradientTransformation, lr: optax.Schedule,
                       mesh: jax.sharding.Mesh, *, seed: int = 0,
                       lora_cfg: lora_lib.LoraConfig | None = None, **step_options: Any
                       ) -> tuple[Callable, State, State]:
  """(jitted step, abstract state, state shardings) on `mesh`, allocating nothing: the abstract
  state's ShapeDtypeStructs carry their shardings (restore into it, or `jit_init`);
  `step_options` go to `make_train_step`. Call inside `parallel.mesh_context(mesh)`."""
  lora_cfg = lora_cfg if _lora_on(lora_cfg) else None
  abstract = jax.eval_shape(lambda: init_state(model_cfg, tx, seed, lora_cfg))
  param_sh = parallel.param_shardings(abstract["params"], param_logical_axes(model_cfg), mesh)
  lora_sh = lora_shardings(model_cfg, lora_cfg, abstract["lora"], mesh) if lora_cfg else None
  shardings = state_shardings(abstract, tx, param_sh, mesh, lora_sh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  step_fn = make_train_step(model_cfg, tx, lr, **step_options, param_shardings=param_sh,
                            lora_cfg=lora_cfg, lora_shardings=lora_sh)
  return jit_train_step(step_fn, shardings, mesh), abstract, shardings
