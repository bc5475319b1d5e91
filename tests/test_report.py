"""The report's pure functions on small hand-made stage logs and evaluation results."""

import json
import math
import os

import pytest

from swallow_jax import report


def _ppl(value, n=10, lang="ja"):
  return {"type": "perplexity", "lang": lang, "num_examples": n, "score": None,
          "metrics": {"token_perplexity": value, "bits_per_char": value / 10}}


def _score(kind, value, n=40):
  """A result as evaluate.run_task makes it: `value` in the main metric's unit (BLEU 0-100)."""
  return {"type": kind, "lang": "ja", "num_examples": n, "metrics": {"main": value},
          "main_metric": "main", "score": value / (100 if kind == "translation" else 1)}


def _chat(acc, ppl, n=8):
  return {"type": "chat", "num_examples": n, "score": acc,
          "metrics": {"assistant_perplexity": ppl, "answer_accuracy": acc}}


def test_model_metrics_names_and_counts():
  metrics, counts, units = report.model_metrics({
      "wiki_ppl": _ppl(20.0, n=5), "en_ppl": _ppl(30.0, n=6, lang="en"), "ja_ppl": _ppl(40.0),
      "ja_chat": _chat(0.25, 12.0), "niilc": _score("qa", 0.5, n=7),
      "wmt": _score("translation", 23.5)})
  assert metrics == {"wiki_ppl": 20.0, "wiki_bpc": 2.0, "ja_ppl": 40.0,  # wiki_ppl is ja but a
                     "en_ppl": 30.0, "en_bpc": 3.0, "ja_bpc": 4.0,       # task ja_ppl wins
                     "ja_chat_ppl": 12.0, "ja_chat_qa": 0.25, "niilc": 0.5,
                     "wmt": 23.5}  # BLEU on 0-100, as the plots show it (not score = 0.235)
  assert units == {"wiki_ppl": "token perplexity", "wiki_bpc": "bits per char",
                   "ja_ppl": "token perplexity", "en_ppl": "token perplexity",
                   "en_bpc": "bits per char", "ja_bpc": "bits per char",
                   "ja_chat_ppl": "token perplexity", "ja_chat_qa": "answer accuracy, 0-1",
                   "niilc": "character F1, 0-1", "wmt": "BLEU, 0-100"}
  assert counts["wiki_bpc"] == 5 and counts["ja_chat_qa"] == 8 and counts["niilc"] == 7
  assert counts["ja_ppl"] == 10  # the task named ja_ppl, not wiki_ppl's language default


