"""TEST FIXTURE: a tiny, randomly initialised Phi-3 chat model built locally and deterministically.

It is *not* a usable model: its weights are random and its replies are noise. It exists so tests exercise the real
Phi-3 code paths in transformers and in the onnxruntime-genai model builder in seconds, with no model hub, in the
way other projects use ``tiny-random-*`` checkpoints.
"""

from __future__ import annotations

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
