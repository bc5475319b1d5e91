r"""The whole Swallow recipe in miniature, on a CPU, in minutes (`make demo`).

    python -m swallow_jax.recipe --config=configs/demo.py --workdir=runs/demo
    python -m swallow_jax.recipe --config=configs/demo.py:micro --workdir=/tmp/demo   # seconds

Stand-ins for what the real recipe downloads:
  * a generated bilingual world (swallow_jax.demo): English and Japanese web pages and
    encyclopedia articles about invented towns, people and rivers, parallel sentences, arithmetic
    word problems, English and Japanese dialogues, and held-out evaluation tasks;
  * a sentencepiece tokenizer trained on it (carrying the Llama 3 chat special tokens);
  * "Llama 3 base": a tiny Llama pretrained from scratch on an English-heavy mixture (5% Japanese),
    and "Llama 3 Instruct": that model after SFT on English dialogues.
Then the Swallow stages, as in configs/llama3_swallow_8b.py:
  cpt          continual pretraining of the base on the Japanese-heavy mixture
  chat_vector  swallow_base + 0.5 * (instruct - base)
  sft          SFT of that on Japanese dialogues (loss on assistant turns, NEFTune alpha 5)
  eval         base, swallow_base, swallow_base_cv, swallow_instruct, and the ablation
and the parallel-corpus ablation: CPT on the same mixture without the parallel source.

Runtime (2026-11, this 2-core machine shared with other jobs): 5m52s wall, 4m17s of CPU time
(user+sys) for the whole demo; 9m26s wall when the load average was ~10. Most of it is the five
training stages (base pretraining alone is ~45%); the evaluation takes ~30 s.

Arg: '' (the demo), 'micro' (tiny sizes and a few steps: the test suite's smoke run, ~1 min),
'lora' (or 'micro,lora'): also `sft_lora`, the same Japanese SFT (data, steps, init) training only
a rank-8 LoRA adapter on all seven projections, evaluated as `swallow_instruct_lora`; the report
sets it beside full SFT, with each stage's time, trained parameters and checkpoint size.

    python -m swallow_jax.recipe --config=configs/demo.py:lora --workdir=runs/demo_lora
"""

import ml_collections

from configs import common

from swallow_jax import recipe
from swallow_jax.data.mixtures import drop_source
from swallow_jax.sweep import parse_arg

# Token shares. "Llama 3"-like pretraining: English with a little Japanese.
BASE_MIXTURE = {"en_web": 0.55, "en_wiki": 0.25, "math": 0.15, "ja_web": 0.05}
# Swallow-like CPT: mostly Japanese, some English and math kept against forgetting. The parallel
# share (10%) is far above Llama 3 Swallow's Laboro ParaCorpus share (0.9%) so that the ablation
# has something to remove at this scale.
CPT_MIXTURE = {"ja_web": 0.50, "ja_wiki": 0.10, "parallel": 0.10, "en_web": 0.10,
               "en_wiki": 0.05, "math": 0.15}
TEXT_SOURCES = ("ja_web", "ja_wiki", "en_web", "en_wiki", "parallel", "math")
CHAT_SOURCES = ("en_dialogues", "ja_dialogues")

_SIZES = {
    # scale: corpus size; steps per training stage; model; batch x length.
    "demo": dict(scale=1.0, base_steps=200, instruct_steps=30, cpt_steps=100, sft_steps=30,
                 hidden=96, layers=3, heads=4, kv_heads=2, mlp=256, vocab=1500, batch=8,
                 seq_len=256, eval_examples=60),
    "micro": dict(scale=0.05, base_steps=4, instruct_steps=2, cpt_steps=3, sft_steps=2,
                  hidden=32, layers=1, heads=2, kv_heads=1, mlp=64, vocab=1000, batch=8,
                  seq_len=64, eval_examples=4),
}


def _sources(mixture: dict[str, float]) -> list[dict]:
  return [dict(name=n, path=recipe.stage("corpus", n), weight=w) for n, w in mixture.items()]


def raw(source: str) -> str:
  """The demo_data stage's JSONL file of one source."""
  return recipe.stage("data", "raw", f"{source}.jsonl")


