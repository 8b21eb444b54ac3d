"""onnx_source: a published onnxruntime-genai build used as the ONNX form, with no builder run.

The published build is made here from the tiny fixture's built ONNX form, in the layout of Microsoft's
``microsoft/Phi-3-mini-4k-instruct-onnx`` (subfolder, renamed model files, no ``chat_template.jinja``). The hub cannot
be reached from the tests: the one mock is ``huggingface_hub.snapshot_download`` (copying that local folder), and the
real download code runs against a populated hub cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import mlflow
import onnx
import pytest
from mlflow.tracking import MlflowClient
from openai.types.chat import ChatCompletion

from chatpack.build import onnx_builder
from chatpack.pipeline.chain import PipelineOptions, fetch_params
from chatpack.pipeline.reuse import find_reusable_run, logged_params
from chatpack.project import CODE_VERSION_TAG
from chatpack.sources.fetch import FetchOptions, fetch, fetched_model
from chatpack.sources.onnx_source import OnnxSource, locate, parse_onnx_source
from chatpack.sources.resolve import SourceError, sha256_file
from steps import fetch_model, log_onnx_pyfunc
from steps import main as main_step
from tests.conftest import FIXTURE_MODEL, greedy_reply

REPO = "Phi-3-mini-4k-instruct-onnx"
SUBFOLDER = "cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4"
PUBLISHED = "phi3-mini-4k-instruct-cpu-int4-rtn-block-32-acc-level-4.onnx"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def publish(onnx_dir: Path, dest: Path) -> Path:
    """Lay a built ONNX folder out as Microsoft published Phi-3-mini's: ``dest/<REPO>/<SUBFOLDER>/`` with the model
    files renamed (the .onnx's external data references rewritten), no chat_template.jinja, no builder.log. Returns
    the repository folder."""
    folder = dest / REPO / SUBFOLDER
    folder.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(onnx_dir / name, folder / name)
    model = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = PUBLISHED + ".data"
    onnx.save_model(model, str(folder / PUBLISHED))
    shutil.copyfile(onnx_dir / "model.onnx.data", folder / (PUBLISHED + ".data"))
    config = json.loads((onnx_dir / "genai_config.json").read_text())
    config["model"]["decoder"]["filename"] = PUBLISHED
    (folder / "genai_config.json").write_text(json.dumps(config, indent=4))
    return dest / REPO


@pytest.fixture(scope="module")
def published(fixture_fetch_run, tmp_path_factory) -> Path:
    return publish(fetched_model(fixture_fetch_run).onnx_dir, tmp_path_factory.mktemp("published"))


@pytest.fixture()
def copy_of(published, tmp_path):
    """A fresh copy of the published repository folder, to damage."""
    return shutil.copytree(published, tmp_path / REPO)


def _refuse_to_build(*args, **kwargs):
    raise AssertionError("the model builder ran")


@pytest.fixture()
def no_builder(monkeypatch):
    """The builder's entry point raises: a fetch that passes did not run it."""
    monkeypatch.setattr(onnx_builder, "build_onnx", _refuse_to_build)


def spec(repo: Path, sub: str = SUBFOLDER) -> str:
    return f"{repo}:{sub}"


def run_fetch_ok(*args: str) -> str:
    assert fetch_model.main(["--model", FIXTURE_MODEL, *args]) == 0
    return mlflow.last_active_run().info.run_id


@pytest.fixture(scope="module")
def onnx_source_run(published) -> str:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_builder, "build_onnx", _refuse_to_build)
        return run_fetch_ok("--onnx_source", spec(published), "--damage", "false")


# -- the <source>[:<subfolder>] syntax -------------------------------------------------------------------------------
def test_parse_source_and_subfolder(tmp_path):
    (tmp_path / "repo" / "a" / "b").mkdir(parents=True)
    (tmp_path / "odd:name").mkdir()
    repo = tmp_path / "repo"
    assert parse_onnx_source("") is None and parse_onnx_source("  ") is None
    assert parse_onnx_source("microsoft/Phi-3-mini-4k-instruct-onnx:cpu_and_mobile/cpu-int4", "abc") == \
        OnnxSource("hub", "microsoft/Phi-3-mini-4k-instruct-onnx", "cpu_and_mobile/cpu-int4", "abc")
    assert parse_onnx_source("acme/tiny-onnx") == OnnxSource("hub", "acme/tiny-onnx", "", "main")
    assert parse_onnx_source("acme/tiny-onnx:sub/dir/").subfolder == "sub/dir"
    assert parse_onnx_source(str(repo)) == OnnxSource("local", str(repo), "", "")
    assert parse_onnx_source(f"{repo}:a/b") == OnnxSource("local", str(repo), "a/b", "")
    # a folder whose name holds ':' is taken whole; the split is at the last ':' only
    assert parse_onnx_source(str(tmp_path / "odd:name")) == OnnxSource("local", str(tmp_path / "odd:name"), "", "")
    for bad, named in [(f"{repo}:a/missing", "has no subfolder 'a/missing'"),
                       (str(tmp_path / "nope"), "does not exist"),
                       (f"{tmp_path / 'nope'}:sub", "nor is"),
                       ("./relative/nope", "does not exist"),
                       ("acme/tiny-onnx:../up", "relative path"),
                       ("acme/tiny-onnx:/abs", "relative path"),
                       ("acme/tiny-onnx:", "neither an existing folder nor a hub id"),
                       ("a/b:c:d", "neither an existing folder nor a hub id"),
                       ("not a model", "neither an existing folder nor a hub id")]:
        with pytest.raises(SourceError, match="onnx_source") as err:
            parse_onnx_source(bad)
        assert named in str(err.value), (bad, str(err.value))