def test_train_summary():
  log = [{"step": 0, "eval": 1}, {"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.5},
         {"step": 3, "loss": 4.0}]
  assert report.train_summary(log) == {"steps": 3, "first_loss": 5.0, "final_loss": 4.0,
                                       "curve": [(1, 5.0), (2, 4.5), (3, 4.0)]}
  assert report.train_summary([{"step": 1}]) == {}


def test_noise_band_hand_values():
  # p = 0.55: 2 * sqrt(2 * 0.55 * 0.45 / 40)
  assert report.noise_band(0.3, 0.8, 40) == pytest.approx(2 * math.sqrt(0.012375))
  # p is kept away from 0 and 1 by 1/n, so identical zero scores still have a band.
  assert report.noise_band(0.0, 0.0, 10) == pytest.approx(2 * math.sqrt(2 * 0.1 * 0.9 / 10))


def test_compare_directions_bands_and_expectations():
  models = {"a": {"ja_ppl": 100.0, "en_ppl": 50.0, "mc": 0.30, "qa": 0.10,
                  "en_ja_translation": 10.0, "wmt": 10.0},
            "b": {"ja_ppl": 60.0, "en_ppl": 50.5, "mc": 0.80, "qa": 0.12,
                  "en_ja_translation": 13.0, "wmt": 11.5, "only_b": 1.0}}
  counts = {"a": {}, "b": {"mc": 40, "qa": 40}}
  units = {"en_ja_translation": "BLEU, 0-100", "wmt": "BLEU, 0-100", "mc": "accuracy, 0-1"}
  found = {f["metric"]: f for f in report.compare(
      models, counts, {"before": "a", "after": "b", "expect": {"qa": "up", "en_ppl": "same"}},
      units)}
  assert set(found) == {"ja_ppl", "en_ppl", "mc", "qa", "en_ja_translation", "wmt"}
  assert found["ja_ppl"] == {"metric": "ja_ppl", "before": 100.0, "after": 60.0,
                             "direction": "down", "noise_band": None}
  assert found["en_ppl"]["direction"] == "same" and found["en_ppl"]["as_expected"]  # 1% < 2%
  assert found["mc"]["direction"] == "up"
  assert found["mc"]["noise_band"] == pytest.approx(report.noise_band(0.3, 0.8, 40))
  assert found["qa"]["direction"] == "same" and found["qa"]["expected"] == "up"
  assert not found["qa"]["as_expected"]
  assert found["en_ja_translation"]["noise_band"] == report.BLEU_TOLERANCE
  assert found["en_ja_translation"]["direction"] == "up"  # 3 BLEU points > 2
  assert found["wmt"]["direction"] == "same"  # a BLEU task by its unit, whatever its name
  assert found["wmt"]["noise_band"] == report.BLEU_TOLERANCE == 2.0


def test_sentences():
  assert report.sentence({"metric": "ja_ppl", "before": 100.0, "after": 60.0, "direction": "down",
                          "noise_band": None, "expected": "down", "as_expected": True}) == (
      "`ja_ppl` fell 40% (100.0 -> 60.0) -- as expected.")
  assert report.sentence({"metric": "en_ppl", "before": 5.0, "after": 5.05, "direction": "same",
                          "noise_band": None}) == (
      "`en_ppl` did not move (5.000 -> 5.050, under 2% relative change).")
  assert report.sentence({"metric": "qa", "before": 0.1, "after": 0.5, "direction": "up",
                          "noise_band": 0.2, "expected": "down", "as_expected": False}) == (
      "`qa` rose from 0.100 to 0.500 (beyond the +/-0.20 noise band) -- expected to fall; that "
      "effect is absent in this run.")


def _inputs():
  report_cfg = {
      "title": "T",
      "comparisons": [{"what": "CPT", "before": "base", "after": "cpt", "note": "Why.",
                       "expect": {"ja_ppl": "down", "ja_qa": "up"}},
                      {"before": "base", "after": "missing"}],  # skipped: no results
      "ablations": [{"name": "abl", "reference": "cpt", "expect": {"ja_qa": "down"}}]}
  stages = {"cpt": {"kind": "train", "status": "done", "seconds": 12.0,
                    "train_log": [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 3.0}]},
            "eval": {"kind": "eval", "status": "partial"}}
  results = {"base": {"ja_ppl": _ppl(100.0), "ja_qa": _score("qa", 0.1)},
             "cpt": {"ja_ppl": _ppl(60.0), "ja_qa": _score("qa", 0.6)},
             "abl": {"ja_ppl": _ppl(61.0), "ja_qa": _score("qa", 0.55)}}
  return report_cfg, stages, results


def test_build():
  rep = report.build(*_inputs(), ablation_models={"abl"})
  assert rep["title"] == "T"
  assert rep["stages"] == {"cpt": {"kind": "train", "status": "done", "seconds": 12.0,
                                   "steps": 2, "first_loss": 5.0, "final_loss": 3.0},
                           "eval": {"kind": "eval", "status": "partial"}}
  assert list(rep["models"]) == ["base", "cpt"]
  assert rep["models"]["cpt"] == {"ja_ppl": 60.0, "ja_bpc": 6.0, "ja_qa": 0.6}
  assert set(rep["examples"]) == {"base", "cpt", "abl"}
  assert [c["after"] for c in rep["comparisons"]] == ["cpt"]
  abl = rep["ablations"]["abl"]
  assert abl["delta"]["ja_qa"] == pytest.approx(-0.05) and abl["delta"]["ja_ppl"] == 1.0
  assert {f["metric"]: f["direction"] for f in abl["findings"]} == {
      "ja_ppl": "same", "ja_bpc": "same", "ja_qa": "same"}
  assert json.loads(json.dumps(rep)) == rep  # report.json holds exactly this


