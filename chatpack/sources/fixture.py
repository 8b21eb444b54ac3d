"""TEST FIXTURES: randomly initialised Phi-3 chat models built locally and deterministically.

Neither is a usable model: their weights are random and their replies are noise.

- ``fixture:tiny-random-phi3`` (28 MB) lets tests exercise the real Phi-3 code paths in transformers and in the
  onnxruntime-genai model builder in seconds, with no model hub, the way other projects use ``tiny-random-*``
  checkpoints.
- ``fixture:random-phi3-mini-4k`` is Phi-3-mini-4k-instruct at its real size (3,821,079,552 parameters, 7.6 GB of
  bf16 safetensors; its config, special token ids and chat template), for measuring what the pipeline costs at the
  size the project is for. It is written tensor by tensor, one shard in memory at a time.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

FIXTURE_NAME = "tiny-random-phi3"
FIXTURE_VERSION = "1"  # bump when the construction below changes: it is part of the cache key
SEED = 1234

# Phi-3-mini-4k-instruct's chat format: <|system|>/<|user|>/<|assistant|> turns closed by <|end|>.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
_CORPUS = [
    "The capital of France is Paris. The capital of Spain is Madrid. What is two plus two? Four.",
    "Hello, how are you today? I am fine, thank you. Please answer in one word. Summarise this text.",
    "You are a helpful assistant. Be brief. Write a short poem about the sea and the sky.",
]


def build_tiny_phi3(out_dir: Path) -> None:
    """Write the fixture (config, safetensors weights, tokenizer, chat template) into ``out_dir``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast

    # Byte-level BPE over printable ASCII only: every token decodes to valid text, so streamed and whole
    # decodes of the random model's output agree.
    ascii_alphabet = [c for c in pre_tokenizers.ByteLevel.alphabet() if c.isascii() and c.isprintable()] + ["Ġ", "Ċ"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL_TOKENS, initial_alphabet=ascii_alphabet, show_progress=False
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    tokenizer.model_max_length = 512

    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    eot_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,  # head size 16: onnxruntime's CPU GroupQueryAttention needs a multiple of 16
        num_key_value_heads=4,
        max_position_embeddings=512,
        original_max_position_embeddings=512,
        bos_token_id=eot_id,
        eos_token_id=[end_id, eot_id],
        pad_token_id=eot_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = Phi3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=eot_id, eos_token_id=[end_id, eot_id], pad_token_id=eot_id, do_sample=False
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (Path(out_dir) / "README.md").write_text(
        f"# {FIXTURE_NAME} (TEST FIXTURE)\n\nRandom weights, seed {SEED}. Built by chatpack.fixture for tests; "
        "its replies are noise. Do not serve it.\n"
    )


# -- the full-size stand-in --------------------------------------------------------------------------------------------
# COST MEASUREMENT ONLY: Phi-3-mini-4k-instruct's exact architecture, special token ids and chat template, with random
# weights (its replies are noise; no quality figure from it means anything). Time and memory of building, quantising,
# serving and decoding depend on the shapes, not on the values, so it stands in for the real model where no hub is.
FULL_FIXTURE_NAME = "random-phi3-mini-4k"
FULL_FIXTURE_VERSION = "3"  # part of the cache key, like FIXTURE_VERSION
PHI3_MINI_CONFIG = dict(
    vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, original_max_position_embeddings=4096, rope_theta=10000.0,
    rms_norm_eps=1e-5, sliding_window=2047, hidden_act="silu", tie_word_embeddings=False, bos_token_id=1,
    eos_token_id=32000, pad_token_id=32000, initializer_range=0.02,
)
PHI3_MINI_PARAMETERS = 3_821_079_552
# Phi-3-mini's added tokens at their ids (after a 32,000-token base vocabulary whose ids 0-2 are <unk>, <s>, </s>).
PHI3_ADDED_TOKENS = {32000: "<|endoftext|>", 32001: "<|assistant|>", 32002: "<|placeholder1|>",
                     32003: "<|placeholder2|>", 32004: "<|placeholder3|>", 32005: "<|placeholder4|>",
                     32006: "<|system|>", 32007: "<|end|>", 32008: "<|placeholder5|>", 32009: "<|placeholder6|>",
                     32010: "<|user|>"}
PHI3_EOS_IDS = [32000, 32001, 32007]  # generation_config.json of Phi-3-mini-4k-instruct
BASE_VOCAB = 32000
SHARD_BYTES = 512 * 2**20  # safetensors shards of at most 512 MiB: the build holds one shard in memory at a time


def phi3_mini_config(**overrides):
    """Phi-3-mini-4k-instruct's config (``overrides`` shrink it for tests of the construction)."""
    from transformers import Phi3Config

    # architectures: what the onnxruntime-genai builder (and transformers' Auto classes) read to pick the model class
    return Phi3Config(**{**PHI3_MINI_CONFIG, **overrides}, architectures=["Phi3ForCausalLM"])


def byte_level_bpe(base_vocab: int = BASE_VOCAB, seed: int = SEED):
    """A byte-level BPE with exactly ``base_vocab`` base tokens (ids 0-2: ``<unk>``, ``<s>``, ``</s>``; then the 256
    byte symbols; then merges): merges learnt from the project's own text first (so English and code tokenise at a
    realistic rate), the rest made from a seeded generator. Deterministic: the same files every time."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=base_vocab, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    learnt = Tokenizer(models.BPE(unk_token="<unk>"))
    learnt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    learnt.train_from_iterator(_project_text(), trainer)
    model = json.loads(learnt.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    rng = random.Random(seed)
    printable = sorted(t for t in vocab if t not in specials and len(t) <= 4
                       and all(c.isascii() and c.isprintable() or c in "ĠĊ" for c in t))
    while len(vocab) < base_vocab:
        left, right = rng.choice(printable), rng.choice(printable)
        if left + right in vocab or len(left + right) > 8:
            continue
        vocab[left + right] = len(vocab)
        merges.append((left, right))
        printable.append(left + right)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _project_text() -> list[str]:
    """The shipped text this repository has (evaluation prompts, the damage corpus): the BPE's training text."""
    data = Path(__file__).resolve().parents[2] / "data"
    lines = []
    for name in ("damage_corpus.jsonl", "eval_prompts.jsonl"):
        if (data / name).is_file():
            lines += (data / name).read_text(encoding="utf-8").splitlines()
    return lines or [" ".join(_CORPUS)]


def build_random_phi3_mini(out_dir: Path, shard_bytes: int = SHARD_BYTES, **overrides) -> None:
    """Write the full-size stand-in into ``out_dir``: config, generation config, tokenizer with Phi-3's special ids
    and chat template, and random bf16 weights in safetensors shards with an index, tensor by tensor (each from its
    own seeded generator, N(0, initializer_range); norms 1), so memory stays at one shard, never the model."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, Phi3ForCausalLM

    out_dir = Path(out_dir)
    config = phi3_mini_config(**overrides)
    config.dtype = "bfloat16"
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in Phi3ForCausalLM(config).state_dict().items()}
    shards: list[list[str]] = [[]]  # tensor names per shard, filled with values only when the shard is written
    filled = 0  # bytes in the last shard
    for name, shape in shapes.items():
        size = 2 * int(torch.Size(shape).numel())
        if shards[-1] and filled + size > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += size
    total, weight_map = 0, {}
    for index, names in enumerate(shards, start=1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            tensor = torch.empty(shapes[name], dtype=torch.bfloat16)
            if name.endswith("norm.weight"):
                tensor.fill_(1.0)
            else:
                generator = torch.Generator().manual_seed(SEED ^ zlib.crc32(name.encode()))
                tensor.normal_(0.0, config.initializer_range, generator=generator)
            tensors[name] = tensor
            weight_map[name] = file
            total += 2 * tensor.numel()
        save_file(tensors, str(out_dir / file), metadata={"format": "pt"})
        del tensors
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(out_dir)
    GenerationConfig(bos_token_id=1, eos_token_id=PHI3_EOS_IDS, pad_token_id=32000, do_sample=False) \
        .save_pretrained(out_dir)
    phi3_tokenizer(config.vocab_size).save_pretrained(out_dir)
    (out_dir / "README.md").write_text(
        f"# {FULL_FIXTURE_NAME} (TEST FIXTURE: cost measurement only)\n\nPhi-3-mini-4k-instruct's architecture with "
        f"random weights (seed {SEED}); built by chatpack.sources.fixture. Its replies are noise: use it to measure "
        "time and memory, never quality.\n")


def phi3_tokenizer(vocab_size: int = 32064):
    """A fast tokenizer with Phi-3's special tokens at their ids, ``<s>``/``<|endoftext|>`` as bos/eos and Phi-3's
    chat template, over :func:`byte_level_bpe`."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tok = byte_level_bpe()
    tok.add_special_tokens([AddedToken(PHI3_ADDED_TOKENS[i], special=True, normalized=False)
                            for i in sorted(PHI3_ADDED_TOKENS)])
    for token_id, token in PHI3_ADDED_TOKENS.items():
        if tok.token_to_id(token) != token_id:
            raise RuntimeError(f"fixture tokenizer: {token} got id {tok.token_to_id(token)}, not {token_id}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>",
                                        unk_token="<unk>", pad_token="<|endoftext|>")
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    tokenizer.model_max_length = PHI3_MINI_CONFIG["max_position_embeddings"]
    assert len(tokenizer) <= vocab_size
    return tokenizer


# name -> (version, builder): what ``fixture:<name>`` builds (the version is part of the cache key)
FIXTURES = {FIXTURE_NAME: (FIXTURE_VERSION, build_tiny_phi3),
            FULL_FIXTURE_NAME: (FULL_FIXTURE_VERSION, build_random_phi3_mini)}