# -- the published build as the ONNX form ----------------------------------------------------------------------------
def test_fetch_with_onnx_source_uses_the_published_build_without_the_builder(onnx_source_run, published):
    run = MlflowClient().get_run(onnx_source_run)
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    folder = published / SUBFOLDER
    assert params["onnx_source"] == spec(published) and params["onnx_revision"] == "main"
    assert tags["chatpack.onnx_form"] == "onnx_source"
    assert tags["chatpack.onnx_source"] == spec(published)
    assert tags["chatpack.onnx_source_kind"] == "local"
    assert tags["chatpack.onnx_revision.resolved"].startswith("local-")
    assert tags["chatpack.recipe"] == "onnx_source"
    assert tags["chatpack.precision"] == "int4"  # read from the graph's MatMulNBits
    assert json.loads(tags["chatpack.onnx_quantisation"])["block_size"] == 32
    assert "chatpack.builder_version" not in tags and "chatpack.builder_options" not in tags
    for name in (PUBLISHED, PUBLISHED + ".data"):
        assert tags[f"chatpack.onnx_sha256.{name}"] == sha256_file(folder / name)
    assert len(tags["chatpack.sha256.model.safetensors"]) == 64  # the transformers weights, as on every fetch run
    assert tags["chatpack.onnx_chat_template"] == "model"
    assert "seconds_onnx_source" in metrics and "seconds_build" not in metrics
    assert metrics["onnx_model_bytes"] > 100_000

    fetched = fetched_model(onnx_source_run)
    info = fetched.info
    assert info["onnx_form"] == "onnx_source" and info["builder_options"] == {}
    assert info["onnx_source"]["decoder"] == PUBLISHED
    assert info["onnx_source"]["model_files"] == [PUBLISHED, PUBLISHED + ".data"]
    template = info["onnx_source"]["chat_template"]
    assert template["from"] == "model" and template["file"] == "chat_template.jinja" and template["same_as_model"]
    assert "written into the copy from model" in template["note"]
    names = {p.name for p in fetched.onnx_dir.iterdir()}
    assert {PUBLISHED, PUBLISHED + ".data", "genai_config.json", "chat_template.jinja", "onnx_source.json"} <= names
    assert "builder.log" not in names
    written = (fetched.onnx_dir / "chat_template.jinja").read_text()
    assert written == (fetched.hf_dir / "chat_template.jinja").read_text()
    assert not (folder / "chat_template.jinja").exists()  # the source folder is left as it is


def test_logged_onnx_folder_generates_with_onnxruntime_genai(onnx_source_run):
    text, n_new = greedy_reply(fetched_model(onnx_source_run).onnx_dir, "Hello, how are you?", max_new=8)
    assert 1 <= n_new <= 8 and isinstance(text, str)


def test_log_onnx_pyfunc_on_an_onnx_source_run_answers_a_chat_request(onnx_source_run):
    assert log_onnx_pyfunc.main(["--fetch_run_id", onnx_source_run, "--max_new_tokens", "4"]) == 0
    uri = MlflowClient().get_run(mlflow.last_active_run().info.run_id).data.tags["chatpack.model_uri"]
    model = mlflow.pyfunc.load_model(uri)  # the KV-rows engine reads the renamed decoder from genai_config.json
    reply = ChatCompletion.model_validate(model.predict({"messages": [{"role": "user", "content": "Hi"}],
                                                         "max_tokens": 3})[0])
    assert reply.object == "chat.completion" and reply.usage.completion_tokens == 3
    assert reply.model == FIXTURE_MODEL
    metadata = mlflow.models.get_model_info(uri).metadata  # provenance: the published build, no builder options
    fetch_tags = MlflowClient().get_run(onnx_source_run).data.tags
    assert metadata["onnx_source"] == fetch_tags["chatpack.onnx_source"]
    assert metadata["onnx_revision"] == fetch_tags["chatpack.onnx_revision.resolved"]
    assert "builder_options" not in metadata