def _train_stage(size: dict, *, init_from: str, sources: list[dict], kind: str, steps: int,
                 peak_lr: float, neftune_alpha: float = 0.0,
                 lora_rank: int = 0) -> ml_collections.ConfigDict:
  """A recipe train stage: a complete swallow_jax.train config plus the recipe's export keys;
  `lora_rank` > 0 trains a LoRA adapter (alpha = 2 * rank) on init_from instead of every weight."""
  c = ml_collections.ConfigDict()
  c.kind = "train"
  c.export_hf = True
  c.export_dtype = "float32"  # tiny models: keep the chat vector exact
  if init_from:
    lora = dict(common.LORA_OFF, rank=lora_rank, alpha=2.0 * lora_rank) if lora_rank else dict(
        common.LORA_OFF)
    c.model = dict(preset="", lora=lora)  # architecture: init_from's config.json
  else:
    c.model = dict(preset="tiny", vocab_size=0,  # 0: the trained tokenizer's size
                   hidden_size=size["hidden"], intermediate_size=size["mlp"],
                   num_layers=size["layers"], num_heads=size["heads"],
                   num_kv_heads=size["kv_heads"], head_dim=size["hidden"] // size["heads"],
                   max_position_embeddings=512, lora=dict(common.LORA_OFF))
  c.init_from = init_from
  c.tokenizer = recipe.stage("tokenizer")
  c.data = dict(sources=sources, seq_len=size["seq_len"], global_batch_size=size["batch"],
                shuffle_seed=0, kind=kind)
  c.optimizer = dict(peak_lr=peak_lr, min_lr_ratio=0.1, warmup_steps=max(1, steps // 10),
                     decay_steps=steps, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                     clip_norm=1.0)
  c.train = dict(num_steps=steps, grad_accum_steps=1, z_loss=1e-4, neftune_alpha=neftune_alpha,
                 seed=0, log_every=max(1, steps // 50), tensorboard=True, wandb_project="")
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.checkpoint = dict(every_steps=max(1, steps // 2), every_minutes=0, keep=1, async_save=False)
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo recipe ('', 'micro', 'lora' or 'micro,lora')."""
  args = parse_arg(arg, micro=False, lora=False)
  size = _SIZES["micro" if args.micro else "demo"]
  config = ml_collections.ConfigDict()
  config.stages = ("data", "tokenizer", "corpus", "base", "instruct", "cpt", "cpt_no_parallel",
                   "chat_vector", "sft", *(("sft_lora",) if args.lora else ()), "eval")

  config.data = dict(kind="demo_data", seed=0, scale=size["scale"])
  config.tokenizer = dict(kind="tokenizer", vocab_size=size["vocab"], model_type="bpe",
                          inputs=[raw(n) for n in TEXT_SOURCES + CHAT_SOURCES])
  config.corpus = dict(
      kind="preprocess", tokenizer=recipe.stage("tokenizer"), workers=1,
      sources={**{n: dict(input=raw(n), format="text") for n in TEXT_SOURCES},
               **{n: dict(input=raw(n), format="chat") for n in CHAT_SOURCES}})

  # The stand-ins for Meta's pair.
  config.base = _train_stage(size, init_from="", sources=_sources(BASE_MIXTURE), kind="pretrain",
                             steps=size["base_steps"], peak_lr=3e-3)
  config.instruct = _train_stage(
      size, init_from=recipe.stage("base"), kind="sft", steps=size["instruct_steps"], peak_lr=1e-3,
      sources=[dict(name="en_dialogues", path=recipe.stage("corpus", "en_dialogues"), weight=1.0)])

  # The Swallow stages.
  cpt_sources = _sources(CPT_MIXTURE)
  config.cpt = _train_stage(size, init_from=recipe.stage("base"), sources=cpt_sources, kind="pretrain",
                            steps=size["cpt_steps"], peak_lr=1e-3)
  config.cpt_no_parallel = _train_stage(
      size, init_from=recipe.stage("base"), sources=drop_source(cpt_sources, "parallel"),
      kind="pretrain", steps=size["cpt_steps"], peak_lr=1e-3)
  config.chat_vector = dict(kind="chat_vector", base=recipe.stage("base"),
                            instruct=recipe.stage("instruct"), target=recipe.stage("cpt"),
                            scale=0.5)
  # A lower LR than the CPT's, as in the recipe (2e-6 vs 2.5e-5), though not as much lower: the
  # tiny model has only a few dozen steps to learn the Japanese chats.
  config.sft = _train_stage(
      size, init_from=recipe.stage("chat_vector"), kind="sft", steps=size["sft_steps"], peak_lr=3e-4,
      neftune_alpha=5.0,
      sources=[dict(name="ja_dialogues", path=recipe.stage("corpus", "ja_dialogues"), weight=1.0)])
  lora_models, lora_comparisons = {}, []
  if args.lora:
    # The same SFT, only the adapter training: LoRA wants a ~10x higher learning rate.
    config.sft_lora = _train_stage(
        size, init_from=recipe.stage("chat_vector"), kind="sft", steps=size["sft_steps"],
        peak_lr=3e-3, neftune_alpha=5.0, lora_rank=8, sources=config.sft.data.sources)
    lora_models = dict(swallow_instruct_lora=recipe.stage("sft_lora"))
    lora_comparisons = [
        dict(what="LoRA SFT", before="swallow_base_cv", after="swallow_instruct_lora",
             note="The Japanese SFT again, training only a rank-8 adapter on all seven "
                  "projections (the base frozen, alpha 16, LR 3e-3); what each SFT cost is in "
                  "the Stages table (seconds, trained params, checkpoint MB).",
             expect=dict(ja_chat_ppl="down", ja_chat_qa="up")),
        dict(what="LoRA vs full SFT", before="swallow_instruct", after="swallow_instruct_lora",
             note="What training the adapter alone gave up, or not, against updating every "
                  "weight on the same data.")]

  config.eval = dict(
      kind="eval", tokenizer=recipe.stage("tokenizer"), tasks=recipe.stage("data", "tasks"),
      batch_size=16, max_len=512, max_examples=size["eval_examples"],
      chat_tasks={f"{lang}_chat": recipe.stage("data", "chat_eval", f"{lang}_chat.jsonl")
                  for lang in ("ja", "en")},
      models=dict(base=recipe.stage("base"), swallow_base=recipe.stage("cpt"),
                  swallow_base_cv=recipe.stage("chat_vector"),
                  swallow_instruct=recipe.stage("sft"), **lora_models),
      ablations=dict(swallow_base_no_parallel=recipe.stage("cpt_no_parallel")))

  config.report = dict(
      title="Swallow recipe demo (tiny models, generated data, CPU)",
      intro=(
          "Every model here is a tiny Llama trained for minutes on a generated bilingual world, "
          "so absolute numbers mean little; what matters is which way each stage moves them. "
          "`base` stands in for Llama 3 (English-heavy pretraining), `swallow_base` is it after "
          "continual pretraining on the Japanese-heavy mixture, `swallow_base_cv` adds half the "
          "chat vector (instruct - base), and `swallow_instruct` is that after Japanese SFT. "
          "Knowledge questions (`*_qa`, `*_mc`) ask only about facts whose questions never "
          "appear in training text; the facts themselves are stated in the prose. `*_chat_qa` "
          "asks such questions in the Llama 3 chat template and counts replies that contain the "
          "answer; `*_chat_ppl` is the perplexity of reference replies in that template."),
      comparisons=[
          dict(what="Continual pretraining", before="base", after="swallow_base",
               note="Expected: Japanese perplexity falls and Japanese knowledge scores rise, "
                    "while English perplexity rises a little (some forgetting).",
               expect=dict(ja_ppl="down", ja_mc="up", ja_qa="up")),
          dict(what="Chat vector", before="swallow_base", after="swallow_base_cv",
               note="Expected: the chat vector brings the instruct model's chat format, so "
                    "chat replies improve; plain-text perplexity may rise a little.",
               expect=dict(ja_chat_ppl="down", ja_chat_qa="up")),
          dict(what="Japanese SFT", before="swallow_base_cv", after="swallow_instruct",
               expect=dict(ja_chat_ppl="down", ja_chat_qa="up")),
          dict(what="The whole recipe", before="base", after="swallow_instruct",
               expect=dict(ja_ppl="down", ja_chat_ppl="down", ja_chat_qa="up")),
          *lora_comparisons,
      ],
      ablations=[dict(
          name="swallow_base_no_parallel", reference="swallow_base",
          note="CPT on the same mixture without the parallel (Japanese-English) source, the "
               "other weights rescaled to the same total. Expected: translation scores drop.",
          expect=dict(en_ja_translation="down", ja_en_translation="down"))],
  )
  return config
