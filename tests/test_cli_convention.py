"""Every command follows swallow_jax.cli's convention: --help exits 0, bad input is one line."""

import subprocess
import sys

import pytest

# command -> (a flag its --help must name, an argument list that is a usage error only because
# of a hyphenated spelling being wrong-valued: proves hyphens reach the real flag)
COMMANDS = {
    "swallow_jax.train": ("--workdir", ["--config=configs/tiny_cpt.py", "--work-dir=x"]),
    "swallow_jax.preprocess": ("--tokenizer", ["--records-per-shard=many"]),
    "swallow_jax.vocab": ("--tokenizer", ["stats", "--num-new=many"]),
    "swallow_jax.chat_vector": ("--protect_tokens", ["--max-shard-gb=big"]),
    "swallow_jax.generate": ("--chat", ["--max-new-tokens=many"]),
    "swallow_jax.evaluate": ("--tasks", ["--batch-size=many"]),
    "swallow_jax.evaluate.prepare": ("--task", ["--num-fewshot=many"]),
    "swallow_jax.synth": ("--num_samples", ["--num-samples=many"]),
    "swallow_jax.convert": ("--to_hf", ["--max-shard-gb=big"]),
    "swallow_jax.recipe": ("--stages", ["--config=configs/demo.py", "--workdir=w", "--dry-run=maybe"]),
    "swallow_jax.sweep": ("dry_run", ["--config=configs/ablation.py", "--dry-run=maybe"]),
    "swallow_jax.plan": ("--hbm_gb", ["--hbm-gb=lots"]),
    "swallow_jax.data.oasst": ("--lang", ["--input=x", "--output=y", "--json=maybe"]),
    "swallow_jax.demo": ("--scale", ["--output=x", "--scale=big"]),
}


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        timeout=300, check=False)


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_and_one_line_errors(module):
  flag, bad_value = COMMANDS[module]
  prog = {"swallow_jax.data.oasst": "oasst"}.get(module, module.removeprefix("swallow_jax."))
  r = _run(module, "--help")
  assert r.returncode == 0, r.stderr[-1500:]
  assert flag in r.stdout
  for args in (["--no_such_flag=1"], bad_value):
    r = _run(module, *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (args, r.stderr[-1500:])
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), (args, lines)
    assert "Traceback" not in r.stderr
