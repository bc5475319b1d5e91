"""Sentences, documents and dialogues about a `World`, in Japanese and English.

A fact is a (kind, entity) pair. Each kind has a few paraphrases; paraphrase i in Japanese and
paraphrase i in English say the same thing, which is what makes the parallel corpus and the
translation task exact. Documents are sampled with a `random.Random` the caller seeds, so every
source is reproducible on its own.
"""

import random
import string
from typing import Callable

from swallow_jax.data.chat import SWALLOW_SYSTEM_PROMPT
from swallow_jax.demo.world import World

Lang = str  # 'ja' | 'en'
_SPACE = {"ja": "", "en": " "}  # between sentences

# kind -> paraphrases as (Japanese, English) format strings.
STATEMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "town_region": (
        ("{T}は国の{region}にある市です。", "{T} is a city in the {region} of the country."),
        ("{T}は{region}の町として知られています。", "{T} is known as a town in the {region}."),
        ("国の{region}に{T}という市があります。",
         "There is a city called {T} in the {region} of the country."),
    ),
    "town_population": (
        ("{T}の人口は{population}人です。", "The population of {T} is {population}."),
        ("{T}には{population}人が住んでいます。", "{population} people live in {T}."),
        ("{T}は人口{population}人の市です。", "{T} is a city of {population} people."),
    ),
    "town_river": (
        ("{R}が{T}を流れています。", "The {R} flows through {T}."),
        ("{T}は{R}のほとりにあります。", "{T} lies on the {R}."),
        ("{T}を流れる川は{R}です。", "The river that flows through {T} is the {R}."),
    ),
    "town_product": (
        ("{T}は{product}で有名です。", "{T} is famous for its {product}."),
        ("{T}の名産品は{product}です。", "The specialty of {T} is {product}."),
        ("{T}では昔から{product}が作られています。", "{T} has made {product} for a long time."),
    ),
    "person_job": (
        ("{P}さんは{job}です。", "{P} is {a_job}."),
        ("{P}さんは{job}として働いています。", "{P} works as {a_job}."),
        ("{P}さんの仕事は{job}です。", "The job of {P} is {job}."),
    ),
    "person_hometown": (
        ("{P}さんは{home}の出身です。", "{P} comes from {home}."),
        ("{P}さんは{home}で生まれました。", "{P} was born in {home}."),
        ("{P}さんのふるさとは{home}です。", "The hometown of {P} is {home}."),
    ),
    "person_age": (
        ("{P}さんは{age}歳です。", "{P} is {age} years old."),
        ("{P}さんの年齢は{age}歳です。", "The age of {P} is {age}."),
        ("{P}さんは今年{age}歳になります。", "{P} turns {age} this year."),
    ),
    "river_length": (
        ("{R}の長さは{length}キロメートルです。", "The {R} is {length} kilometres long."),
        ("{R}は全長{length}キロメートルの川です。",
         "The {R} is a river with a total length of {length} kilometres."),
    ),
}

# kind -> (Japanese question, English question, Japanese short answer, English short answer).
QUESTIONS: dict[str, tuple[str, str, str, str]] = {
    "town_region": ("{T}は国のどこにありますか。", "In which part of the country is {T}?",
                    "{region}", "the {region}"),
    "town_population": ("{T}の人口は何人ですか。", "What is the population of {T}?",
                        "{population}人", "{population}"),
    "town_river": ("{T}を流れる川は何ですか。", "Which river flows through {T}?", "{R}", "the {R}"),
    "town_product": ("{T}の名産品は何ですか。", "What is the specialty of {T}?",
                     "{product}", "{product}"),
    "person_job": ("{P}さんの仕事は何ですか。", "What is the job of {P}?", "{job}", "{job}"),
    "person_hometown": ("{P}さんの出身地はどこですか。", "Where does {P} come from?",
                        "{home}", "{home}"),
    "person_age": ("{P}さんは何歳ですか。", "How old is {P}?", "{age}歳", "{age}"),
    "river_length": ("{R}の長さは何キロメートルですか。", "How many kilometres long is the {R}?",
                     "{length}キロメートル", "{length} kilometres"),
}

TOWN_KINDS = ("town_region", "town_population", "town_river", "town_product")
PERSON_KINDS = ("person_job", "person_hometown", "person_age")
RIVER_KINDS = ("river_length",)

_FILLER = (
    ("今日はいい天気でした。", "The weather was nice today."),
    ("また行きたいと思います。", "I would like to go again."),
    ("友達と一緒に出かけました。", "I went there with a friend."),
    ("駅から歩いて十分ほどです。", "It is about ten minutes on foot from the station."),
    ("写真をたくさん撮りました。", "I took a lot of photos."),
    ("みなさんもぜひ訪れてください。", "Please visit if you have the chance."),
    ("町の人はとても親切でした。", "The people in the town were very kind."),
    ("夜は静かでした。", "The night was quiet."),
)
_OPENERS = (
    ("先週、{T}に行きました。", "Last week I went to {T}."),
    ("{T}についてのニュースです。", "Here is some news about {T}."),
    ("夏休みに{T}を旅行しました。", "During the summer holiday I travelled to {T}."),
    ("{T}を紹介します。", "Let me introduce {T}."),
)