def test_damage_report_works_on_the_published_build_and_the_copy_is_cached(onnx_source_run, published, no_builder):
    run_id = run_fetch_ok("--onnx_source", spec(published), "--damage", "true", "--damage_tokens", "256")
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics["onnx_cache_hit"] == 1.0  # the same published build: the copy made by the first run
    assert metrics["damage_tokens"] > 0 and metrics["damage_ppl_reference"] > 1
    # the ONNX form is the fixture's own int4 build: close to, but not the same as, the fp32 reference
    assert 0 <= metrics["damage_kld_mean"] < 1.0 and metrics["damage_top1_agreement"] > 0.5
    report = fetched_model(run_id).info["damage"]
    assert report["metrics"]["damage_tokens"] == metrics["damage_tokens"]


def test_a_template_in_tokenizer_config_is_used_as_it_is(copy_of, fixture_fetch_run, no_builder):
    folder = copy_of / SUBFOLDER
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = (fetched_model(fixture_fetch_run).hf_dir / "chat_template.jinja").read_text()
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    result = fetch(FetchOptions(model=FIXTURE_MODEL, onnx_source=spec(copy_of)))
    template = result.info["onnx_source"]["chat_template"]
    assert template == {"from": "onnx_source", "file": "tokenizer_config.json", "same_as_model": True}
    assert not (result.onnx_dir / "chat_template.jinja").exists()
    text, n_new = greedy_reply(result.onnx_dir, "Hello", max_new=3)
    assert n_new >= 1


# -- bad sources and contradicting flags: exit 2, one line naming onnx_source ----------------------------------------
def _unlink(name: str):
    return lambda folder: (folder / name).unlink()


def _other_vocabulary(folder: Path) -> None:
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["vocab_size"] = 999
    (folder / "genai_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(("damage", "named"), [
    (_unlink("genai_config.json"), "has no genai_config.json"),
    (lambda f: (f / "genai_config.json").write_text("{not json"), "genai_config.json is not valid JSON"),
    (_unlink(PUBLISHED), f"has no {PUBLISHED} (the decoder model genai_config.json names)"),
    (_unlink(PUBLISHED + ".data"), f"has no {PUBLISHED}.data (the external data file {PUBLISHED} references)"),
    (_unlink("tokenizer.json"), "has no tokenizer (tokenizer.json or tokenizer.model)"),
    (_unlink("tokenizer_config.json"), "has no tokenizer_config.json"),
    (_other_vocabulary, "vocab_size 999, model 'fixture:tiny-random-phi3' has"),
], ids=["no-genai-config", "bad-json", "no-decoder", "no-external-data", "no-tokenizer", "no-tokenizer-config",
        "other-model"])
