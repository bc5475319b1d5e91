"""A small invented world of facts, named in Japanese and in English.

Every text source, dialogue and evaluation task of the demo is written from one `World`, so a fact
seen in English pretraining is the same fact in Japanese continual pretraining and in the Japanese
evaluation. Names are built from kanji parts with fixed readings, so each entity has a Japanese
name (青山市) and an English one (Aoyama) that always correspond.
"""

import dataclasses
import random

# Kanji parts with the reading used for their romanisation.
_FIRST = (("青", "Ao"), ("赤", "Aka"), ("北", "Kita"), ("南", "Minami"), ("東", "Higashi"),
          ("西", "Nishi"), ("高", "Taka"), ("松", "Matsu"), ("桜", "Sakura"), ("星", "Hoshi"),
          ("白", "Shira"), ("黒", "Kuro"), ("若", "Waka"), ("朝", "Asa"), ("夏", "Natsu"),
          ("秋", "Aki"), ("石", "Ishi"), ("竹", "Take"), ("梅", "Ume"), ("森", "Mori"))
_SECOND = (("山", "yama"), ("川", "kawa"), ("原", "hara"), ("野", "no"), ("岡", "oka"),
           ("島", "shima"), ("浜", "hama"), ("沢", "sawa"), ("谷", "tani"), ("崎", "saki"),
           ("本", "moto"), ("橋", "hashi"), ("宮", "miya"))
_GIVEN = (("太郎", "Taro"), ("花子", "Hanako"), ("健太", "Kenta"), ("由美", "Yumi"),
          ("翔太", "Shota"), ("美咲", "Misaki"), ("大輔", "Daisuke"), ("直子", "Naoko"),
          ("隆", "Takashi"), ("恵", "Megumi"), ("誠", "Makoto"), ("彩", "Aya"), ("学", "Manabu"),
          ("陽子", "Yoko"), ("拓也", "Takuya"), ("舞", "Mai"), ("亮", "Ryo"), ("愛", "Ai"),
          ("剛", "Tsuyoshi"), ("優子", "Yuko"))
JOBS = (("医者", "doctor"), ("教師", "teacher"), ("漁師", "fisher"), ("大工", "carpenter"),
        ("料理人", "cook"), ("農家", "farmer"), ("技師", "engineer"), ("画家", "painter"),
        ("歌手", "singer"), ("看護師", "nurse"), ("警察官", "police officer"), ("記者", "reporter"))
PRODUCTS = (("茶", "tea"), ("米", "rice"), ("りんご", "apples"), ("みかん", "oranges"),
            ("魚", "fish"), ("陶器", "pottery"), ("和紙", "paper"), ("酒", "sake"), ("絹", "silk"),
            ("塩", "salt"), ("木材", "timber"), ("蜂蜜", "honey"))
REGIONS = (("北部", "north"), ("南部", "south"), ("東部", "east"), ("西部", "west"),
           ("中部", "centre"))


@dataclasses.dataclass(frozen=True)
class Name:
  """An entity's name in Japanese and English."""

  ja: str
  en: str


@dataclasses.dataclass(frozen=True)
class River:
  """A river and its length."""

  name: Name          # 青川 / the Ao River
  length_km: int


@dataclasses.dataclass(frozen=True)
class Town:
  """A town and its facts (region, population, river, product)."""

  name: Name          # 青山 / Aoyama (Japanese text adds 市)
  region: Name
  population: int
  river: int          # index into World.rivers
  product: Name


@dataclasses.dataclass(frozen=True)
class Person:
  """A person and their facts (job, hometown, age)."""

  name: Name          # 青山太郎 / Taro Aoyama
  job: Name
  hometown: int       # index into World.towns
  age: int


@dataclasses.dataclass(frozen=True)
class World:
  """All entities of the generated world; facts refer to entities by index."""

  towns: tuple[Town, ...]
  people: tuple[Person, ...]
  rivers: tuple[River, ...]

  def residents(self, town: int) -> list[Person]:
    """People whose hometown is town `town`."""
    return [p for p in self.people if p.hometown == town]

  def towns_on(self, river: int) -> list[Town]:
    """Towns on river `river`."""
    return [t for t in self.towns if t.river == river]


def make_world(seed: int = 0, num_towns: int = 12, num_people: int = 24,
               num_rivers: int = 5) -> World:
  """A deterministic world; the same arguments always give the same facts."""
  if not 1 <= num_rivers <= len(_FIRST) or num_towns < num_rivers:
    raise ValueError(f"need 1 <= num_rivers <= {len(_FIRST)} and num_towns >= num_rivers")
  rng = random.Random(f"world-{seed}")
  compounds = [(f + s, fr + sr) for f, fr in _FIRST for s, sr in _SECOND]
  if num_towns + num_people > len(compounds):
    raise ValueError(f"at most {len(compounds)} towns and families together")
  rng.shuffle(compounds)
  family_names = compounds[num_towns:num_towns + num_people]
  rivers = tuple(River(Name(k + "川", f"{r} River"), rng.randrange(20, 400))
                 for k, r in rng.sample(_FIRST, num_rivers))
  # Every river gets at least one town, so every river fact has a town to talk about.
  river_of = list(range(num_rivers)) + [rng.randrange(num_rivers)
                                        for _ in range(num_towns - num_rivers)]
  rng.shuffle(river_of)
  towns = tuple(
      Town(name=Name(ja, en), region=Name(*rng.choice(REGIONS)),
           population=rng.randrange(20, 990) * 100, river=river_of[i],
           product=Name(*rng.choice(PRODUCTS)))
      for i, (ja, en) in enumerate(compounds[:num_towns]))
  people = tuple(
      Person(name=Name(fj + gj, f"{ge} {fe}"), job=Name(*rng.choice(JOBS)),
             hometown=rng.randrange(num_towns), age=rng.randrange(20, 80))
      for (fj, fe), (gj, ge) in zip(family_names, (rng.choice(_GIVEN) for _ in family_names)))
  return World(towns=towns, people=people, rivers=rivers)
