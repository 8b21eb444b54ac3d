"""The full-size Phi-3-mini stand-in (``fixture:random-phi3-mini-4k``): Phi-3-mini-4k-instruct's exact shape, special
token ids and chat template, random weights written a shard at a time. The default suite builds it at reduced size;
``-m full_size`` (make test-full-size) builds the real 7.6 GB one."""

from __future__ import annotations

import collections
import hashlib
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from chatpack.sources import fixture

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small")
    fixture.build_random_phi3_mini(out, shard_bytes=3_000_000, **SMALL)
    return out


def test_the_stand_in_has_phi3_minis_exact_architecture():
    import torch
    from transformers import Phi3ForCausalLM

    config = fixture.phi3_mini_config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
            config.vocab_size, config.max_position_embeddings) == (3072, 32, 32, 8192, 32064, 4096)
    with torch.device("meta"):
        model = Phi3ForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == fixture.PHI3_MINI_PARAMETERS == 3_821_079_552


def test_tokenizer_has_phi3s_special_ids_and_chat_format(small_build):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small_build)
    assert {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>",
                                                      "<|user|>")} == \
        {"<|endoftext|>": 32000, "<|assistant|>": 32001, "<|system|>": 32006, "<|end|>": 32007, "<|user|>": 32010}
    assert (tok.bos_token_id, tok.eos_token_id, tok.convert_tokens_to_ids("<unk>")) == (1, 32000, 0)
    assert len(tok) == 32011
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    ids = tok(text).input_ids
    assert ids[0] == 32006 and 32010 in ids and ids[-3:-1] != [] and ids[-2] == 32001
    english = "The capital of France is Paris, and the weather there is mild in the spring."
    assert 8 <= len(tok(english).input_ids) <= 40, "English must tokenise at a realistic rate"
    assert tok.decode(tok(english).input_ids) == english


def test_construction_is_deterministic_sharded_and_loads_in_transformers(small_build, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    again = tmp_path / "again"
    again.mkdir()
    fixture.build_random_phi3_mini(again, shard_bytes=3_000_000, **SMALL)
    assert digests(again) == digests(small_build), "same seed, same bytes"
    index = json.loads((small_build / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and all((small_build / s).is_file() for s in shards)
    model = AutoModelForCausalLM.from_pretrained(small_build, dtype=torch.bfloat16)
    assert set(index["weight_map"]) == set(model.state_dict())
    assert json.loads((small_build / "generation_config.json").read_text())["eos_token_id"] == [32000, 32001, 32007]
    weights = model.state_dict()
    assert torch.all(weights["model.norm.weight"] == 1)
    assert 0.015 < float(weights["model.layers.0.mlp.down_proj.weight"].float().std()) < 0.025
    out = model.generate(torch.tensor([[32010, 500, 32007, 32001]]), max_new_tokens=2, do_sample=False)
    assert out.shape == (1, 6)


def test_the_stand_in_goes_through_the_onnx_builder_and_answers_in_onnxruntime_genai(small_build, tmp_path):
    from chatpack.build.onnx_builder import build_onnx
    from tests.conftest import greedy_reply

    out = tmp_path / "onnx"
    out.mkdir()
    build_onnx(small_build, out, "int4", "cpu", tmp_path / "builder-cache")
    genai = json.loads((out / "genai_config.json").read_text())["model"]
    assert genai["type"] == "phi3" and genai["context_length"] == 4096
    assert set(genai["eos_token_id"]) == {32000, 32001, 32007}
    _, new_tokens = greedy_reply(out, "Hello", max_new=3)
    assert new_tokens == 3  # random weights: any 3 tokens, through Phi-3's chat template


def test_build_holds_one_shard_in_memory_not_the_model(tmp_path):
    """A 0.4 GB model written in 32 MB shards: the build's peak RSS grows by far less than the model's size."""
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "import torch, transformers, safetensors.torch\n"
        "from chatpack.sources import fixture\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "fixture.build_random_phi3_mini(Path(sys.argv[1]), shard_bytes=32 * 2**20, hidden_size=1024,\n"
        "    intermediate_size=2048, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=16)\n"
        "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    before_kb, after_kb = map(int, done.stdout.split()[-2:])
    model_bytes = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    assert model_bytes > 350e6
    # Every shard holds at most its budget, unless it is one tensor larger than that (the 66 MB embedding).
    per_shard = collections.Counter(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
                                    .values())
    assert len(per_shard) > 10
    budget = 32 * 2**20 + 2**16  # the shard budget and a safetensors header
    assert all(count == 1 or (tmp_path / name).stat().st_size <= budget for name, count in per_shard.items())
    assert (after_kb - before_kb) * 1024 < 0.5 * model_bytes, \
        f"peak RSS grew {(after_kb - before_kb) / 1024:.0f} MB for a {model_bytes / 1e6:.0f} MB model"


@pytest.mark.full_size
def test_full_size_stand_in_resolves_as_a_fixture_source_within_bounded_memory(tmp_path, monkeypatch):
    """The real thing (7.6 GB, ~2-4 min on 2 cores): built through the source resolver into the cache."""
    from chatpack.sources.resolve import materialize, parse_source

    monkeypatch.setenv("CHATPACK_CACHE_DIR", str(tmp_path / "cache"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    folder = materialize(parse_source(f"fixture:{fixture.FULL_FIXTURE_NAME}", "")).hf_dir
    peak_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert 7.5e9 < weights < 7.8e9
    assert peak_growth < 4 * 2**30, f"peak RSS grew {peak_growth / 2**30:.1f} GiB"
    print(f"\n{fixture.FULL_FIXTURE_NAME}: {weights / 1e9:.2f} GB of weights, peak RSS +{peak_growth / 2**30:.2f} GiB")