def test_a_damaged_published_folder_is_refused_naming_the_file(copy_of, capsys, no_builder, damage, named):
    damage(copy_of / SUBFOLDER)
    assert fetch_model.main(["--model", FIXTURE_MODEL, "--onnx_source", spec(copy_of), "--damage", "false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: onnx_source") and named in err, err


def test_missing_subfolder_and_hub_offline_are_refused(published, capsys, monkeypatch, tmp_path):
    assert fetch_model.main(["--model", FIXTURE_MODEL, "--onnx_source", spec(published, "cpu_and_mobile/other")]) == 2
    err = capsys.readouterr().err
    assert "error: onnx_source: local folder" in err and "has no subfolder 'cpu_and_mobile/other'" in err
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    hub = f"microsoft/{REPO}:{SUBFOLDER}"
    assert fetch_model.main(["--model", FIXTURE_MODEL, "--onnx_source", hub, "--damage", "false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    for expected in ("error: onnx_source: cannot download", f"'microsoft/{REPO}'", SUBFOLDER, "onnx_revision 'main'",
                     "offline", "-P onnx_source=/path/to/folder"):
        assert expected in err, err


@pytest.mark.parametrize(("flags", "named"), [
    (["--precision", "fp16"], "precision/onnx_source"),
    (["--recipe", "k_quant"], "recipe/onnx_source"),
    (["--block_size", "64"], "block_size/onnx_source"),
    (["--accuracy_level", "1"], "accuracy_level/onnx_source"),
    (["--onnx_revision", "v2"], "onnx_revision/onnx_source"),  # a local onnx_source has no revision
    (["--execution_provider", "cuda"], "execution_provider/onnx_source"),  # the published build is a cpu build
])
def test_builder_options_with_onnx_source_are_refused_naming_both_flags(published, capsys, no_builder, flags, named):
    assert fetch_model.main(["--model", FIXTURE_MODEL, "--onnx_source", spec(published), "--damage", "false",
                             *flags]) == 2
    assert f"error: {named}" in capsys.readouterr().err


def test_onnx_revision_without_onnx_source_is_refused(capsys):
    assert fetch_model.main(["--model", FIXTURE_MODEL, "--onnx_revision", "v2"]) == 2
    assert "onnx_revision/onnx_source" in capsys.readouterr().err


# -- the hub path --------------------------------------------------------------------------------------------------
def test_hub_onnx_source_downloads_only_the_subfolder_at_the_pinned_revision(published, monkeypatch, tmp_path,
                                                                          no_builder):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):  # the hub cannot exist here: serve the local folder
        calls.append({"repo_id": repo_id, **kwargs})
        snapshot = tmp_path / "hub" / "snapshots" / COMMIT
        shutil.copytree(published, snapshot, dirs_exist_ok=True)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    run_id = run_fetch_ok("--onnx_source", f"acme/tiny-onnx:{SUBFOLDER}", "--onnx_revision", "v1", "--damage",
                          "false")
    assert len(calls) == 1
    call = calls[0]
    assert call["repo_id"] == "acme/tiny-onnx" and call["revision"] == "v1"
    assert call["allow_patterns"] == [f"{SUBFOLDER}/*"] and "ignore_patterns" not in call
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["chatpack.onnx_source_kind"] == "hub"
    assert tags["chatpack.onnx_source"] == f"acme/tiny-onnx:{SUBFOLDER}"
    assert tags["chatpack.onnx_revision.requested"] == "v1"
    assert tags["chatpack.onnx_revision.resolved"] == COMMIT
    assert tags[f"chatpack.onnx_sha256.{PUBLISHED}"] == sha256_file(published / SUBFOLDER / PUBLISHED)


def test_hub_onnx_source_resolves_from_the_hub_cache_with_the_real_download_code(published, monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--acme--tiny-onnx"
    shutil.copytree(published, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    folder, resolved = locate(parse_onnx_source(f"acme/tiny-onnx:{SUBFOLDER}"))
    assert resolved == COMMIT and (folder / PUBLISHED).is_file()
    with pytest.raises(SourceError, match="onnx_source: hub repository 'acme/tiny-onnx' at .* has no subfolder"):
        locate(parse_onnx_source("acme/tiny-onnx:cpu_and_mobile/other"))


# -- main: forwarding, sweeps, reuse ---------------------------------------------------------------------------------
def test_main_forwards_onnx_source_only_when_set_and_refuses_sweeps(published, capsys):
    plain = PipelineOptions(model=FIXTURE_MODEL)
    assert "onnx_source" not in fetch_params(plain, plain.pipeline_recipes()[0])
    options = PipelineOptions(model=FIXTURE_MODEL, onnx_source=spec(published))
    recipes = options.pipeline_recipes()  # the default builder sweep does not apply: one default recipe
    assert [r.label for r in recipes] == ["default"]
    params = fetch_params(options, recipes[0])
    assert params["onnx_source"] == spec(published) and params["onnx_revision"] == "main"
    assert params["recipe"] == "default" and params["precision"] == "int4"
    for flags, named in [(["--recipes", "default,k_quant"], "recipes/onnx_source"),
                         (["--recipes", "k_quant"], "recipes/onnx_source"),
                         (["--precision", "fp16"], "precision/onnx_source"),
                         (["--block_size", "64"], "block_size/onnx_source")]:
        before = mlflow.last_active_run().info.run_id
        assert main_step.main(["--model", FIXTURE_MODEL, "--onnx_source", spec(published), *flags]) == 2
        assert f"error: {named}" in capsys.readouterr().err
        assert mlflow.last_active_run().info.run_id == before  # refused before any run was made


def test_reuse_key_includes_onnx_source_and_onnx_revision():
    experiment = mlflow.get_experiment_by_name("chatpack-tests").experiment_id
    params = {"model": FIXTURE_MODEL, "onnx_source": f"acme/tiny-onnx:{SUBFOLDER}", "onnx_revision": COMMIT}
    with mlflow.start_run() as run:
        mlflow.log_params(logged_params("fetch_model", params))
        mlflow.set_tags({"mlflow.project.entryPoint": "fetch_model", CODE_VERSION_TAG: "files:onnx"})
    assert find_reusable_run(experiment, "fetch_model", params, "files:onnx").info.run_id == run.info.run_id
    for other in ({**params, "onnx_source": f"acme/tiny-onnx:{SUBFOLDER}-other"},
                  {**params, "onnx_revision": "main"},
                  {"model": FIXTURE_MODEL}):  # no onnx_source: a built ONNX form
        assert find_reusable_run(experiment, "fetch_model", other, "files:onnx") is None, other
