#!/usr/bin/python3
"""Lines of swallow_jax/ that exist only to deliver issues 15-18, at a commit (default 605beb3).

    python3 docs/line_budget.py [COMMIT|WORKTREE] [--repo=.] [--list]

Prints the total `wc -l` of swallow_jax/**/*.py at COMMIT, the feature lines per issue, their
sum and total - features (the size the restructuring of issue 14 alone would have).

WHOLE units are re-measured with `ast` at COMMIT: (path, qualname, issue, reason). qualname is
None (the whole file), a dotted def/class name ("Cls.method"), or a top-level assignment target
("STATE_FIELDS"); a unit spans its first decorator to its last line (docstring and inner blank
lines included; blank lines and comments between units are not counted). A whole unit missing at
COMMIT counts 0 and is reported. PARTIAL units are fixed estimates: (path, qualname, issue,
n_lines, how counted); qualname "<module>" means module-level lines (docstring, imports,
constants). A partial whose unit is gone at COMMIT counts 0; one larger than its unit is capped.
Overlaps (a unit inside another counted unit, a partial inside a whole unit) are refused.
Only /usr/bin/python3's standard library is used; nothing in the repository is changed.
"""

import ast
import os
import subprocess
import sys

# ---------------------------------------------------------------------------------------------
# Whole units: every line exists only for the issue.
WHOLE = [
    # --- issue 15: any Llama-family checkpoint (model-owned tokens, chat templates, Hub ids) ---
    ("swallow_jax/tokenizer/specials.py", None, 15, "special tokens / chat template from the model's own files"),
    ("swallow_jax/tokenizer/base.py", "char_spans", 15, "char offsets for {% generation %} masks"),
    ("swallow_jax/tokenizer/base.py", "BaseTokenizer._role_id", 15, "role token from tokenizer_config"),
    ("swallow_jax/tokenizer/base.py", "BaseTokenizer.bos_prefix", 15, "BOS only if the tokenizer adds one"),
    ("swallow_jax/tokenizer/base.py", "Tokenizer.encode_offsets", 15, "protocol: offsets for generation masks"),
    ("swallow_jax/tokenizer/base.py", "Tokenizer.bos_prefix", 15, "protocol: add-BOS-if-configured"),
    ("swallow_jax/tokenizer/hf_json.py", "HFTokenizer.encode_offsets", 15, "offsets (generation masks)"),
    ("swallow_jax/tokenizer/tiktoken_bpe.py", "TiktokenTokenizer.encode_offsets", 15, "offsets (generation masks)"),
    ("swallow_jax/tokenizer/sentencepiece_model.py", "SentencePieceTokenizer.encode_offsets", 15, "offsets (generation masks)"),
    ("swallow_jax/data/chat.py", "_LEADING_NEWLINES", 15, "prefix-rendering mask: reply cut"),
    ("swallow_jax/data/chat.py", "_GENERATION_TAG", 15, "detects {% generation %} templates"),
    ("swallow_jax/data/chat.py", "_Generation", 15, "jinja {% generation %} extension"),
    ("swallow_jax/data/chat.py", "_raise_exception", 15, "transformers' sandbox global"),
    ("swallow_jax/data/chat.py", "_tojson", 15, "transformers' sandbox filter"),
    ("swallow_jax/data/chat.py", "compile_template", 15, "sandboxed jinja2 environment"),
    ("swallow_jax/data/chat.py", "_template", 15, "model's own template or Llama 3 default"),
    ("swallow_jax/data/chat.py", "_token_strings", 15, "bos/eos/pad token names for the template"),
    ("swallow_jax/data/chat.py", "_render", 15, "renders any template (with generation spans)"),
    ("swallow_jax/data/chat.py", "_tokenize_offsets", 15, "ids + offsets of rendered text"),
    ("swallow_jax/data/chat.py", "_overlap_mask", 15, "transformers' assistant mask"),
    ("swallow_jax/data/chat.py", "_split", 15, "reply cut where the tokenizer cuts (any template)"),
    ("swallow_jax/data/chat.py", "chat_special_ids", 15, "--protect_tokens=chat_template"),
    ("swallow_jax/model/io.py", "_HUB_ID", 15, "Hub id pattern"),
    ("swallow_jax/model/io.py", "_hub_snapshot", 15, "Hub id -> local HF cache snapshot, download hint"),
    ("swallow_jax/model/io.py", "_minimal_tokenizer_config", 15, "export: tokenizer_config.json + chat template"),
    ("swallow_jax/__init__.py", "_Package", 15, "public names never shadowed by submodules"),
    # --- issue 16: resume safety, workdir lock, inputs never deleted, named data errors ---
    ("swallow_jax/train/lock.py", None, 16, "workdir lock (heartbeat, stale takeover)"),
    ("swallow_jax/train/loop.py", "STATE_FIELDS", 16, "model fields whose change refuses a resume"),
    ("swallow_jax/train/loop.py", "_config_changes", 16, "resume refusal + changed keys (its 9 LoRA lines too)"),
    ("swallow_jax/checkpoint.py", "CheckpointSaveError", 16, "failed async save"),
    ("swallow_jax/checkpoint.py", "check_save", 16, "stop at the next step after a failed save"),
    ("swallow_jax/checkpoint.py", "_flat_names", 16, "compare saved vs wanted state"),
    ("swallow_jax/checkpoint.py", "check_compatible", 16, "shape/structure mismatch is refused, not set aside"),
    ("swallow_jax/fileio.py", "pid_alive", 16, "stale .tmp-PID / lock holder detection"),
    ("swallow_jax/fileio.py", "remove_stale_tmp", 16, "removes dead processes' .tmp-PID dirs"),
    ("swallow_jax/data/records.py", "_SHARD_NAME", 16, "what a preprocess output holds"),
    ("swallow_jax/data/records.py", "is_dataset_file", 16, "--overwrite refuses foreign dirs"),
    ("swallow_jax/data/records.py", "ShardSource", 16, "corrupt shard error names shard + record"),
    ("swallow_jax/data/sources.py", "TruncatedFile", 16, "truncated gzip named"),
    ("swallow_jax/preprocess.py", "_check_overwrite", 16, "--overwrite never deletes inputs/foreign files"),
    ("swallow_jax/evaluate/__init__.py", "fit_prompt", 16, "over-long prompts keep BOS + end, counted"),
    # --- issue 17: one CLI convention, feedback, metrics, plots ---
    ("swallow_jax/cli.py", "HELP_ARGS", 17, "--help variants exit 0"),
    ("swallow_jax/cli.py", "DTYPES", 17, "one --dtype enum"),
    ("swallow_jax/cli.py", "_ALIASES", 17, "deprecated flag names"),
    ("swallow_jax/cli.py", "_SIGPIPE_STATUS", 17, "quiet closed pipe"),
    ("swallow_jax/cli.py", "PROGRESS_EVERY_S", 17, "progress lines off a TTY"),
    ("swallow_jax/cli.py", "Failure", 17, "exit 1, one line"),
    ("swallow_jax/cli.py", "UsageError", 17, "exit 2, one line"),
    ("swallow_jax/cli.py", "alias", 17, "old flag names as aliases"),
    ("swallow_jax/cli.py", "_apply_aliases", 17, "old flag names as aliases"),
    ("swallow_jax/cli.py", "check_output", 17, "one overwrite rule"),
    ("swallow_jax/cli.py", "progress", 17, "progress bar of every long job"),
    ("swallow_jax/cli.py", "_line_bar", 17, "progress lines on a non-TTY"),
    ("swallow_jax/cli.py", "_one_line", 17, "one-line errors"),
    ("swallow_jax/cli.py", "_exit", 17, "one-line errors"),
    ("swallow_jax/cli.py", "_config_flags", 17, "bad --config file: one line (every command)"),
    ("swallow_jax/cli.py", "_parser", 17, "--help exit 0, one-line usage errors"),
    ("swallow_jax/cli.py", "run", 17, "the convention's runner"),
    ("swallow_jax/cli.py", "_entry", 17, "console scripts"),
] + [("swallow_jax/cli.py", f"entry_{n}", 17, "console script")
     for n in ("train", "recipe", "preprocess", "generate", "evaluate", "convert", "chat_vector",
               "plan", "vocab", "synth", "sweep")] + [
    ("swallow_jax/evaluate/__init__.py", "prepare_output", 17, "overwrite rule, stale plots removed, resume"),
    ("swallow_jax/evaluate/__init__.py", "_log_scalars", 17, "eval scores as TensorBoard scalars"),
    ("swallow_jax/evaluate/plots.py", "PLOT_FILES", 17, "stale plots removed"),
    ("swallow_jax/evaluate/plots.py", "UNITS", 17, "every metric in its unit"),
    ("swallow_jax/evaluate/plots.py", "_fmt", 17, "values on bars/table"),
    ("swallow_jax/report.py", "REPORT_PLOTS", 17, "stale report plots removed"),
    ("swallow_jax/report.py", "_is_bleu", 17, "BLEU 0-100 units in the report"),
    # --- issue 18: LoRA (and the sequence-parallel residual for its memory target) ---
    ("swallow_jax/model/lora.py", None, 18, "LoRA config, init, merge, PEFT save/load"),
    ("swallow_jax/model/llama.py", "_residual", 18, "sequence-parallel residual (8B LoRA fits a v2-8)"),
    ("swallow_jax/model/llama.py", "_variables", 18, "adapter as the 'lora' collection"),
    ("swallow_jax/train/step.py", "TRAINABLE_KEYS", 18, "LoRA state's trained parts"),
    ("swallow_jax/train/step.py", "_lora_on", 18, "LoRA on/off"),
    ("swallow_jax/train/step.py", "trainable", 18, "optimizer covers the adapter only"),
    ("swallow_jax/train/step.py", "checkpointed", 18, "base-free checkpoints"),
    ("swallow_jax/train/step.py", "lora_shardings", 18, "adapter shards like its kernel"),
    ("swallow_jax/train/step.py", "_trainable_shardings", 18, "adapter (+extra) shardings"),
    ("swallow_jax/train/step.py", "merged_params", 18, "the model a LoRA state stands for"),
    ("swallow_jax/train/loop.py", "LORA_STATE_KEYS", 18, "adapter settings a resume must keep"),
    ("swallow_jax/train/loop.py", "_Trainer._params", 18, "merged params of a LoRA run"),
    ("swallow_jax/config_utils.py", "lora_config", 18, "config.model.lora section"),
    ("swallow_jax/model/io.py", "base_model_path", 18, "LoRA run pins its base"),
    ("swallow_jax/model/io.py", "load_adapter", 18, "adapter of a LoRA run"),
    ("swallow_jax/model/io.py", "_base_ref", 18, "base of a LoRA run"),
    ("swallow_jax/model/io.py", "_load_lora_run", 18, "merged load of a LoRA run"),
    ("swallow_jax/model/io.py", "hf_lora_terms", 18, "adapter terms by HF tensor name"),
    ("swallow_jax/model/io.py", "LoraTensors", 18, "streamed merged LoRA tensors (chat vector)"),
    ("swallow_jax/chat_vector.py", "_load_adapters", 18, "chat_vector --adapter (PEFT delta)"),
    ("swallow_jax/recipe.py", "_checkpoint_bytes", 18, "demo report: LoRA vs full cost"),
    ("swallow_jax/recipe.py", "_trainable_params", 18, "demo report: trained params"),
    ("swallow_jax/report.py", "STAGE_COSTS", 18, "stage costs in the report"),
]

