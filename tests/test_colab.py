"""launch/colab_demo.ipynb: a valid notebook that installs the project and runs the demo (twice)."""

import os
import sys

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "launch", "colab_demo.ipynb")


def _code_cells():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  return [c.source for c in nb.cells if c.cell_type == "code"]


def test_colab_notebook_installs_and_runs_the_demo():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert nb["nbformat"] == 4
  code = _code_cells()
  text = "\n".join(code)
  assert "pip install" in text
  assert "python -m swallow_jax.recipe --config=configs/demo.py --workdir=runs/demo" in text
  assert "python -m swallow_jax.recipe --config={CONFIG} --workdir=runs/demo" in text
  assert "report.md" in text
  for cell in code:  # every cell is Python once IPython's ! and % lines are set aside
    plain = "\n".join(line for line in cell.splitlines()
                      if not line.strip().startswith(("!", "%")))
    compile(plain, "<cell>", "exec")


def test_colab_notebook_handles_a_pip_url_and_a_zip_and_never_cds_relatively():
  text = "\n".join(_code_cells())
  assert 'REPO_URL = ""' in text and "git+https://github.com/OWNER/swallow_jax" in text
  assert "swallow_jax.zip" in text and "pip install -q '{REPO_URL}'" in text
  assert "%cd" not in text and "os.chdir(WORKSPACE)" in text
  assert 'if "WORKSPACE" not in globals()' in text  # fixed on the first run, not re-resolved


@pytest.mark.slow
def test_colab_notebook_runs_top_to_bottom_twice(tmp_path, monkeypatch):
  """Headless, in one kernel, the micro demo from this checkout: both runs succeed, plots shown."""
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("SWALLOW_JAX_CHECKOUT", REPO)
  monkeypatch.setenv("SWALLOW_JAX_WORKSPACE", str(tmp_path / "ws"))
  monkeypatch.setenv("SWALLOW_DEMO_SIZE", "micro")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # `!python` in the notebook: this interpreter, as `python` is the kernel's own on Colab.
  monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, kernel_name="python3", timeout=1200,
                          resources={"metadata": {"path": str(tmp_path)}})
  with client.setup_kernel():
    for _ in range(2):
      for index, cell in enumerate(nb.cells):
        client.execute_cell(cell, index)
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)
  assert any("text/markdown" in o.get("data", {}) for o in outputs)
  assert os.path.exists(tmp_path / "ws" / "runs" / "demo" / "report.md")
  assert not os.path.exists(tmp_path / "ws" / "swallow_jax")  # no nested workspace