def test_markdown_in_plain_words():
  rep = report.build(*_inputs(), ablation_models={"abl"})
  md = report.markdown(rep, ["/w/radar.png"], intro="Tiny models.")
  assert md.startswith("# T\n\nTiny models.\n\n## Summary\n\n"
                       "2 of 3 expected effects showed up in this run.\n"
                       "Seen: CPT: `ja_ppl`; CPT: `ja_qa`.\n"
                       "Not seen (the measured change was the other way or within noise): "
                       "abl: `ja_qa`.\n")
  # Higher-is-better columns first, then lower-is-better ones.
  assert ("| model | ja_qa (character F1, 0-1) | ja_bpc (bits per char) | ja_ppl (token "
          "perplexity) |\n|---|---|---|---|\n") in md
  assert "| abl | 0.550 | 6.100 | 61.0 |" in md
  assert ("### CPT: `base` -> `cpt`\n\nWhy.\n\n- `ja_bpc` fell 40% (10.0 -> 6.000).\n"
          "- `ja_ppl` fell 40% (100.0 -> 60.0) -- as expected.\n") in md
  assert "Every expected effect showed up in this run." in md
  assert ("### `abl` vs `cpt`\n\n- `ja_qa` did not move (0.600 -> 0.550, within the +/-0.22 "
          "noise band) -- expected to fall; that effect is absent in this run.\n"
          "- Unchanged (within noise): `ja_bpc`, `ja_ppl`.\n\n"
          "1 of 1 expected effect(s) did not show up in this run.") in md
  assert "| cpt | train | done | 12.0 | 2 | 5.000 | 3.000 |" in md
  assert "| eval | eval | partial | - | - | - | - |" in md
  assert "Stage time in total: 12 s" in md
  assert md.endswith("## Plots\n\n![radar.png](radar.png)\n")


def test_write_files(tmp_path):
  rep = report.build(*_inputs(), ablation_models={"abl"})
  curves = {"cpt (pretrain)": [(1, 5.0), (2, 3.0)], "empty": None}
  paths = report.write(str(tmp_path), rep, intro="x", curves=curves)
  names = [os.path.basename(p) for p in paths]
  assert names == ["report.json", "report.md", "loss_curves.png", "perplexity.png"]  # 1 score:
  assert json.load(open(tmp_path / "report.json")) == rep                           # no radar
  assert "![loss_curves.png](loss_curves.png)" in open(tmp_path / "report.md").read()
  for png in names[2:]:
    assert os.path.getsize(tmp_path / png) > 1000
  assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_translation_is_bleu_0_100_in_the_table_and_over_100_on_the_radar(tmp_path, monkeypatch):
  results = {m: {"en_ja_translation": _score("translation", bleu), "ja_qa": _score("qa", qa),
                 "ja_mc": _score("multiple_choice", 0.5)}
             for m, bleu, qa in (("base", 12.5, 0.1), ("cpt", 31.25, 0.6))}
  rep = report.build({"comparisons": [{"before": "base", "after": "cpt"}]}, {}, results)
  assert rep["units"]["en_ja_translation"] == "BLEU, 0-100"
  md = report.markdown(rep)
  assert ("| model | en_ja_translation (BLEU, 0-100) | ja_mc (accuracy, 0-1) | "
          "ja_qa (character F1, 0-1) |") in md
  assert "| base | 12.5 | 0.500 | 0.100 |" in md and "| cpt | 31.2 | 0.500 | 0.600 |" in md
  assert "`en_ja_translation` rose from 12.5 to 31.2 (beyond the +/-2.00 noise band)" in md
  from swallow_jax.evaluate import plots  # pylint: disable=g-import-not-at-top
  drawn = {}
  monkeypatch.setattr(plots, "radar_chart", lambda scores, path, **kw: drawn.update(
      scores=scores, **kw) or path)
  report.plot(rep, str(tmp_path))
  assert drawn["scores"]["cpt"] == {"en_ja_translation": 0.3125, "ja_mc": 0.5, "ja_qa": 0.6}
  assert drawn["labels"] == {"en_ja_translation": "en_ja_translation (BLEU/100)"}
