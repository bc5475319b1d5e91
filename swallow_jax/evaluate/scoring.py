"""Scorers for generated answers: exact match, character F1, numeric match, BLEU.

Exact match and character F1 compare `normalize_answer` forms: NFKC (full-width letters and
digits become ASCII), lower case, no whitespace and no Unicode punctuation (P*: 、。「」・！？ ...).
Japanese has no word spaces, so F1 is over character multisets (the JSQuAD / NIILC convention of
the Swallow evaluation).
"""

from collections import Counter
from collections.abc import Sequence
import decimal
import re
import unicodedata

import sacrebleu

# Numbers as MGSM answers write them: optional sign, thousands separators, decimals.
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")


def normalize_answer(text: str) -> str:
  """NFKC, lower case, no whitespace or punctuation: the form answers are compared in."""
  text = unicodedata.normalize("NFKC", text).lower()
  return "".join(c for c in text
                 if not c.isspace() and not unicodedata.category(c).startswith("P"))


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
  """1.0 if the normalised prediction equals any normalised gold answer."""
  golds = [golds] if isinstance(golds, str) else golds
  return float(normalize_answer(prediction) in map(normalize_answer, golds))


def char_f1(prediction: str, golds: str | Sequence[str]) -> float:
  """Character-multiset F1 of the normalised strings, the maximum over gold answers."""
  golds = [golds] if isinstance(golds, str) else golds
  pred = normalize_answer(prediction)
  best = 0.0
  for gold in map(normalize_answer, golds):
    common = sum((Counter(pred) & Counter(gold)).values())
    if not pred or not gold:
      best = max(best, float(pred == gold))
    elif common:
      p, r = common / len(pred), common / len(gold)
      best = max(best, 2 * p * r / (p + r))
  return best


def extract_last_number(text: str) -> decimal.Decimal | None:
  """The last number in `text` (after NFKC, so full-width digits count), or None."""
  matches = _NUMBER.findall(unicodedata.normalize("NFKC", text))  # each one a valid Decimal
  return decimal.Decimal(matches[-1].replace(",", "")) if matches else None


def numeric_match(prediction: str, gold: str | int | float) -> float:
  """1.0 if the last number in the prediction equals the gold number (so 18 == 18.0 == 18.00)."""
  pred = extract_last_number(prediction)
  return float(pred is not None and pred == extract_last_number(str(gold)))


def bleu(hypotheses: Sequence[str], references: Sequence[str], *, tokenize: str) -> float:
  """Corpus BLEU (0-100) by sacrebleu with one reference per hypothesis."""
  return sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score


def bleu_tokenizer(target_lang: str) -> str:
  """sacrebleu tokenizer for a target language: MeCab for Japanese, 13a otherwise (WMT default)."""
  return "ja-mecab" if target_lang == "ja" else "13a"


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
  """The text before the earliest occurrence of any stop string."""
  return text[:min((i for s in stops if s and (i := text.find(s)) >= 0), default=len(text))]