def fields(world: World, kind: str, idx: int, lang: Lang) -> dict[str, str]:
  """The format fields of fact (kind, idx) in one language."""
  name = lambda n: getattr(n, lang)  # a Name in this language
  town_name = lambda t: t.name.ja + "市" if lang == "ja" else t.name.en
  if kind.startswith("town_"):
    t = world.towns[idx]
    return dict(T=town_name(t), region=name(t.region), population=str(t.population),
                R=name(world.rivers[t.river].name), product=name(t.product))
  if kind.startswith("person_"):
    p = world.people[idx]
    job = name(p.job)
    return dict(P=name(p.name), job=job, a_job=("an " if job[0] in "aeiou" else "a ") + job,
                home=town_name(world.towns[p.hometown]), age=str(p.age))
  r = world.rivers[idx]
  return dict(R=name(r.name), length=str(r.length_km))


def statement(world: World, kind: str, idx: int, lang: Lang, variant: int) -> str:
  """Paraphrase `variant` (mod the kind's count) of fact (kind, idx) in `lang`."""
  pair = STATEMENTS[kind][variant % len(STATEMENTS[kind])]
  return pair[lang == "en"].format(**fields(world, kind, idx, lang))


def question(world: World, kind: str, idx: int, lang: Lang) -> tuple[str, str]:
  """(question, short answer) for one fact."""
  f = fields(world, kind, idx, lang)
  q, a = QUESTIONS[kind][lang == "en"::2]  # this language's question and short answer
  return q.format(**f), a.format(**f)


def answer_value(world: World, kind: str, idx: int, lang: Lang) -> str:
  """The bare value a short answer is built around ("12300" for "12300人")."""
  template = QUESTIONS[kind][2 if lang == "ja" else 3]
  (field,) = [f for _, f, _, _ in string.Formatter().parse(template) if f]
  return fields(world, kind, idx, lang)[field]


def all_facts(world: World) -> list[tuple[str, int]]:
  """Every (kind, entity index) fact the world holds, towns then people then rivers."""
  return ([(k, i) for i in range(len(world.towns)) for k in TOWN_KINDS]
          + [(k, i) for i in range(len(world.people)) for k in PERSON_KINDS]
          + [(k, i) for i in range(len(world.rivers)) for k in RIVER_KINDS])


