"""A tiny, random-weight Qwen2 causal LM built locally (no download).

The tokenizer is a byte-level BPE trained on a generated corpus (always the
same corpus, so every checkpoint shares one tokenizer); only the weights
depend on ``seed``. Checkpoints with different seeds are therefore drop-in
weight replacements for one another (used by weight-reload tests).
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END, TOOL_CALL_START, TOOL_CALL_END]
VOCAB_SIZE = 1000
_MARKER = "tiny_model.json"
_QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_FORMAT = 2  # bump when the recipe changes, so cached dirs are rebuilt

# Qwen2.5-style (Hermes tool calling) chat template.
CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + (message.content or '') + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {%- if tool_call.arguments is string %}
                {{- tool_call.arguments }}
            {%- else %}
                {{- tool_call.arguments | tojson }}
            {%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501

_WORD_TEXT = (
    "the a an is are was were be been what how many much compute calculate answer "
    "result question number sum product difference total equals please use tool "
    "call function name arguments expression calculator search find weather city "
    "paris tokyo london berlin you assistant user system helpful step think first "
    "then final value of and or to in for with from by it this that yes no true "
    "false null add subtract multiply divide plus minus times over hello world "
    "time year people way day man woman child thing life hand part place case week "
    "company group problem fact work point government country home water room "
    "mother father area money story month lot right study book eye job word "
    "business issue side kind head house service friend power hour game line end "
    "member law car name president team minute idea kid body information back "
    "parent face others level office door health person art war history party "
    "morning reason research girl guy moment air teacher force education say get "
    "make go know take see come want look give tell ask seem feel try leave put "
    "mean keep let begin show hear play run move like live believe hold bring "
    "happen write provide sit stand lose pay meet include continue set learn "
    "change lead understand watch follow stop create speak read allow spend grow "
    "open walk win offer remember love consider appear buy wait serve die send "
    "expect build stay fall cut reach kill remain suggest raise pass sell require "
    "report decide pull good new other old great high small large next early young "
    "important few public bad same able last long little own different local "
    "sure free better best low late hard major real only also very just now "
    "still even well here there when where why which who because before after "
    "about between under again never always often however through during "
    "without against among within along following across behind beyond plus "
    "except up out around down off above near zero one two three four five six "
    "seven eight nine ten hundred thousand million error status ok input output "
    "query content role message response tools type object string integer "
    "properties required description parameters"
)
_WORDS = _WORD_TEXT.split()


def _corpus(n: int = 3000, seed: int = 1234) -> list[str]:
    """Deterministic training text: digits, arithmetic, JSON tool calls, words."""
    rng = random.Random(seed)
    ops = ["+", "-", "*", "/"]
    lines: list[str] = [" ".join(str(i) for i in range(100)), " ".join(_WORDS)]
    for _ in range(n):
        k = rng.randint(1, 4)
        expr = str(rng.randint(0, 99))
        for _ in range(k):
            expr += f" {rng.choice(ops)} {rng.randint(0, 99)}"
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        call = json.dumps({"name": "calculator", "arguments": {"expression": expr}})
        lines += [
            expr,
            f"{words.capitalize()}? {expr} = {rng.randint(-99, 999)}",
            f"{TOOL_CALL_START}\n{call}\n{TOOL_CALL_END}",
            json.dumps({"result": rng.randint(0, 9999), "error": None}),
        ]
    return lines


def _build_tokenizer() -> Any:  # transformers.PreTrainedTokenizerFast
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    hf: Any = importlib.import_module("transformers")  # untyped: keep mypy quiet

    # Same pipeline as transformers' Qwen2Tokenizer, which AutoTokenizer (and
    # so vLLM) rebuilds from the vocab/merges for model_type "qwen2": training
    # with anything else would make tokenizer.json and the loaded tokenizer
    # disagree.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return hf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END, TOOL_CALL_START, TOOL_CALL_END],
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def _is_complete(d: Path, seed: int) -> bool:
    try:
        meta = json.loads((d / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(meta == {"format": _FORMAT, "seed": seed})


def make_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Create (or reuse) a tiny Qwen2 checkpoint with weights from ``seed``.

    Idempotent: returns ``out_dir`` at once when it already holds a complete
    checkpoint for the same seed. Built in a sibling temp dir and renamed,
    so concurrent callers never see a half-written model.
    """
    out_dir = Path(out_dir)
    if _is_complete(out_dir, seed):
        return out_dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    hf: Any = importlib.import_module("transformers")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = _build_tokenizer()
        tokenizer.save_pretrained(tmp)
        pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
        eos_id = tokenizer.convert_tokens_to_ids(IM_END)
        config = hf.Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,  # head size 32: the CPU attention minimum
            num_key_value_heads=2,
            max_position_embeddings=8192,  # room for a framework's long system prompt
            tie_word_embeddings=False,  # tied lm_head goes stale on CPU reload
            bos_token_id=None,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            dtype="float32",
        )
        torch.manual_seed(seed)
        model = hf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(tmp)
        hf.GenerationConfig(
            eos_token_id=eos_id, pad_token_id=pad_id, suppress_tokens=[pad_id]
        ).save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        (tmp / _MARKER).write_text(json.dumps({"format": _FORMAT, "seed": seed}))
        if _is_complete(out_dir, seed):  # another builder finished first
            return out_dir
        if out_dir.exists():  # stale, partial or another seed
            shutil.rmtree(out_dir)
        try:
            tmp.rename(out_dir)
        except OSError:  # lost a race with another builder
            if not _is_complete(out_dir, seed):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
