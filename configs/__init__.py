"""Experiment configs (big_vision style): each module has `get_config(arg)` and maybe `sweep()`.

Configs build on one another as modules (`from configs import common`). `--config=configs/X.py`
loads a file by path; `import configs` then resolves because the package is installed
(pyproject's packages include `configs*`) or the checkout root is the working directory.
"""
