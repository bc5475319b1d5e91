r"""The smallest real run of the trainer: a tiny Llama on generated bilingual text, CPU, < 1 minute.

    python -m swallow_jax.train --config=configs/tiny_cpt.py --workdir=/tmp/tiny_cpt
    python -m swallow_jax.train --config=configs/tiny_cpt.py --workdir=/tmp/t --config.train.num_steps=50

The corpus (deterministic templated Japanese/English sentences), a 512-piece sentencepiece
tokenizer trained on it and the preprocessed ArrayRecord shards are built on first use and cached
in $SWALLOW_JAX_CACHE (default ~/.cache/swallow_jax)/tiny_cpt-v1. Checkpoints every 50 steps, so
killing the run anywhere and starting the same command again continues with identical losses.
"""

import json
import os
import random
import shutil

import ml_collections

from configs import common

CACHE_VERSION = "tiny_cpt-v1"
VOCAB_SIZE = 512

_TOWNS = (("青山", "Aoyama"), ("北川", "Kitagawa"), ("松原", "Matsubara"), ("桜島", "Sakurajima"),
          ("高岡", "Takaoka"), ("白浜", "Shirahama"), ("森本", "Morimoto"), ("西谷", "Nishitani"))
_GOODS = (("茶", "tea"), ("米", "rice"), ("魚", "fish"), ("塩", "salt"), ("絹", "silk"),
          ("酒", "sake"))
_SIDES = (("北部", "north"), ("南部", "south"), ("東部", "east"), ("西部", "west"))


def _document(rng: random.Random) -> str:
  """A few sentences about invented towns, Japanese or English (about 2:1)."""
  sentences = []
  for _ in range(rng.randint(1, 4)):
    (town_ja, town_en), (good_ja, good_en), (side_ja, side_en) = (
        rng.choice(_TOWNS), rng.choice(_GOODS), rng.choice(_SIDES))
    people, year = rng.randint(2, 90) * 1000, rng.randint(1600, 2000)
    if rng.random() < 0.67:
      sentences.append(rng.choice((
          f"{town_ja}は{side_ja}にある町です。",
          f"{town_ja}の人口は{people}人です。",
          f"{town_ja}では{good_ja}がよく作られています。",
          f"{town_ja}は{year}年に開かれました。")))
    else:
      sentences.append(rng.choice((
          f"{town_en} is a town in the {side_en}.",
          f"{town_en} has {people} people.",
          f"{town_en} is known for its {good_en}.",
          f"{town_en} was founded in {year}.")))
  return " ".join(sentences)


def tiny_corpus(num_documents: int = 4000) -> tuple[str, str]:
  """(tokenizer model path, preprocessed data dir), built once per cache version."""
  from swallow_jax import preprocess  # pylint: disable=g-import-not-at-top
  from swallow_jax.vocab import train  # pylint: disable=g-import-not-at-top
  cache = os.environ.get("SWALLOW_JAX_CACHE") or os.path.expanduser("~/.cache/swallow_jax")
  root = os.path.join(cache, CACHE_VERSION)
  tok_path, data_dir = os.path.join(root, "tokenizer.model"), os.path.join(root, "data")
  if os.path.exists(os.path.join(data_dir, "manifest.json")):
    return tok_path, data_dir
  tmp = f"{root}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  rng = random.Random(0)
  text_path = os.path.join(tmp, "corpus.jsonl")
  with open(text_path, "w", encoding="utf-8") as f:
    for _ in range(num_documents):
      f.write(json.dumps({"text": _document(rng)}, ensure_ascii=False) + "\n")
  with open(os.path.join(tmp, "lines.txt"), "w", encoding="utf-8") as f:
    f.writelines(json.loads(line)["text"] + "\n" for line in open(text_path, encoding="utf-8"))
  train.train_sentencepiece(os.path.join(tmp, "lines.txt"), VOCAB_SIZE,
                            os.path.join(tmp, "tokenizer"), num_threads=1,
                            shuffle_input_sentence=False)
  preprocess.preprocess(text_path, os.path.join(tmp, "tokenizer.model"),
                        os.path.join(tmp, "data"), fmt="text", workers=1)
  try:
    os.rename(tmp, root)
  except OSError:  # Another process built it first; theirs is identical.
    shutil.rmtree(tmp, ignore_errors=True)
  return tok_path, data_dir


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  tok_path, data_dir = tiny_corpus()
  config = ml_collections.ConfigDict()
  config.model = dict(preset="tiny", vocab_size=VOCAB_SIZE, lora=dict(common.LORA_OFF))
  config.init_from = ""
  config.tokenizer = tok_path
  # num_shards=8: each source cut into 8 slices, one per batch row, so that 1, 2, 4 or 8
  # processes train on the same batches (and give the same losses).
  config.data = dict(sources=[dict(name="towns", path=data_dir, weight=1.0, filter=None)],
                     seq_len=64, global_batch_size=8, shuffle_seed=0, kind="pretrain",
                     num_shards=8)
  config.optimizer = dict(peak_lr=3e-3, min_lr_ratio=0.1, warmup_steps=30, decay_steps=300,
                          b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)
  config.train = dict(num_steps=300, grad_accum_steps=1, z_loss=1e-4, neftune_alpha=0.0, seed=0,
                      log_every=1, loss_chunk_size=0, document_masking=True,
                      tensorboard=True, wandb_project="")
  config.mesh = dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1)
  config.checkpoint = dict(every_steps=50, every_minutes=0.0, keep=3, async_save=True)
  config.eval = dict(every_steps=0, tasks=[])
  return config