# ---------------------------------------------------------------------------------------------
# Partial units: (path, qualname, issue, n_lines, how counted). "net +N" = lines of the unit at
# 605beb3 minus its afa5ad8 counterpart, where the growth is all the feature's; otherwise the
# feature's own lines were counted by reading the unit.
PARTIAL = [
    # --- issue 15 ---
    ("swallow_jax/tokenizer/base.py", "Tokenizer", 15, 6, "protocol fields add_bos/stop_ids/chat_template + comments (net +11 incl. the two whole methods, 5)"),
    ("swallow_jax/tokenizer/base.py", "BaseTokenizer._init_specials", 15, 23, "net +23 over tokenizer._Base.__init__ (roles from model files, add_bos, stop_ids)"),
    ("swallow_jax/tokenizer/__init__.py", "load_tokenizer", 15, 2, "read_model_tokens line + docstring line"),
    ("swallow_jax/data/chat.py", "encode_chat", 15, 6, "net +6 over the afa5ad8 Llama-3-only encode_chat (34 lines)"),
    ("swallow_jax/data/chat.py", "<module>", 15, 9, "imports only for templates: contextvars, datetime, functools, json, re, 4 jinja2 lines, LLAMA3_TEMPLATE"),
    ("swallow_jax/model/io.py", "resolve", 15, 3, "Hub-id branch (if _HUB_ID ... _hub_snapshot; else)"),
    ("swallow_jax/model/io.py", "write_model_files", 15, 5, "pad_token_id in generation_config (2) + tokenizer_config.json (3); config/generation_config existed"),
    ("swallow_jax/model/io.py", "SafetensorsWriter.write", 15, 1, "os.chmod 0644"),
    ("swallow_jax/model/io.py", "copy_side_files", 15, 1, "os.chmod 0644"),
    ("swallow_jax/model/io.py", "<module>", 15, 1, "import specials"),
    ("swallow_jax/model/config.py", "LlamaConfig", 15, 2, "pad_token_id/unk_token_id fields"),
    ("swallow_jax/model/config.py", "LlamaConfig.from_hf", 15, 1, "reads pad/unk ids"),
    ("swallow_jax/model/config.py", "LlamaConfig.to_hf", 15, 3, "writes pad/unk ids (net +3)"),
    ("swallow_jax/chat_vector.py", "protected_ids", 15, 12, "net +12 over _parse_tokens: chat_template / llama3_chat by token strings"),
    ("swallow_jax/chat_vector.py", "<module>", 15, 3, "imports tokenizer, data.chat; --protect_tokens help line"),
    ("swallow_jax/__init__.py", "<module>", 15, 2, "import sys, types"),
    ("swallow_jax/__init__.py", "__getattr__", 15, 1, "binds the value (globals()[name])"),
    ("swallow_jax/decode.py", "stop_tokens_for", 15, 4, "net +4: the tokenizer's stop_ids"),
    ("swallow_jax/preprocess.py", "_encode", 15, 1, "EOS optional, BOS per tokenizer"),
    ("swallow_jax/preprocess.py", "preprocess", 15, 1, "add_bos in the manifest"),
    # --- issue 16 ---
    ("swallow_jax/train/loop.py", "_Preemption", 16, 14, "net +14: SIGINT = SIGTERM, second signal exits"),
    ("swallow_jax/train/loop.py", "_record_config", 16, 9, "10 lines; the config.json write (1) existed"),
    ("swallow_jax/train/loop.py", "run", 16, 2, "workdir_lock line; docstring's raises"),
    ("swallow_jax/train/loop.py", "_Trainer._build", 16, 2, "config changes checked before restore (comment + line)"),
    ("swallow_jax/train/loop.py", "_Trainer.run", 16, 2, "check_save after each step and at the end"),
    ("swallow_jax/train/loop.py", "<module>", 16, 1, "import lock"),
    ("swallow_jax/checkpoint.py", "_check_process_count", 16, 2, "message names the command that works"),
    ("swallow_jax/checkpoint.py", "restore_latest", 16, 1, "check_compatible call"),
    ("swallow_jax/data/sources.py", "iter_records", 16, 6, "try/except naming the truncated gzip + docstring"),
    ("swallow_jax/data/sources.py", "<module>", 16, 2, "import zlib; truncated_file reason"),
    ("swallow_jax/preprocess.py", "_tasks", 16, 8, "truncated file: strict error / lenient count"),
    ("swallow_jax/preprocess.py", "_write_shards", 16, 3, "truncation warning + count"),
    ("swallow_jax/preprocess.py", "preprocess", 16, 3, "remove_stale_tmp; _check_overwrite call; empty-dir rule"),
    ("swallow_jax/evaluate/__init__.py", "run_task", 16, 6, "truncated_prompts count, warning, docstring"),
    ("swallow_jax/recipe.py", "run", 16, 1, "workdir_lock"),
    ("swallow_jax/recipe.py", "<module>", 16, 1, "import lock"),
    # --- issue 17 ---
    ("swallow_jax/cli.py", "<module>", 17, 44, "docstring 33 vs 1 (+32); imports 13 vs 1 (+12)"),
    ("swallow_jax/train/metrics.py", "MetricsWriter", 17, 18, "net +22 minus 4 docstring lines: W&B writer, mirror (eval scores to TB/W&B)"),
    ("swallow_jax/train/metrics.py", "<module>", 17, 1, "import hashlib (W&B run id)"),
    ("swallow_jax/config_utils.py", "TrainSection", 17, 1, "wandb_project"),
    ("swallow_jax/train/loop.py", "_Trainer._build", 17, 2, "'building the data pipeline...'"),
    ("swallow_jax/train/loop.py", "_Trainer.run", 17, 5, "compiling message (2), W&B args (1), eval mirror (2)"),
    ("swallow_jax/evaluate/__init__.py", "evaluate_models", 17, 17, "results after each task, progress, resume, timing (per-model loop itself moved from evaluate/__main__)"),
    ("swallow_jax/evaluate/__main__.py", "<module>", 17, 4, "--overwrite, --json flags; docstring lines"),
    ("swallow_jax/evaluate/__main__.py", "main", 17, 2, "--json print"),
    ("swallow_jax/evaluate/plots.py", "radar_chart", 17, 27, "net +27: offsets, table, titles"),
    ("swallow_jax/evaluate/plots.py", "metric_panels", 17, 13, "net +13 over grouped_bars: own scale, values, units"),
    ("swallow_jax/evaluate/plots.py", "plot_results", 17, 21, "32 lines vs 11 lines of plotting in afa5ad8 evaluate/__main__"),
    ("swallow_jax/report.py", "<module>", 17, 2, "units docstring lines"),
    ("swallow_jax/report.py", "model_metrics", 17, 4, "net +4: units"),
    ("swallow_jax/report.py", "build", 17, 3, "units plumbing"),
    ("swallow_jax/report.py", "markdown", 17, 3, "unit in column headers"),
    ("swallow_jax/report.py", "plot", 17, 4, "loss axis unit, radar BLEU/100 labels"),
    ("swallow_jax/report.py", "write", 17, 4, "stale plot removal"),
    ("swallow_jax/convert.py", "<module>", 17, 6, "--overwrite, --json flags; 3 aliases; docstring line"),
    ("swallow_jax/convert.py", "convert", 17, 2, "existing output refused before work"),
    ("swallow_jax/convert.py", "main", 17, 4, "--json print"),
    ("swallow_jax/chat_vector.py", "main", 17, 5, "--json print (outputs, scales, adapters)"),
    ("swallow_jax/chat_vector.py", "<module>", 17, 1, "--json flag"),
    ("swallow_jax/synth.py", "<module>", 17, 2, "--prompts alias; --overwrite flag"),
    ("swallow_jax/synth.py", "main", 17, 1, "check_output"),
    ("swallow_jax/synth.py", "synthesize", 17, 2, "progress bar per batch"),
    ("swallow_jax/data/oasst.py", "_define_flags", 17, 1, "--overwrite"),
    ("swallow_jax/data/oasst.py", "main", 17, 1, "check_output"),
    ("swallow_jax/evaluate/prepare.py", "main", 17, 1, "check_output"),
    ("swallow_jax/evaluate/prepare.py", "<module>", 17, 1, "--overwrite flag"),
    ("swallow_jax/decode.py", "generate_detailed", 17, 3, "progress bar over batches (net +3)"),
    ("swallow_jax/plan.py", "main", 17, 2, "'compiling the train step ...'"),
    ("swallow_jax/vocab/expand.py", "<module>", 17, 1, "import logging"),
    ("swallow_jax/vocab/expand.py", "expand", 17, 2, "a log line per round"),
    # --- issue 18 ---
    ("swallow_jax/model/llama.py", "Dense", 18, 11, "net +11: adapter term, dropout, lora field"),
    ("swallow_jax/model/llama.py", "MLP", 18, 1, "lora field"),
    ("swallow_jax/model/llama.py", "Block", 18, 3, "net +3: whole-length sublayers around the sequence-parallel residual"),
    ("swallow_jax/model/llama.py", "Llama", 18, 3, "lora field + 2 docstring lines (class shrank overall)"),
    ("swallow_jax/model/llama.py", "forward", 18, 7, "net +7: lora/lora_cfg/lora_rng"),
    ("swallow_jax/model/llama.py", "forward_with_cache", 18, 2, "net +2: lora args"),
    ("swallow_jax/model/llama.py", "<module>", 18, 1, "import math (_residual)"),
    ("swallow_jax/parallel/sharding.py", "<module>", 18, 2, "act_length rule + docstring line"),
    ("swallow_jax/train/step.py", "<module>", 18, 4, "LoRA docstring lines (net +3) + import lora"),
    ("swallow_jax/train/step.py", "state_from_params", 18, 14, "net +14"),
    ("swallow_jax/train/step.py", "init_state", 18, 1, "net +1"),
    ("swallow_jax/train/step.py", "state_shardings", 18, 8, "net +8"),
    ("swallow_jax/train/step.py", "make_train_step", 18, 18, "net +18 (its docstring also lost 3 lines to docs)"),
    ("swallow_jax/train/step.py", "jit_init", 18, 1, "net +1"),
    ("swallow_jax/train/loop.py", "<module>", 18, 2, "LoRA lines of the docstring"),
    ("swallow_jax/train/loop.py", "run", 18, 2, "resolved init_from for LoRA; docstring"),
    ("swallow_jax/train/loop.py", "_Trainer._build", 18, 12, "lora_cfg, lora_sh (2), base reload (2), 'LoRA base' (1), trainable-count log (5), step args (1)"),
    ("swallow_jax/train/metrics.py", "flops_per_token", 18, 7, "net +7: LoRA FLOPs"),
    ("swallow_jax/train/metrics.py", "<module>", 18, 1, "import lora"),
    ("swallow_jax/config_utils.py", "TrainSpec", 18, 1, "lora field"),
    ("swallow_jax/config_utils.py", "TrainSpec.from_config", 18, 5, "lora_config, pinned base path, docstring"),
    ("swallow_jax/config_utils.py", "resolved_dict", 18, 5, "init_from override + lora section"),
    ("swallow_jax/config_utils.py", "<module>", 18, 1, "import LoraConfig"),
    ("swallow_jax/model/io.py", "<module>", 18, 4, "import lora; 3 docstring lines on LoRA runs"),
    ("swallow_jax/model/io.py", "ModelRef", 18, 2, "lora, base fields"),
    ("swallow_jax/model/io.py", "_train_ref", 18, 8, "LoRA block"),
    ("swallow_jax/model/io.py", "load", 18, 2, "LoRA branch"),
    ("swallow_jax/model/io.py", "open_tensors", 18, 2, "LoRA branch"),
    ("swallow_jax/chat_vector.py", "<module>", 18, 12, "docstring 4 (adapter term, example, memory), imports functools + lora 2, --adapter/--adapter_scale flags 6"),
    ("swallow_jax/chat_vector.py", "merge_checkpoints", 18, 14, "adapter args, checks, adapters-only, docstring"),
    ("swallow_jax/chat_vector.py", "_plan", 18, 2, "adapters only (early return)"),
    ("swallow_jax/chat_vector.py", "_stream", 18, 7, "per-layer adapter deltas"),
    ("swallow_jax/chat_vector.py", "main", 18, 16, "--adapter/--adapter_scale parsing and checks"),
    ("swallow_jax/convert.py", "<module>", 18, 6, "docstring 4, import lora, --to_peft flag"),
    ("swallow_jax/convert.py", "convert", 18, 9, "--to_peft branch"),
    ("swallow_jax/plan.py", "<module>", 18, 2, "trainable row of the docstring"),
    ("swallow_jax/plan.py", "abstract_train_step", 18, 6, "LoRA state and shardings"),
    ("swallow_jax/plan.py", "plan", 18, 7, "trainable bytes, lora report entry"),
    ("swallow_jax/plan.py", "format_table", 18, 7, "lora line + trainable row"),
    ("swallow_jax/recipe.py", "_train", 18, 2, "checkpoint_bytes, trainable_params"),
    ("swallow_jax/recipe.py", "<module>", 18, 1, "import lora"),
    ("swallow_jax/report.py", "build", 18, 3, "stage costs (docstring 2, entry)"),
    ("swallow_jax/report.py", "markdown", 18, 3, "trained params / checkpoint MB columns"),
]


