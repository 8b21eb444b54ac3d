"""The ONNX build is refused up front, naming the way round (``onnx_source``), when the builder would not fit in the
memory this machine has, instead of being killed by the kernel minutes in."""

from __future__ import annotations

import os

import pytest

from chatpack.build import onnx_builder
from chatpack.sources.fetch import fetched_model
from steps import fetch_model
from tests.conftest import FIXTURE_MODEL


def test_parameter_count_comes_from_the_safetensors_headers(fixture_fetch_run):
    from transformers import AutoModelForCausalLM

    hf_dir = fetched_model(fixture_fetch_run).hf_dir
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    assert onnx_builder.model_parameters(hf_dir) == sum(p.numel() for p in model.state_dict().values())


def test_available_memory_is_what_the_machine_reports():
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < onnx_builder.available_memory() <= total


def test_phi3_mini_needs_about_the_measured_peak():
    assert 19e9 < onnx_builder.builder_peak_bytes(3_821_079_552) < 22e9  # measured: 20.8 GB


def test_a_build_that_cannot_fit_is_refused_before_the_builder_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHATPACK_CACHE_DIR", str(tmp_path / "empty-cache"))  # no cached build to reuse
    monkeypatch.setattr(onnx_builder, "available_memory", lambda: 2**30)  # a 1 GiB machine

    def never(*args, **kwargs):
        raise AssertionError("the builder must not start")

    monkeypatch.setattr(onnx_builder, "build_onnx", never)
    assert fetch_model.main(["--model", FIXTURE_MODEL, "--damage", "false"]) == 2
    err = capsys.readouterr().err
    assert "onnx_source:" in err and "GiB" in err and "1.0 GiB is available" in err
    assert "cpu-int4-rtn-block-32-acc-level-4" in err and onnx_builder.SKIP_MEMORY_CHECK_ENV in err

    monkeypatch.setenv(onnx_builder.SKIP_MEMORY_CHECK_ENV, "1")
    with pytest.raises(AssertionError, match="must not start"):  # the check is skipped: the build is attempted
        fetch_model.main(["--model", FIXTURE_MODEL, "--damage", "false"])
