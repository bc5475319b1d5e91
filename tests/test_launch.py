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


def _run(script, *args, env=None, cwd=REPO):
  return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True,
                        text=True, env=env, cwd=cwd)


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
      f"swallow_jax.recipe --config={REPO}/configs/demo.py '--workdir={REPO}/runs/my demo' "
      "--stages=data"]
  train = _run("local.sh", "--dry-run", "--module=swallow_jax.train", "--python=python3",
               "--config=configs/tiny_cpt.py", "--workdir=/tmp/t")
  assert train.stdout.splitlines()[1] == (
      f"python3 -m swallow_jax.train --config={REPO}/configs/tiny_cpt.py --workdir=/tmp/t")


def test_relative_paths_are_the_callers(tmp_path):
  """Run from another directory, relative --config/--workdir name files there, not in the repo."""
  (tmp_path / "cfg.py").write_text("import ml_collections\n"
                                   "def get_config(arg=None):\n"
                                   "  return ml_collections.ConfigDict(dict(mesh=dict(fsdp=-1)))\n")
  local = _run("local.sh", "--dry-run", "--config=cfg.py:x", "--workdir=w", cwd=tmp_path)
  assert local.returncode == 0, local.stderr
  assert local.stdout.splitlines()[1].endswith(f"--config={tmp_path}/cfg.py:x --workdir={tmp_path}/w")
  multi = _run("local_multiprocess.sh", "--dry-run", "--processes=2", "--config=cfg.py",
               "--workdir=w", "--python=python3", "--port=1234", cwd=tmp_path)
  assert multi.returncode == 0, multi.stderr
  assert multi.stdout.splitlines()[1] == (
      "env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 python3 -m "
      f"swallow_jax.train --config={tmp_path}/cfg.py --workdir={tmp_path}/w "
      "--coordinator_address=127.0.0.1:1234 --num_processes=2 --process_id=0")
  slurm = _run("slurm.sh", "--dry-run", "--nodes=1", "--", "--config=cfg.py", "--workdir=w",
               cwd=tmp_path)
  assert slurm.returncode == 0, slurm.stderr
  assert f"--config={tmp_path}/cfg.py --workdir={tmp_path}/w" in slurm.stdout
  tpu = _run("tpu_vm.sh", "--dry-run", "--name=a", "--zone=z", "--accelerator=v4-8",
             "--steps=run", "--", "--config=../configs/tiny_cpt.py", "--workdir=/w",
             cwd=os.path.join(REPO, "docs"))
  assert tpu.returncode == 0, tpu.stderr
  assert "--config=configs/tiny_cpt.py --workdir=/w" in tpu.stdout  # the workers' copy
  outside = _run("tpu_vm.sh", "--dry-run", "--name=a", "--zone=z", "--accelerator=v4-8", "--",
                 "--config=cfg.py", "--workdir=/w", cwd=tmp_path)
  assert outside.returncode == 2 and "is not inside" in outside.stderr
  rel = _run("tpu_vm.sh", "--dry-run", "--name=a", "--zone=z", "--accelerator=v4-8", "--",
             "--config=configs/tiny_cpt.py", "--workdir=runs/x")
  assert rel.returncode == 2 and "--workdir must be an absolute path" in rel.stderr


@pytest.mark.parametrize("script, args", [
    ("local.sh", ["--cpu-devices=16", "--config=configs/llama3_swallow_8b.py:8xh100",
                  "--workdir=/tmp/w"]),
    ("slurm.sh", ["--nodes=2", "--", "--config=configs/llama3_swallow_8b.py:8xh100",
                  "--workdir=/tmp/w"]),
    ("local_multiprocess.sh", ["--processes=2", "--devices=16",
                               "--config=configs/llama3_swallow_8b_cpt.py:8xh100",
                               "--workdir=/tmp/w"]),
    ("tpu_vm.sh", ["--name=a", "--zone=z", "--accelerator=v4-32", "--",
                   "--config=configs/llama3_swallow_8b.py:8xh100", "--workdir=/w"]),
])
def test_dry_run_rejects_a_mesh_that_does_not_fit_the_devices(script, args):
  """The 8B config's 8xh100 mesh (fsdp=8) on 16 devices: one line naming the stage, exit 2."""
  out = _run(script, "--dry-run", *args)
  assert out.returncode == 2, out.stdout
  err = out.stderr.strip().splitlines()
  assert len(err) == 1 and "does not fit the 16 devices" in err[0], out.stderr
  assert "need 8 devices, have 16" in err[0] and not out.stdout