BASE_COMMIT = "605beb3"  # the commit the PARTIAL figures were counted on


def git_show(repo: str, commit: str, path: str) -> str | None:
  if commit == "WORKTREE":  # the uncommitted checkout, counted as if HEAD's descendant
    full = os.path.join(repo, path)
    return open(full, encoding="utf-8").read() if os.path.exists(full) else None
  r = subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], capture_output=True,
                     text=True)
  return r.stdout if r.returncode == 0 else None


def py_files(repo: str, commit: str) -> list[str]:
  if commit == "WORKTREE":
    return sorted(os.path.relpath(os.path.join(d, f), repo)
                  for d, _, fs in os.walk(os.path.join(repo, "swallow_jax"))
                  for f in fs if f.endswith(".py"))
  out = subprocess.run(["git", "-C", repo, "ls-tree", "-r", "--name-only", commit, "swallow_jax"],
                       capture_output=True, text=True, check=True).stdout.split()
  return [p for p in out if p.endswith(".py")]


def wc_l(text: str) -> int:
  return text.count("\n") + (0 if text.endswith("\n") or not text else 1)


def find_span(tree: ast.Module, qualname: str) -> tuple[int, int] | None:
  """(first, last) line of a def/class (dotted) or a top-level assignment target."""
  body, node = tree.body, None
  parts = qualname.split(".")
  for i, part in enumerate(parts):
    node = None
    for n in body:
      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part:
        node = n
      elif i == 0 and len(parts) == 1 and isinstance(n, (ast.Assign, ast.AnnAssign)):
        targets = n.targets if isinstance(n, ast.Assign) else [n.target]
        if any(isinstance(t, ast.Name) and t.id == part for t in targets):
          node = n
      if node is not None:
        break
    if node is None:
      return None
    body = getattr(node, "body", [])
  first = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
  return first, node.end_lineno


