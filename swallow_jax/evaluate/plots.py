"""PNG plots comparing models over tasks: a radar chart and per-metric bar panels.

Input everywhere: `values = {model_name: {metric_or_task: value}}`. Each bar panel has its own
y scale and unit (accuracy 0-1, BLEU 0-100, bits per byte, ...) with the value printed on every
bar; the radar (scores in [0, 1]) offsets the markers of models that coincide and lists the
numbers in a table beside it, so overlapping polygons stay readable.
"""

from collections.abc import Mapping
import functools
import math
import os
from typing import Any

import numpy as np

Values = Mapping[str, Mapping[str, float]]
PLOT_FILES = ("scores.png", "radar.png", "perplexity.png")
# Each task type's main-metric unit, as plotted and in the recipe report's table.
UNITS = {"multiple_choice": "accuracy, 0-1", "qa": "character F1, 0-1", "math": "accuracy, 0-1",
         "translation": "BLEU, 0-100", "perplexity": "bits per byte (lower is better)",
         "chat": "answer accuracy, 0-1"}


@functools.cache
def pyplot() -> Any:
  """matplotlib.pyplot on the file-only Agg backend, imported on first use (it takes seconds)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _keys(values: Values) -> list[str]:
  return list(dict.fromkeys(k for per_key in values.values() for k in per_key))


def _fmt(v: float) -> str:
  return "-" if v is None or math.isnan(v) else (f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}")


def radar_chart(scores: Values, path: str, *, title: str = "", max_value: float = 1.0,
                labels: Mapping[str, str] | None = None) -> str:
  """One polygon per model over >= 3 axes (scores in [0, max_value]), a table of the values
  beside it; `labels` renames axes (e.g. to say a score is BLEU / 100). Writes a PNG."""
  axes_keys = _keys(scores)
  if len(axes_keys) < 3:
    raise ValueError(f"a radar chart needs at least 3 tasks, got {axes_keys}")
  labels = labels or {}
  models = list(scores)
  angles = np.linspace(0, 2 * np.pi, len(axes_keys), endpoint=False)
  plt = pyplot()
  fig = plt.figure(figsize=(12, 6))
  ax = fig.add_axes((0.08, 0.08, 0.38, 0.8), projection="polar")
  # Models with equal scores would hide each other: shift each one's markers by a small angle.
  step = 0.35 * (2 * np.pi / len(axes_keys)) / max(1, len(models))
  markers = "osD^v<>ph*"
  for i, model in enumerate(models):
    values = np.array([scores[model].get(k, 0.0) for k in axes_keys])
    closed = np.append(angles, angles[0]), np.append(values, values[0])
    line, = ax.plot(*closed, linewidth=1.5, alpha=0.8)
    ax.fill(*closed, alpha=0.06, color=line.get_color())
    offset = (i - (len(models) - 1) / 2) * step
    ax.plot(angles + offset, values, markers[i % len(markers)], color=line.get_color(),
            markersize=6, label=model)
  ax.set_xticks(angles, [labels.get(k, k) for k in axes_keys], fontsize=8)
  ax.set_ylim(0, max_value)
  ax.set_title(title or "scores (higher is better)", pad=18)
  ax.legend(loc="upper left", bbox_to_anchor=(-0.35, 1.12), fontsize="small")
  table_ax = fig.add_axes((0.64, 0.08, 0.35, 0.8))
  table_ax.axis("off")
  rows = [[labels.get(k, k)] + [_fmt(scores[m].get(k, float("nan"))) for m in models]
          for k in axes_keys]
  # Long model names wrap at underscores so the column headers do not run into each other.
  headers = ["task", *(m.replace("_", "_\n") if len(m) > 10 else m for m in models)]
  first = 0.34  # the task column: long labels such as "wmt20_en_ja (BLEU/100)"
  table = table_ax.table(cellText=rows, colLabels=headers, loc="center",
                         colWidths=[first] + [(1 - first) / len(models)] * len(models),
                         bbox=(0, 0.5 - 0.04 * (len(rows) + 1), 1, 0.08 * (len(rows) + 1)))
  table.auto_set_font_size(False)
  table.set_fontsize(8)
  for (row, _), cell in table.get_celld().items():
    if row == 0:
      cell.set_height(cell.get_height() * 2)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def metric_panels(values: Values, path: str, *, title: str = "",
                  ylabel: str | Mapping[str, str] = "score") -> str:
  """One bar panel per metric (its own y scale), one bar per model with its value on it;
  `ylabel` is one unit for all panels or {metric: unit}. Writes a PNG."""
  metrics, models = _keys(values), list(values)
  if not metrics:
    raise ValueError("no values to plot")
  cols = min(4, len(metrics))
  rows = math.ceil(len(metrics) / cols)
  width = max(2.6, 0.55 * len(models) + 1.2)
  plt = pyplot()
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.2 * rows), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, metric in zip(axes.flat, metrics):
    heights = [values[m].get(metric, float("nan")) for m in models]
    bars = ax.bar(range(len(models)), heights,
                  color=[colors[i % len(colors)] for i in range(len(models))])
    ax.bar_label(bars, labels=[_fmt(h) for h in heights], fontsize=7, padding=1)
    ax.set_title(metric, fontsize=10)
    ax.set_ylabel(ylabel if isinstance(ylabel, str) else ylabel.get(metric, ""), fontsize=8)
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
    finite = [h for h in heights if not math.isnan(h)]
    ax.set_ylim(0, (max(finite) if finite and max(finite) > 0 else 1.0) * 1.18)
  for ax in list(axes.flat)[len(metrics):]:
    ax.axis("off")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def plot_results(results: Mapping[str, Mapping[str, Mapping[str, Any]]], out_dir: str
                 ) -> list[str]:
  """The PLOT_FILES for {model: {task: result}} (evaluate_models' results): scores.png (each
  task's main metric in its own unit), radar.png (scores in [0, 1], >= 3 tasks) and
  perplexity.png (bits per byte; chat sets' reply perplexity); returns the paths written."""
  main, units, score, ppl, ppl_units = {}, {}, {}, {}, {}
  for model, tasks in results.items():
    for task, r in tasks.items():
      if r["type"] == "perplexity":
        ppl.setdefault(model, {})[task] = r["metrics"]["bits_per_byte"]
        ppl_units[task] = UNITS["perplexity"]
        continue
      if r["type"] == "chat":  # no main_metric: its score is the answer accuracy
        ppl.setdefault(model, {})[f"{task} replies"] = r["metrics"]["assistant_perplexity"]
        ppl_units[f"{task} replies"] = "token perplexity (lower is better)"
      main.setdefault(model, {})[task] = r["metrics"][r.get("main_metric", "answer_accuracy")]
      units[task] = UNITS[r["type"]]
      score.setdefault(model, {})[task] = r["score"]
  out = []
  if main:
    out.append(metric_panels(main, os.path.join(out_dir, "scores.png"),
                             title="task scores (higher is better)", ylabel=units))
  if score and len(_keys(score)) >= 3:
    labels = {t: f"{t} (BLEU/100)" for t, u in units.items() if u.startswith("BLEU")}
    out.append(radar_chart(score, os.path.join(out_dir, "radar.png"), labels=labels,
                           title="task scores in [0, 1] (higher is better)"))
  if ppl:
    out.append(metric_panels(ppl, os.path.join(out_dir, "perplexity.png"),
                             title="held-out text (lower is better)", ylabel=ppl_units))
  return out
