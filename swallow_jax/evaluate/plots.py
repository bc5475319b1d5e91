"""PNG plots comparing models over tasks: a radar chart and grouped bars (the Swallow pages' views).

Input everywhere: `scores = {model_name: {task_name: score}}`; tasks missing for a model are drawn
as 0 (radar) or left out (bars).
"""

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

Scores = Mapping[str, Mapping[str, float]]


def _tasks(scores: Scores) -> list[str]:
  seen = {}
  for per_task in scores.values():
    seen.update(dict.fromkeys(per_task))
  return list(seen)


def radar_chart(scores: Scores, path: str, *, title: str = "", max_value: float = 1.0) -> str:
  """One polygon per model over the tasks (scores in [0, max_value]); writes a PNG to `path`."""
  tasks = _tasks(scores)
  if len(tasks) < 3:
    raise ValueError(f"a radar chart needs at least 3 tasks, got {tasks}")
  angles = np.linspace(0, 2 * np.pi, len(tasks), endpoint=False)
  fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"projection": "polar"})
  for model, per_task in scores.items():
    values = np.array([per_task.get(t, 0.0) for t in tasks])
    closed = np.append(angles, angles[0]), np.append(values, values[0])
    ax.plot(*closed, label=model, linewidth=1.5)
    ax.fill(*closed, alpha=0.1)
  ax.set_xticks(angles, tasks)
  ax.set_ylim(0, max_value)
  ax.set_title(title)
  ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize="small")
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def grouped_bars(scores: Scores, path: str, *, title: str = "", ylabel: str = "score") -> str:
  """Bars grouped by task, one colour per model; writes a PNG to `path`."""
  tasks, models = _tasks(scores), list(scores)
  if not tasks:
    raise ValueError("no scores to plot")
  width = 0.8 / len(models)
  x = np.arange(len(tasks))
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) * max(1, len(models) / 2)), 4))
  for i, model in enumerate(models):
    values = [scores[model].get(t, np.nan) for t in tasks]
    ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=model)
  ax.set_xticks(x, tasks, rotation=30, ha="right")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(fontsize="small")
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path
