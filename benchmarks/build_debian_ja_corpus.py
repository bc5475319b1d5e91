"""Assemble the vocabulary study's Japanese text from Debian's Japanese documentation packages.

No Japanese corpus ships with the packages this project installs; Debian's Japanese man pages and
manuals are the largest real Japanese text reachable offline here (see docs/tokenizers.md).

    (cd debs && apt-get download manpages-ja manpages-ja-dev debian-reference-ja ... gimp-help-ja)
    for f in debs/*.deb; do dpkg-deb -x "$f" root; done
    python benchmarks/build_debian_ja_corpus.py root ja            # 1 in 20 documents held out
    python benchmarks/build_debian_ja_corpus.py root ja_gimp /gimp/  # the GIMP manual held out

Writes OUT/corpus.txt and OUT/heldout.txt, one paragraph a line, each document wholly on one side.
"""

import gzip
import hashlib
import html.parser
import os
import re
import sys

KANA = re.compile("[\u3040-\u30ff]")
BLOCK_TAGS = ("p", "div", "li", "tr", "h1", "h2", "h3", "h4", "pre", "dt", "dd", "title")
ROFF_ESCAPES = re.compile(
    r"\\f(\[[^\]]*\]|\(..|.)|\\s[-+]?\d|\\\(..|\\\[[^\]]*\]|\\[&|^-]|\\[*n]\(?.?.?")


class _HTMLText(html.parser.HTMLParser):
  """Text of an HTML page, a line break at every block element, scripts and styles dropped."""

  def __init__(self):
    super().__init__()
    self.parts, self.skip = [], 0

  def handle_starttag(self, tag, attrs):
    if tag in ("script", "style"):
      self.skip += 1
    if tag in BLOCK_TAGS + ("br",):
      self.parts.append("\n")

  def handle_endtag(self, tag):
    if tag in ("script", "style"):
      self.skip -= 1
    if tag in BLOCK_TAGS:
      self.parts.append("\n")

  def handle_data(self, data):
    if not self.skip:
      self.parts.append(data)


def html_lines(path: str) -> list[str]:
  parser = _HTMLText()
  with open(path, encoding="utf-8", errors="replace") as f:
    parser.feed(f.read())
  return "".join(parser.parts).split("\n")


def man_lines(path: str) -> list[str]:
  """Text lines of a gzipped roff man page: comments and most requests dropped, escapes removed."""
  lines = []
  for line in gzip.open(path, "rt", encoding="utf-8", errors="replace"):
    if line.startswith(('.\\"', "'\\\"")):
      continue
    if line.startswith((".", "'")):
      m = re.match(r"[.']\s*(SH|SS|B|I|BR|RB|IR|RI|BI|IB|TP|IP|SM)\b\s*(.*)", line)
      if not m:
        continue
      line = m.group(2).replace('"', "")
    lines.append(ROFF_ESCAPES.sub("", line).replace("\\e", "\\"))
  return lines


def main(root: str, out: str, heldout_part: str | None = None) -> None:
  seen, sides = set(), {"corpus": [], "heldout": []}
  for dirpath, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      path = os.path.join(dirpath, name)
      if name.endswith(".html") and "_sources" not in path and "search" not in name:
        lines = html_lines(path)
      elif "/man/ja" in path and name.endswith(".gz"):
        lines = man_lines(path)
      else:
        continue
      rel = os.path.relpath(path, root)
      if heldout_part:
        side = "heldout" if heldout_part in rel else "corpus"
      else:
        side = "heldout" if int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 20 == 0 else "corpus"
      for line in lines:
        line = " ".join(line.split())
        if KANA.search(line) and line not in seen:  # Japanese paragraphs, exact duplicates dropped
          seen.add(line)
          sides[side].append(line)
  os.makedirs(out, exist_ok=True)
  for side, lines in sides.items():
    with open(os.path.join(out, side + ".txt"), "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
    print(side, len(lines), "lines", sum(map(len, lines)), "chars")


if __name__ == "__main__":
  if len(sys.argv) not in (3, 4):
    sys.exit(__doc__)
  main(*sys.argv[1:])
