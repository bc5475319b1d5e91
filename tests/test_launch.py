"""Launchers: syntax, --dry-run output, argument errors, the SLURM script's per-task flags."""

import glob
import json
import os
import stat
import subprocess
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
PY = os.path.join(REPO, ".venv", "bin", "python")
PYTHON = PY if os.path.exists(PY) else "python3"


def _run(script, *args, env=None):
  return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True,
                        text=True, env=env)


@pytest.mark.parametrize("script", sorted(glob.glob(os.path.join(LAUNCH, "*.sh"))
                                          + glob.glob(os.path.join(LAUNCH, "*.sbatch"))))
def test_bash_syntax_and_help(script):
  assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
  if script == os.path.join(LAUNCH, "common.sh"):  # Sourced by the .sh launchers, not run.
    return
  assert os.stat(script).st_mode & stat.S_IXUSR, f"{script} is not executable"
  if script.endswith(".sh"):
    out = subprocess.run(["bash", script, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--dry-run" in out.stdout and "set -e" not in out.stdout


def test_local_dry_run():
  out = _run("local.sh", "--dry-run", "--cpu-devices=8", "--config=configs/demo.py",
             "--workdir=runs/my demo", "--stages=data")
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [
      f"cd {REPO}",
      f"env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 {PYTHON} -m "
      "swallow_jax.recipe --config=configs/demo.py '--workdir=runs/my demo' --stages=data"]
  train = _run("local.sh", "--dry-run", "--module=swallow_jax.train", "--python=python3",
               "--config=configs/tiny_cpt.py", "--workdir=/tmp/t")
  assert train.stdout.splitlines()[1] == (
      "python3 -m swallow_jax.train --config=configs/tiny_cpt.py --workdir=/tmp/t")


def test_local_errors():
  out = _run("local.sh", "--dry-run", "--config=configs/demo.py")
  assert out.returncode == 2 and "--workdir=DIR is required" in out.stderr
  out = _run("local.sh", "--dry-run", "--cpu-devices=x", "--config=a", "--workdir=b")
  assert out.returncode == 2 and "positive integer" in out.stderr


def test_local_runs_the_recipe(tmp_path):
  cfg = tmp_path / "data_only.py"
  cfg.write_text(textwrap.dedent("""
      import ml_collections
      def get_config(arg=None):
        c = ml_collections.ConfigDict()
        c.stages = ("data",)
        c.data = dict(kind="demo_data", seed=0, scale=0.02)
        return c
  """))
  out = _run("local.sh", f"--config={cfg}", f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 0, out.stderr
  assert json.load(open(tmp_path / "w" / "data" / "DONE.json"))["kind"] == "demo_data"
  assert os.path.exists(tmp_path / "w" / "report.md")


def test_tpu_vm_dry_run():
  out = _run("tpu_vm.sh", "--dry-run", "--name=sw", "--zone=us-east5-a",
             "--accelerator=v5p-128", "--project=p1", "--spot", "--",
             "--config=configs/llama3_swallow_8b.py:v5p-128,root=/mnt/s",
             "--workdir=/mnt/s/runs/8b", "--stages=cpt")
  assert out.returncode == 0, out.stderr
  where = "--zone=us-east5-a --project=p1"
  assert out.stdout.splitlines() == [
      f"gcloud compute tpus tpu-vm create sw {where} --accelerator-type=v5p-128 "
      "--version=v2-alpha-tpuv5 --spot",
      f"tar -czf /tmp/swallow_jax-sw.tgz --exclude=.venv --exclude=.git --exclude=runs "
      f"--exclude=__pycache__ -C {REPO} .",
      f"gcloud compute tpus tpu-vm scp /tmp/swallow_jax-sw.tgz 'sw:~/swallow_jax.tgz' {where} "
      "--worker=all",
      f"gcloud compute tpus tpu-vm ssh sw {where} --worker=all '--command=command -v python3.11 "
      ">/dev/null || (sudo apt-get -qq update && sudo apt-get -qq install -y python3.11 "
      "python3.11-venv); mkdir -p ~/swallow_jax && tar -xzf ~/swallow_jax.tgz -C ~/swallow_jax "
      "&& cd ~/swallow_jax && python3.11 -m venv .venv && .venv/bin/pip install -q -r "
      "requirements.txt \"jax[tpu]\"'",
      f"gcloud compute tpus tpu-vm ssh sw {where} --worker=all '--command=cd ~/swallow_jax && "
      ".venv/bin/python -m swallow_jax.recipe --config=configs/llama3_swallow_8b.py:v5p-128,"
      "root=/mnt/s --workdir=/mnt/s/runs/8b --stages=cpt'",
  ]
  delete = _run("tpu_vm.sh", "--dry-run", "--name=sw", "--zone=z", "--accelerator=v4-32",
                "--steps=run,delete", "--detach", "--module=swallow_jax.train", "--",
                "--config=configs/tiny_cpt.py", "--workdir=/w")
  assert delete.stdout.splitlines() == [
      "gcloud compute tpus tpu-vm ssh sw --zone=z --worker=all '--command=cd ~/swallow_jax && "
      "nohup .venv/bin/python -m swallow_jax.train --config=configs/tiny_cpt.py --workdir=/w "
      "> ~/swallow_run.log 2>&1 &'",
      "gcloud compute tpus tpu-vm delete sw --zone=z --quiet"]


def test_tpu_vm_errors():
  assert "--zone is required" in _run("tpu_vm.sh", "--dry-run", "--name=a").stderr
  bad_step = _run("tpu_vm.sh", "--dry-run", "--name=a", "--zone=z", "--accelerator=v4-8",
                  "--steps=create,launch")
  assert bad_step.returncode == 2 and "unknown step 'launch'" in bad_step.stderr
  no_args = _run("tpu_vm.sh", "--dry-run", "--name=a", "--zone=z", "--accelerator=v4-8")
  assert no_args.returncode == 2 and "needs module flags after --" in no_args.stderr
  assert "unknown option" in _run("tpu_vm.sh", "--config=x").stderr


def test_slurm_dry_run():
  out = _run("slurm.sh", "--dry-run", "--nodes=2", "--partition=gpu", "--time=48:00:00",
             "--python=/opt/venv/bin/python", "--", "--config=configs/llama3_swallow_8b.py:8xh100",
             "--workdir=/shared/runs/8b", "--stages=cpt")
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [
      "sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --job-name=swallow "
      f"--export=ALL,SWALLOW_REPO={REPO},SWALLOW_PYTHON=/opt/venv/bin/python,SWALLOW_PORT=12355 "
      f"--partition=gpu --time=48:00:00 {LAUNCH}/slurm.sbatch swallow_jax.recipe "
      "--config=configs/llama3_swallow_8b.py:8xh100 --workdir=/shared/runs/8b --stages=cpt",
      "# task i of 2 on each node runs:",
      "/opt/venv/bin/python -m swallow_jax.recipe '--coordinator_address=<first node>:12355' "
      "--num_processes=2 '--process_id=<i>' --config=configs/llama3_swallow_8b.py:8xh100 "
      "--workdir=/shared/runs/8b --stages=cpt"]
  assert "--nodes=N" in _run("slurm.sh", "--dry-run", "--", "--config=x").stderr
  assert "module flags are required" in _run("slurm.sh", "--dry-run", "--nodes=1").stderr


def test_slurm_sbatch_passes_each_task_its_process_id(tmp_path):
  """Runs slurm.sbatch with fake srun/scontrol: every task gets the coordinator and its id."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf 'node7\\nnode8\\n'\n")
  # srun: run the command once per task, as SLURM would, with SLURM_PROCID set.
  (bin_dir / "srun").write_text(textwrap.dedent("""\
      #!/bin/bash
      while [[ "$1" == --* ]]; do shift; done
      for i in $(seq 0 $((SLURM_NTASKS - 1))); do SLURM_PROCID=$i "$@"; done
  """))
  (bin_dir / "fakepython").write_text('#!/bin/bash\necho "$@"\n')
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node[7-8]",
             SLURM_NTASKS="2", SLURM_JOB_ID="42", SLURM_SUBMIT_DIR=str(tmp_path),
             SWALLOW_REPO=str(tmp_path), SWALLOW_PYTHON=str(bin_dir / "fakepython"),
             SWALLOW_PORT="5555")
  out = subprocess.run(["bash", os.path.join(LAUNCH, "slurm.sbatch"), "swallow_jax.train",
                        "--config=c.py", "--workdir=/w x"], capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines()[1:] == [
      f"-m swallow_jax.train --coordinator_address=node7:5555 --num_processes=2 --process_id={i} "
      "--config=c.py --workdir=/w x" for i in (0, 1)]


def test_colab_notebook_installs_and_runs_the_demo():
  nb = json.load(open(os.path.join(LAUNCH, "colab_demo.ipynb"), encoding="utf-8"))
  assert nb["nbformat"] == 4
  code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  text = "\n".join(code)
  assert "pip install" in text
  assert "python -m swallow_jax.recipe --config=configs/demo.py --workdir=runs/demo" in text
  assert "report.md" in text
  for cell in code:  # every cell is Python once IPython's ! and % lines are set aside
    plain = "\n".join(line for line in cell.splitlines()
                      if not line.strip().startswith(("!", "%")))
    compile(plain, "<cell>", "exec")