def test_dry_run_accepts_a_mesh_that_fits():
  ok = _run("slurm.sh", "--dry-run", "--nodes=1", "--", "--config=configs/llama3_swallow_8b.py:8xh100",
            "--workdir=/tmp/w")
  assert ok.returncode == 0, ok.stderr
  two = _run("local.sh", "--dry-run", "--cpu-devices=16", "--config=configs/llama3_swallow_8b.py:8xh100",
             "--config.cpt.mesh.dcn_data=2", "--config.sft.mesh.dcn_data=2", "--workdir=/tmp/w")
  assert two.returncode == 0, two.stderr
  any_size = _run("local.sh", "--dry-run", "--cpu-devices=6", "--config=configs/tiny_cpt.py",
                  "--workdir=/tmp/w")
  assert any_size.returncode == 0, any_size.stderr
  bad_axis = _run("local.sh", "--dry-run", "--cpu-devices=6", "--config=configs/tiny_cpt.py",
                  "--config.mesh.fsdp=4", "--workdir=/tmp/w")
  assert bad_axis.returncode == 2 and "need 4 devices, have 6" in bad_axis.stderr
  missing = _run("local.sh", "--dry-run", "--cpu-devices=8", "--config=nope.py", "--workdir=/w")
  assert missing.returncode == 2 and "cannot load --config=" in missing.stderr


def test_local_multiprocess_flags_and_errors():
  out = _run("local_multiprocess.sh", "--dry-run", "--processes=2", "--config=configs/tiny_cpt.py",
             "--workdir=/tmp/w", "--python=python3", "--port=1234", "--",
             "--config.train.num_steps=5")
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [f"cd {REPO}"] + [
      "env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 python3 -m "
      f"swallow_jax.train --config={REPO}/configs/tiny_cpt.py --workdir=/tmp/w "
      f"--coordinator_address=127.0.0.1:1234 --num_processes=2 --process_id={i} "
      "--config.train.num_steps=5" for i in (0, 1)]
  old = _run("local_multiprocess.sh", "--dry-run", "2", "configs/tiny_cpt.py", "/tmp/w",
             "--python=python3", "--port=1234", "--", "--config.train.num_steps=5")
  assert old.returncode == 2 and not old.stdout  # the positional form is gone: flags only
  assert "unexpected argument '2'" in old.stderr
  for args, message in [(["--config=c", "--workdir=w"], "--processes=N"),
                        (["--processes=2", "--workdir=w"], "--config=FILE is required"),
                        (["--processes=2", "--config=nope.py", "--workdir=w"], "not found"),
                        (["--processes=2", "--config=configs/tiny_cpt.py", "--workdir=w",
                          "--devices=9"], "cannot be split evenly"),
                        (["--processes=2", "--steps=3"], "unknown option '--steps=3'")]:
    bad = _run("local_multiprocess.sh", "--dry-run", *args)
    assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)


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
  mesh = ["--config.cpt.mesh.dcn_data=2", "--config.sft.mesh.dcn_data=2"]  # 8 GPUs x 2 nodes
  out = _run("slurm.sh", "--dry-run", "--nodes=2", "--partition=gpu", "--time=48:00:00",
             "--python=/opt/venv/bin/python", "--", "--config=configs/llama3_swallow_8b.py:8xh100",
             "--workdir=/shared/runs/8b", "--stages=cpt", *mesh)
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [
      "sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --job-name=swallow "
      f"--export=ALL,SWALLOW_REPO={REPO},SWALLOW_PYTHON=/opt/venv/bin/python,SWALLOW_PORT=12355 "
      f"--partition=gpu --time=48:00:00 {LAUNCH}/slurm.sbatch swallow_jax.recipe "
      f"--config={REPO}/configs/llama3_swallow_8b.py:8xh100 --workdir=/shared/runs/8b "
      f"--stages=cpt {' '.join(mesh)}",
      "# task i of 2 on each node runs:",
      "/opt/venv/bin/python -m swallow_jax.recipe '--coordinator_address=<first node>:12355' "
      f"--num_processes=2 '--process_id=<i>' --config={REPO}/configs/llama3_swallow_8b.py:8xh100 "
      f"--workdir=/shared/runs/8b --stages=cpt {' '.join(mesh)}"]
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

