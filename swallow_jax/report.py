"""A recipe's report: what every model scored and, in plain words, what each stage moved.

Pure functions over what the stages recorded (the recipe runner reads the run directories):

    report = build(report_cfg, stages, results, ablation_models)   # the report.json content
    text = markdown(report, plots, intro=report_cfg.get("intro", ""))
    write(workdir, report, intro=..., curves=...)                  # report.json, report.md, PNGs

`report_cfg` is a recipe config's `report` section:
  title        heading of report.md.
  intro        a paragraph under it.
  comparisons  [{what, before, after, note, expect: {metric: "up" | "down" | "same"}}]: pairs of
               models and the change each metric is expected to show between them.
  ablations    [{name, reference, note, expect}]: an ablation model against the model it varies.

Every metric is in the unit of evaluate's plots (`plots.UNITS`, recorded in report.json's
"units"): translation in BLEU points 0-100, the other task scores in [0, 1].
A metric "moved" when the change is beyond noise: for scores in [0, 1], two standard errors of the
difference of two accuracies over the task's examples (two BLEU points for translation); for
perplexities and other lower-is-better metrics, a relative change of more than 2%.
"""

from collections.abc import Collection, Mapping, Sequence
import math
import os
import re
from typing import Any

from swallow_jax import fileio

REPORT_PLOTS = ("loss_curves.png", "radar.png", "perplexity.png")
LOWER_IS_BETTER = re.compile(r"(_ppl|perplexity|bits_per_(char|byte)|_bpc|_bpb|loss)$")
PPL_TOLERANCE = 0.02  # relative change of a perplexity that we call "did not move"
_PPL_UNIT, _BPC_UNIT = "token perplexity", "bits per char"
BLEU_TOLERANCE = 2.0  # BLEU points (0-100)
STAGE_COSTS = ("trainable_params", "checkpoint_bytes")  # what a train stage records beside time


def model_metrics(task_results: Mapping[str, Any]
                  ) -> tuple[dict[str, float], dict[str, int], dict[str, str]]:
  """{metric: value}, {metric: examples} and {metric: unit} for one model: a task's main metric
  under the task's name (translation in BLEU 0-100, other scores in [0, 1]); a perplexity task
  'x_ppl' gives `x_ppl` (token perplexity), `x_bpc` (bits per character) and, if not there
  already, `<lang>_ppl`; a chat set 'x_chat' gives `x_chat_ppl` (perplexity of the assistant
  replies) and `x_chat_qa` (replies containing the answer)."""
  from swallow_jax.evaluate import plots  # pylint: disable=g-import-not-at-top  (imports jax)
  metrics, counts, units = {}, {}, {}
  for task, res in task_results.items():
    n, m = int(res.get("num_examples", 0)), res["metrics"]
    if res["type"] == "perplexity":
      rows = [(task, m["token_perplexity"], _PPL_UNIT),
              (task.removesuffix("_ppl") + "_bpc", m["bits_per_char"], _BPC_UNIT)]
      lang_key = f"{res.get('lang', 'ja')}_ppl"
      if lang_key not in {task, *metrics}:
        rows.append((lang_key, m["token_perplexity"], _PPL_UNIT))
    elif res["type"] == "chat":
      rows = [(f"{task}_ppl", m["assistant_perplexity"], _PPL_UNIT),
              (f"{task}_qa", m["answer_accuracy"], plots.UNITS["chat"])]
    else:
      # As evaluate's plots show it: `score` is the main metric but for BLEU, which it has / 100.
      value = m[res["main_metric"]] if res["type"] == "translation" else res["score"]
      rows = [(task, value, plots.UNITS[res["type"]])]
    for key, value, unit in rows:
      metrics[key], counts[key], units[key] = float(value), n, unit
  return metrics, counts, units


