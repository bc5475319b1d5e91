"""Shared command-line plumbing."""

from swallow_jax import cli


def test_normalize_argv_accepts_hyphens_but_leaves_config_arguments_alone():
  argv = ["prog", "--dry-run", "--text-field=body", "--json", "--",
          "--config=configs/my-exp.py:a-b", "--config.train.num-steps=3", "plain-arg"]
  assert cli.normalize_argv(argv) == [
      "prog", "--dry_run", "--text_field=body", "--json", "--",
      "--config=configs/my-exp.py:a-b", "--config.train.num-steps=3", "plain-arg"]