def split_facts(world: World, seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
  """(asked, held_out): half of each kind of fact is ever asked about in training text. Prose
  states every fact; questions (FAQ pages, dialogues) only ask about the first half, and the
  evaluation asks about the second, so answering it needs knowledge learnt from prose, not a
  memorised question."""
  rng = random.Random(f"split-{seed}")
  asked, held_out = [], []
  for kind in STATEMENTS:
    facts = [f for f in all_facts(world) if f[0] == kind]
    rng.shuffle(facts)
    asked += facts[:len(facts) // 2]
    held_out += facts[len(facts) // 2:]
  return asked, held_out


def faq_page(world: World, rng: random.Random, lang: Lang, asked: list[tuple[str, int]]) -> str:
  """A web FAQ page: questions from `asked` with their short answers, in the QA task's format."""
  pairs = [question(world, k, i, lang) for k, i in rng.sample(asked, rng.randint(2, 5))]
  layout = "質問: {}\n回答: {}" if lang == "ja" else "Question: {}\nAnswer: {}"
  return "\n\n".join(layout.format(q, a) for q, a in pairs)


def _say(world: World, facts: list[tuple[str, int]], lang: Lang, rng: random.Random) -> list[str]:
  return [statement(world, k, i, lang, rng.randrange(3)) for k, i in facts]


def wiki_article(world: World, rng: random.Random, lang: Lang) -> str:
  """An encyclopedia-style article: a title line, then the entity's facts and related ones."""
  entity = rng.randrange(len(world.towns) + len(world.people) + len(world.rivers))
  if entity < len(world.towns):
    facts = [(k, entity) for k in TOWN_KINDS]
    facts += [("person_job", world.people.index(p)) for p in world.residents(entity)]
    title = fields(world, "town_region", entity, lang)["T"]
  elif entity < len(world.towns) + len(world.people):
    i = entity - len(world.towns)
    facts = [(k, i) for k in PERSON_KINDS] + [("town_product", world.people[i].hometown)]
    title = fields(world, "person_job", i, lang)["P"]
  else:
    i = entity - len(world.towns) - len(world.people)
    facts = [("river_length", i)] + [("town_river", world.towns.index(t))
                                      for t in world.towns_on(i)]
    title = fields(world, "river_length", i, lang)["R"]
  head, rest = facts[0], facts[1:]
  rng.shuffle(rest)
  return title + "\n" + _SPACE[lang].join(_say(world, [head] + rest, lang, rng))


def web_post(world: World, rng: random.Random, lang: Lang) -> str:
  """A blog or news post: a visit to one town, a few of its facts and people, some chatter."""
  t = rng.randrange(len(world.towns))
  facts = [(k, t) for k in rng.sample(TOWN_KINDS, rng.randint(1, 3))]
  facts += [(rng.choice(PERSON_KINDS), world.people.index(p)) for p in world.residents(t)[:2]]
  if rng.random() < 0.5:
    facts.append(("river_length", world.towns[t].river))
  sentences = _say(world, facts, lang, rng)
  sentences += [pair[lang == "en"] for pair in rng.sample(_FILLER, rng.randint(1, 3))]
  rng.shuffle(sentences)
  opener = rng.choice(_OPENERS)[lang == "en"].format(**fields(world, "town_region", t, lang))
  return _SPACE[lang].join([opener] + sentences)


def parallel_pair(world: World, rng: random.Random) -> tuple[str, str]:
  """(Japanese, English): one fact, the same paraphrase in both languages."""
  kind, idx = rng.choice(all_facts(world))
  variant = rng.randrange(3)
  return (statement(world, kind, idx, "ja", variant), statement(world, kind, idx, "en", variant))


# Arithmetic word problems: (Japanese, English, operator, answer function).
_PROBLEMS: tuple[tuple[str, str, str, Callable[[int, int], int]], ...] = (
    ("{P}さんは{product}を{a}箱持っています。さらに{b}箱買いました。全部で何箱ですか。",
     "{P} has {a} boxes of {product} and buys {b} more boxes. How many boxes does {P} have now?",
     "+", lambda a, b: a + b),
    ("{P}さんは{a}円持っています。{product}を{b}円で買いました。残りは何円ですか。",
     "{P} has {a} yen and buys {product} for {b} yen. How many yen are left?",
     "-", lambda a, b: a - b),
    ("{T}の店は一日に{product}を{a}箱売ります。{b}日間では何箱売りますか。",
     "A shop in {T} sells {a} boxes of {product} a day. How many boxes does it sell in {b} days?",
     "*", lambda a, b: a * b),
)
_OP_JA = {"+": "+", "-": "-", "*": "×"}


def math_problem(world: World, rng: random.Random, lang: Lang) -> tuple[str, str, int]:
  """(problem, worked solution, numeric answer)."""
  ja_t, en_t, op, fn = rng.choice(_PROBLEMS)
  person = rng.randrange(len(world.people))
  f = fields(world, "person_job", person, lang)
  f.update(fields(world, "town_region", world.people[person].hometown, lang))
  a, b = rng.randint(2, 20), rng.randint(2, 9 if op == "*" else 20)
  if op == "-":
    a, b = a * 10 + b * 10, b * 10
  answer = fn(a, b)
  problem = (ja_t if lang == "ja" else en_t).format(a=a, b=b, **f)
  solution = (f"{a} {_OP_JA[op]} {b} = {answer}。答えは{answer}です。" if lang == "ja"
              else f"{a} {op} {b} = {answer}. The answer is {answer}.")
  return problem, solution, answer


def math_text(world: World, rng: random.Random, lang: Lang) -> str:
  """A math problem with its worked solution, as a corpus document."""
  layout = "問題: {}\n解答: {}" if lang == "ja" else "Question: {}\nSolution: {}"
  return layout.format(*math_problem(world, rng, lang)[:2])


_GREETINGS = (
    ("こんにちは。", "こんにちは。何かお手伝いできることはありますか。"),
    ("ありがとうございます。", "どういたしまして。ほかに質問があれば聞いてください。"),
)
_GREETINGS_EN = (
    ("Hello!", "Hello! How can I help you today?"),
    ("Thank you.", "You are welcome. Ask me anything else you like."),
)


def dialogue(world: World, rng: random.Random, lang: Lang,
             asked: list[tuple[str, int]]) -> list[dict[str, str]]:
  """A 1-3 exchange chat: questions from `asked` answered in full sentences, math, translation."""
  messages = []
  if lang == "ja" and rng.random() < 0.3:
    messages.append({"role": "system", "content": SWALLOW_SYSTEM_PROMPT})
  for _ in range(rng.choice((1, 1, 2, 3))):
    r = rng.random()
    if r < 0.6:
      kind, idx = rng.choice(asked)
      q, _ = question(world, kind, idx, lang)
      a = statement(world, kind, idx, lang, rng.randrange(3))
    elif r < 0.85:
      q, a, _ = math_problem(world, rng, lang)
    elif r < 0.95:
      ja, en = parallel_pair(world, rng)
      q, a = ((f"次の文を英語に翻訳してください。\n{ja}", en) if lang == "ja" else
              (f"Translate into Japanese:\n{en}", ja))
    else:
      q, a = rng.choice(_GREETINGS if lang == "ja" else _GREETINGS_EN)
    messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
  return messages
