"""The published mixtures as configs."""

import pytest

from swallow_jax.data import filters
from swallow_jax.data import mixtures


@pytest.mark.parametrize("fn", [mixtures.llama3_swallow_8b, mixtures.llama31_swallow_8b])
def test_mixture_shape(fn):
  sources = fn("/data")
  assert abs(sum(s["weight"] for s in sources) - 1.0) < 2e-3  # published shares sum to 100.1%
  assert len({s["name"] for s in sources}) == len(sources)
  for s in sources:
    assert s["path"] == f"/data/{s['name']}" and s["weight"] > 0
    filters.parse_filter(s["filter"])


def test_llama3_swallow_shares():
  shares = {s["name"]: s["weight"] for s in mixtures.llama3_swallow_8b("/d")}
  assert shares == {"swallow_corpus": 0.808, "ja_wikipedia": 0.017, "laboro_paracorpus": 0.009,
                    "en_wikipedia": 0.021, "refinedweb": 0.021, "cosmopedia": 0.051,
                    "algebraic_stack": 0.037, "openwebmath": 0.037}
  cosmo = next(s for s in mixtures.llama3_swallow_8b("/d") if s["name"] == "cosmopedia")
  keep = filters.parse_filter(cosmo["filter"])
  assert not keep({"subset": "web_samples_v1"}) and not keep({"subset": "web_samples_v2"})
  assert keep({"subset": "stanford"})


def test_drop_source_renormalises_to_the_same_total():
  sources = [dict(name="ja", weight=0.8), dict(name="para", weight=0.05),
             dict(name="en", weight=0.15)]
  kept = mixtures.drop_source(sources, "para")
  assert [s["name"] for s in kept] == ["ja", "en"]
  assert sum(s["weight"] for s in kept) == pytest.approx(1.0)
  assert kept[0]["weight"] / kept[1]["weight"] == pytest.approx(0.8 / 0.15)
  assert sources[0]["weight"] == 0.8  # the input is left alone
  with pytest.raises(ValueError, match="no source named 'x'"):
    mixtures.drop_source(sources, "x")
