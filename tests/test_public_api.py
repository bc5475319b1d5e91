"""Every name `swallow_jax` exports is the same object on every access, whatever was imported first."""

import subprocess
import sys

import pytest

import swallow_jax

_CHECK = """
import importlib, sys
import swallow_jax as sj
order = sys.argv[1]
if order == "submodules_first":
  import swallow_jax.generate, swallow_jax.decode, swallow_jax.model.io  # noqa: F401
first = {n: getattr(sj, n) for n in sj.__all__}
if order == "names_first":
  import swallow_jax.generate, swallow_jax.decode, swallow_jax.model.io  # noqa: F401
  importlib.import_module("swallow_jax.generate")
from swallow_jax import generate as g
for n in sj.__all__:
  assert getattr(sj, n) is first[n], n
  assert callable(first[n]) and not isinstance(first[n], type(sys)), n
assert g is sj.generate
print("ok")
"""


@pytest.mark.parametrize("order", ["names_first", "submodules_first"])
def test_public_names_are_stable(order):
  out = subprocess.run([sys.executable, "-c", _CHECK, order], capture_output=True, text=True,
                       check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "ok"


def test_public_names_are_the_documented_functions():
  from swallow_jax import decode
  from swallow_jax.model import io as model_io
  assert swallow_jax.generate is decode.generate
  assert swallow_jax.load_hf is model_io.load
  assert swallow_jax.save_hf is model_io.save_hf
  assert sorted(swallow_jax.__all__) == swallow_jax.__all__