def train_summary(log: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """steps, first and final loss, and the (step, loss) curve of a training log (metrics.jsonl
  rows); {} when no row has a loss."""
  rows = [r for r in log if "loss" in r]
  if not rows:
    return {}
  return {"steps": rows[-1]["step"], "first_loss": rows[0]["loss"], "final_loss": rows[-1]["loss"],
          "curve": [(r["step"], r["loss"]) for r in rows]}


def noise_band(before: float, after: float, n: int) -> float:
  """Two standard errors of the difference of two accuracies over n examples each."""
  p = min(max((before + after) / 2, 1.0 / max(n, 1)), 1 - 1.0 / max(n, 1))
  return 2 * math.sqrt(2 * p * (1 - p) / max(n, 1))


def compare(models: Mapping[str, Mapping[str, float]], counts: Mapping[str, Mapping[str, int]],
            comparison: Mapping[str, Any], units: Mapping[str, str] | None = None
            ) -> list[dict[str, Any]]:
  """Per metric: did it move between two models, which way, and was that the expectation;
  `units` ({metric: unit}, as model_metrics gives) says which metrics are BLEU points."""
  before, after = models[comparison["before"]], models[comparison["after"]]
  expect = comparison.get("expect", {}) or {}
  out = []
  for metric in sorted(set(before) & set(after)):
    b, a = before[metric], after[metric]
    if LOWER_IS_BETTER.search(metric):
      band, moved = None, b != 0 and abs((a - b) / b) > PPL_TOLERANCE
    else:
      band = (BLEU_TOLERANCE if _is_bleu(metric, units)
              else noise_band(b, a, counts[comparison["after"]].get(metric, 0)))
      moved = abs(a - b) > band
    direction = ("up" if a > b else "down") if moved else "same"
    finding = {"metric": metric, "before": b, "after": a, "direction": direction,
               "noise_band": band}
    if metric in expect:
      finding.update(expected=expect[metric], as_expected=expect[metric] == direction)
    out.append(finding)
  return out


def build(report_cfg: Mapping[str, Any], stages: Mapping[str, Mapping[str, Any]],
          results: Mapping[str, Mapping[str, Any]], ablation_models: Collection[str] = ()
          ) -> dict[str, Any]:
  """report.json's content: {"title", "models", "ablations", "stages", "comparisons", "examples",
  "units": {metric: unit}}. stages: {stage: {"kind", "status", ["seconds"], ["train_log":
  metrics.jsonl rows], ["trainable_params"], ["checkpoint_bytes" of the latest checkpoint]}};
  results: {model: {task: result}} as evaluate.run_tasks and evaluate.score_chats return them;
  ablation_models: the models of `results` that are ablations (reported apart from the others)."""
  stage_entries = {}
  for name, s in stages.items():
    entry = {k: s[k] for k in ("kind", "status", "seconds", *STAGE_COSTS) if k in s}
    entry.update({k: v for k, v in train_summary(s.get("train_log", ())).items() if k != "curve"})
    stage_entries[name] = entry
  models, counts, units = {}, {}, {}
  for model, task_results in results.items():
    models[model], counts[model], model_units = model_metrics(task_results)
    units.update(model_units)
  ablations = {}
  for a in report_cfg.get("ablations", []) or []:
    name, ref = a["name"], a["reference"]
    if name in models and ref in models:
      ablations[name] = dict(
          a, metrics=models[name],
          delta={k: models[name][k] - models[ref][k] for k in models[name] if k in models[ref]},
          findings=compare(models, counts, dict(a, before=ref, after=name), units))
  comparisons = [dict(c, findings=compare(models, counts, c, units))
                 for c in report_cfg.get("comparisons", []) or []
                 if c["before"] in models and c["after"] in models]
  return {"title": report_cfg.get("title", "Recipe report"),
          "models": {m: v for m, v in models.items() if m not in ablation_models},
          "ablations": ablations, "stages": stage_entries, "comparisons": comparisons,
          "examples": counts, "units": units}


def _is_bleu(metric: str, units: Mapping[str, str] | None) -> bool:
  return (units or {}).get(metric, "").startswith("BLEU")


def _fmt(v: float) -> str:
  return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def sentence(f: Mapping[str, Any]) -> str:
  """One finding of `compare` in plain words."""
  metric, b, a = f["metric"], f["before"], f["after"]
  verb = {"up": "rose", "down": "fell"}.get(f["direction"])
  if f["direction"] == "same":
    how = (f"did not move ({_fmt(b)} -> {_fmt(a)}"
           + (f", within the +/-{f['noise_band']:.2f} noise band)" if f["noise_band"] is not None
              else f", under {PPL_TOLERANCE:.0%} relative change)"))
  elif f["noise_band"] is None:
    how = f"{verb} {abs(a - b) / b:.0%} ({_fmt(b)} -> {_fmt(a)})"
  else:
    how = (f"{verb} from {_fmt(b)} to {_fmt(a)} "
           f"(beyond the +/-{f['noise_band']:.2f} noise band)")
  if "expected" not in f:
    return f"`{metric}` {how}."
  words = {"up": "rise", "down": "fall", "same": "stay"}
  return f"`{metric}` {how}" + (" -- as expected." if f["as_expected"] else
                                f" -- expected to {words[f['expected']]}; that effect is absent "
                                "in this run.")


def findings_markdown(c: Mapping[str, Any]) -> list[str]:
  """A comparison in plain words: its note, what moved, what did not, what was missing."""
  lines = [c["note"].strip(), ""] if c.get("note") else []
  moved = [f for f in c["findings"] if f["direction"] != "same" or "expected" in f]
  still = [f["metric"] for f in c["findings"] if f["direction"] == "same" and "expected" not in f]
  lines += [f"- {sentence(f)}" for f in moved]
  if still:
    lines.append(f"- Unchanged (within noise): {', '.join(f'`{m}`' for m in still)}.")
  expected = [f for f in c["findings"] if "expected" in f]
  missing = [f for f in expected if not f["as_expected"]]
  if expected:
    lines += ["", f"{len(missing)} of {len(expected)} expected effect(s) did not show up in this "
              "run." if missing else "Every expected effect showed up in this run."]
  return lines + [""]


def _everyone(report: Mapping[str, Any]) -> dict[str, dict[str, float]]:
  return {**report["models"], **{k: v["metrics"] for k, v in report["ablations"].items()}}


def markdown(report: Mapping[str, Any], plots: Sequence[str] = (), intro: str = "") -> str:
  """report.md: summary of expected effects, score table, what moved, ablations, stages, plots."""
  lines = [f"# {report['title']}", ""]
  if intro:
    lines += [intro.strip(), ""]
  checks = [(c.get("what") or c.get("name"), f) for c in
            report["comparisons"] + list(report["ablations"].values()) for f in c["findings"]
            if "expected" in f]
  if checks:
    seen = [f"{what}: `{f['metric']}`" for what, f in checks if f["as_expected"]]
    missing = [f"{what}: `{f['metric']}`" for what, f in checks if not f["as_expected"]]
    lines += ["## Summary", "",
              f"{len(seen)} of {len(checks)} expected effects showed up in this run."]
    if seen:
      lines.append(f"Seen: {'; '.join(seen)}.")
    if missing:
      lines.append(f"Not seen (the measured change was the other way or within noise): "
                   f"{'; '.join(missing)}.")
    lines.append("")
  everyone = _everyone(report)
  if everyone:
    metrics = sorted({k for v in everyone.values() for k in v},
                     key=lambda k: (bool(LOWER_IS_BETTER.search(k)), k))
    units = report.get("units", {})
    lines += ["## Scores", "",
              "Each column's unit is in its header: BLEU points 0-100 for translation, the other "
              "task scores in [0, 1] (higher is better); `*_ppl` is token perplexity and `*_bpc` "
              "bits per character on held-out text (lower is better).", "",
              "| model | " + " | ".join(f"{k} ({units[k]})" if k in units else k for k in metrics)
              + " |",
              "|---|" + "---|" * len(metrics)]
    for model, m in everyone.items():
      lines.append(f"| {model} | " + " | ".join(_fmt(m[k]) if k in m else "-" for k in metrics)
                   + " |")
    lines.append("")
  if report["comparisons"]:
    lines += ["## What moved", ""]
    for c in report["comparisons"]:
      lines += [f"### {c.get('what', c['before'] + ' -> ' + c['after'])}: "
                f"`{c['before']}` -> `{c['after']}`", ""] + findings_markdown(c)
  if report["ablations"]:
    lines += ["## Ablations", ""]
    for name, a in report["ablations"].items():
      lines += [f"### `{name}` vs `{a['reference']}`", ""] + findings_markdown(a)
  lines += ["## Stages", "",
            "| stage | kind | status | seconds | steps | first loss | final loss | trained "
            "params | checkpoint MB |", "|---|---|---|---|---|---|---|---|---|"]
  columns = {"seconds": str, "steps": str, "first_loss": _fmt, "final_loss": _fmt,
             "trainable_params": "{:,}".format, "checkpoint_bytes": lambda b: f"{b / 1e6:.2f}"}
  for name, s in report["stages"].items():
    cells = [name, s["kind"], s["status"]] + [show(s[k]) if k in s else "-"
                                              for k, show in columns.items()]
    lines.append("| " + " | ".join(cells) + " |")
  total = sum(s.get("seconds", 0) for s in report["stages"].values())
  lines += ["", f"Stage time in total: {total:.0f} s (stages skipped as already done count with "
            "the time they took when they ran).", ""]
  if plots:
    lines += ["## Plots", "", *(f"![{p}]({p})" for p in map(os.path.basename, plots)), ""]
  return "\n".join(lines)


def plot(report: Mapping[str, Any], out_dir: str,
         curves: Mapping[str, Sequence[tuple[int, float]]] | None = None) -> list[str]:
  """PNGs in out_dir: loss_curves.png (one panel per {title: [(step, loss)]} in `curves`),
  radar.png (scores, when >= 3 metrics) and perplexity.png; returns their paths."""
  from swallow_jax.evaluate import plots  # pylint: disable=g-import-not-at-top
  plt = plots.pyplot()
  out = []
  curves = {k: v for k, v in (curves or {}).items() if v}
  if curves:
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, curve) in zip(axes.flat, curves.items()):
      ax.plot(*zip(*curve))
      ax.set_title(title)
      ax.set_xlabel("step")
      ax.set_ylabel("training loss (nats per token)")
      ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(curves):]:
      ax.axis("off")
    fig.tight_layout()
    out.append(os.path.join(out_dir, "loss_curves.png"))
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)
  everyone = _everyone(report)
  units = report.get("units", {})
  # The radar's axes are all [0, 1]: BLEU goes on it / 100, and its axis says so.
  scores = {m: {k: v / 100 if _is_bleu(k, units) else v for k, v in vals.items()
                if not LOWER_IS_BETTER.search(k)} for m, vals in everyone.items()}
  if scores and len({k for v in scores.values() for k in v}) >= 3:
    labels = {k: f"{k} (BLEU/100)" for v in scores.values() for k in v if _is_bleu(k, units)}
    out.append(plots.radar_chart(scores, os.path.join(out_dir, "radar.png"), labels=labels,
                                 title="task scores in [0, 1] (higher is better)"))
  ppl = {m: {k: v for k, v in vals.items() if k.endswith("_ppl")} for m, vals in everyone.items()}
  if any(ppl.values()):
    out.append(plots.metric_panels(ppl, os.path.join(out_dir, "perplexity.png"),
                                   title="held-out perplexity (lower is better)",
                                   ylabel="token perplexity"))
  return out


def write(out_dir: str, report: Mapping[str, Any], *, intro: str = "",
          curves: Mapping[str, Sequence[tuple[int, float]]] | None = None) -> list[str]:
  """Writes out_dir/report.json, report.md and the plots (removing a plot of an earlier report
  that this one no longer has); returns the paths written."""
  plot_files = plot(report, out_dir, curves)
  for name in REPORT_PLOTS:
    stale = os.path.join(out_dir, name)
    if stale not in plot_files and os.path.exists(stale):
      os.remove(stale)
  fileio.write_json(os.path.join(out_dir, "report.json"), report, indent=1)
  with fileio.atomic_file(os.path.join(out_dir, "report.md")) as f:
    f.write(markdown(report, plot_files, intro))
  return [os.path.join(out_dir, "report.json"), os.path.join(out_dir, "report.md"), *plot_files]