def main(argv: list[str]) -> int:
  commit = next((a for a in argv if not a.startswith("--")), "605beb3")
  repo = next((a.split("=", 1)[1] for a in argv if a.startswith("--repo=")), ".")
  listing = "--list" in argv
  files = py_files(repo, commit)
  # The partial figures were read off 605beb3; they mean nothing before it.
  partials_apply = subprocess.run(["git", "-C", repo, "merge-base", "--is-ancestor", BASE_COMMIT,
                                   "HEAD" if commit == "WORKTREE" else commit],
                                  capture_output=True).returncode == 0
  sources = {p: git_show(repo, commit, p) for p in files}
  total = sum(wc_l(s) for s in sources.values())
  trees: dict[str, ast.Module] = {}
  per_issue = {15: 0, 16: 0, 17: 0, 18: 0}
  spans: dict[str, list[tuple[int, int, str]]] = {}
  rows, problems = [], []
  for path, qual, issue, reason in WHOLE:
    src = sources.get(path)
    if src is None:
      problems.append(f"missing file {path} (whole unit {qual}): 0")
      continue
    if qual is None:
      span = (1, wc_l(src))
    else:
      tree = trees.setdefault(path, ast.parse(src))
      span = find_span(tree, qual)
      if span is None:
        problems.append(f"missing unit {path}:{qual}: 0")
        continue
    for a, b, other in spans.get(path, []):
      if not (span[1] < a or span[0] > b):
        raise SystemExit(f"overlap: {path}:{qual} and {other}")
    spans.setdefault(path, []).append((*span, str(qual)))
    n = span[1] - span[0] + 1
    per_issue[issue] += n
    rows.append((issue, f"{path}:{qual or '(file)'}", n, "whole", reason))
  if not partials_apply:
    problems.append(f"{commit} does not contain {BASE_COMMIT}: partial estimates counted as 0")
  for path, qual, issue, n, how in PARTIAL if partials_apply else []:
    src = sources.get(path)
    if src is None:
      problems.append(f"missing file {path} (partial {qual}): 0")
      continue
    if qual != "<module>":
      span = find_span(trees.setdefault(path, ast.parse(src)), qual)
      if span is None:
        problems.append(f"missing unit {path}:{qual} (partial): 0")
        continue
      for a, b, other in spans.get(path, []):
        if a <= span[0] and span[1] <= b:
          raise SystemExit(f"partial {path}:{qual} lies inside whole unit {other}")
      n = min(n, span[1] - span[0] + 1)
    per_issue[issue] += n
    rows.append((issue, f"{path}:{qual}", n, "partial", how))
  features = sum(per_issue.values())
  if listing:
    for row in sorted(rows, key=lambda r: (r[0], r[1])):
      print(f"{row[0]}\t{row[2]:4d}\t{row[3]:7s}\t{row[1]}\t{row[4]}")
  sys.stdout.flush()
  for p in problems:
    print(f"warning: {p}", file=sys.stderr)
  sys.stderr.flush()
  print(f"commit {commit}: swallow_jax/**/*.py = {total} lines ({len(files)} files)")
  for issue, n in per_issue.items():
    whole = sum(r[2] for r in rows if r[0] == issue and r[3] == "whole")
    print(f"  issue {issue}: {n:5d} feature lines ({whole} in whole units, {n - whole} partial)")
  print(f"  features (15-18): {features}")
  print(f"  total - features: {total - features}  (afa5ad8: 9580; issue 14 target <= 8980)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
