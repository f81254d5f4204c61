"""nanogpt.resolve: what a model argument names, its errors, and configurations without weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nanogpt import resolve
from nanogpt.config import PRESETS, GPTConfig
from nanogpt.errors import NanoGPTError
from nanogpt.resolve import LOADABLE, ModelSource, model_config, resolve_source

HUB = "a GPT-2 hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl)"
NANOGPT = "a nanoGPT checkpoint (ckpt.pt or its out folder)"
LOAD_ACCEPTS = f"a run folder, a Hugging Face GPT-2 folder, {NANOGPT} or {HUB}"
INSPECT = {"run", "hf", "preset"}
TINY = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 16, "n_positions": 8, "vocab_size": 30}
TINY_CONFIG = GPTConfig(block_size=8, vocab_size=30, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every test runs in an empty folder, so a name like 'gpt2' is no path unless a test makes it one."""
    monkeypatch.chdir(tmp_path)


def make_run(folder: Path, pointer: str = "last.json", config: dict | None = None) -> Path:
    """A run folder with a checkpoint pointer and a (fake but complete) checkpoint folder."""
    ck = folder / "checkpoints" / "step-0000001"
    ck.mkdir(parents=True)
    for f in ("model.safetensors", "trainer.pt"):
        (ck / f).write_bytes(b"")
    info = {"format_version": 1, "iter": 1, "config": {"model": (config or TINY_CONFIG.to_dict())}}
    (ck / "info.json").write_text(json.dumps(info))
    (folder / pointer).write_text(json.dumps({"path": "checkpoints/step-0000001", "iter": 1}))
    return folder


def make_hf(folder: Path, weights: str | None = "model.safetensors", config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY if config is None else config))
    if weights:
        (folder / weights).write_bytes(b"")
    return folder


def error_of(*args, **kwargs) -> str:
    with pytest.raises(NanoGPTError) as e:
        resolve_source(*args, **kwargs)
    return str(e.value)


# --------------------------------------------------------------------------------------------
# Every kind


@pytest.mark.parametrize("pointer", ["last.json", "best.json"])
def test_run_folder(tmp_path, pointer):
    run = make_run(tmp_path / "run", pointer)
    assert resolve_source(str(run)) == ModelSource("run", str(run), run)
    assert resolve.is_run_dir(run) and not resolve.is_hf_dir(run)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_hf_folder(tmp_path, weights):
    folder = make_hf(tmp_path / "hf", weights)
    assert resolve_source(str(folder), LOADABLE) == ModelSource("hf", str(folder), folder)


def test_hub_names_and_presets():
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        assert resolve_source(name, LOADABLE) == ModelSource("hub", name, None)
        # where hub names are not accepted (inspect), the GPT-2 sizes are presets
        assert resolve_source(name, INSPECT) == ModelSource("preset", name, None)
    assert resolve_source("gpt2") == ModelSource("hub", "gpt2", None)  # all kinds: hub wins over preset
    for name in PRESETS:
        assert resolve_source(name) == ModelSource("preset", name, None)
    assert resolve.preset_names() == ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", *PRESETS]


def test_descriptions():
    assert ModelSource("run", "runs/x", Path("runs/x")).description == "run folder runs/x"
    assert ModelSource("hf", "hf", Path("hf")).description == "Hugging Face GPT-2 folder hf"
    assert ModelSource("hub", "gpt2", None).description == "GPT-2 hub name gpt2"
    assert ModelSource("preset", "gpt2-124m", None).description == "preset gpt2-124m"


# --------------------------------------------------------------------------------------------
# Precedence


def test_an_existing_folder_named_like_a_name_is_a_folder(tmp_path):
    make_run(tmp_path / "gpt2")
    assert resolve_source("gpt2", LOADABLE).kind == "run"
    make_run(tmp_path / "shakespeare-char")
    assert resolve_source("shakespeare-char", INSPECT).kind == "run"
    (tmp_path / "gpt2-xl").mkdir()  # an empty folder is not the hub model of that name
    assert error_of("gpt2-xl", LOADABLE).startswith("gpt2-xl holds no model:")


def test_without_folder_kinds_the_file_system_is_not_consulted(tmp_path):
    make_run(tmp_path / "gpt2")
    assert resolve_source("gpt2", {"preset"}) == ModelSource("preset", "gpt2", None)
    assert resolve_source("gpt2", {"hub"}) == ModelSource("hub", "gpt2", None)


def test_a_missing_path_that_is_a_hub_name_is_hub(tmp_path):
    assert not (tmp_path / "gpt2-medium").exists()
    assert resolve_source("gpt2-medium", {"run", "hf", "hub"}).kind == "hub"


def test_run_pointer_wins_over_hf_files(tmp_path):
    # A run folder also holds a config.json (the TrainConfig); its pointer decides.
    run = make_run(tmp_path / "run")
    (run / "config.json").write_text(json.dumps({"model": TINY_CONFIG.to_dict()}))
    (run / "model.safetensors").write_bytes(b"")
    assert resolve_source(str(run)).kind == "run"


def test_config_only_folders_count_when_weights_are_not_needed(tmp_path):
    hf = make_hf(tmp_path / "hf", weights=None)
    assert resolve_source(str(hf), INSPECT, need_weights=False) == ModelSource("hf", str(hf), hf)
    run = tmp_path / "started"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": TINY_CONFIG.to_dict(), "run": {}}))
    assert resolve_source(str(run), INSPECT, need_weights=False) == ModelSource("run", str(run), run)


# --------------------------------------------------------------------------------------------
# Every error line


def test_error_empty():
    assert error_of("", LOADABLE) == f"no model given; pass {LOAD_ACCEPTS}"


def test_error_a_file(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    assert error_of(str(f)) == f"{f} is a file, not a folder; pass the run or Hugging Face folder that holds the model"


def test_error_folders_that_hold_no_model(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_of(str(empty), LOADABLE) == (
        f"{empty} holds no model: no last.json or best.json (a nanogpt run folder) "
        "and no config.json (a Hugging Face GPT-2 folder)"
    )
    hf = make_hf(tmp_path / "hf", weights=None)
    assert error_of(str(hf), LOADABLE) == (
        f"{hf} holds no model: no last.json or best.json (a nanogpt run folder) and its config.json has "
        "no model.safetensors or pytorch_model.bin beside it (a Hugging Face GPT-2 folder)"
    )
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_text(json.dumps({"model": TINY_CONFIG.to_dict()}))
    assert error_of(str(started), LOADABLE) == (
        f"{started} is a run folder without a checkpoint yet (no last.json or best.json); "
        "wait for its first checkpoint, or pass another run"
    )


def test_error_folders_that_hold_no_configuration(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_of(str(empty), INSPECT, need_weights=False) == (
        f"{empty} holds no model configuration: no last.json or best.json (a nanogpt run folder) "
        "and no config.json (a run's or a Hugging Face GPT-2 configuration)"
    )
    other = make_hf(tmp_path / "other", weights=None, config={"hidden_size": 8})
    assert error_of(str(other), INSPECT, need_weights=False) == (
        f"{other} holds no model configuration: no last.json or best.json (a nanogpt run folder) and its "
        "config.json has neither a 'model' section nor n_embd or model_type (a run's or a Hugging Face GPT-2 configuration)"
    )


def test_error_kind_not_accepted_here(tmp_path):
    assert error_of("gpt2", {"run", "hf"}) == (
        "'gpt2' is a GPT-2 hub name, which is not accepted here; pass a run folder or a Hugging Face GPT-2 folder"
    )
    assert error_of("shakespeare-char", LOADABLE) == (
        f"'shakespeare-char' is a preset, which is not accepted here; pass {LOAD_ACCEPTS}"
    )
    run = make_run(tmp_path / "run")
    assert error_of(str(run), {"hf", "hub"}) == (
        f"'{run}' is a run folder, which is not accepted here; pass a Hugging Face GPT-2 folder or {HUB}"
    )
    hf = make_hf(tmp_path / "hf")
    assert error_of(str(hf), {"run"}) == f"'{hf}' is a Hugging Face GPT-2 folder, which is not accepted here; pass a run folder"


def test_error_not_found_with_and_without_a_hint():
    assert error_of("gpt3", LOADABLE) == f"'gpt3' not found: no such folder or name; did you mean 'gpt2'? pass {LOAD_ACCEPTS}"
    presets = ", ".join(resolve.preset_names())
    assert error_of("shakespeare-chr", INSPECT) == (
        "'shakespeare-chr' not found: no such folder or name; did you mean 'shakespeare-char'? "
        f"pass a run folder, a Hugging Face GPT-2 folder or a preset ({presets})"
    )
    assert error_of("zzz", LOADABLE) == f"'zzz' not found: no such folder or name; pass {LOAD_ACCEPTS}"
    # Something that looks like a path gets no name hint (runs/gpt2 is not a typo of gpt2).
    assert error_of("runs/gpt2", LOADABLE) == f"'runs/gpt2' not found: no such folder; pass {LOAD_ACCEPTS}"
    assert error_of("zzz", {"run", "hf"}) == "'zzz' not found: no such folder; pass a run folder or a Hugging Face GPT-2 folder"


def test_error_names_only():
    presets = ", ".join(resolve.preset_names())
    assert error_of("gpt3", {"preset"}) == f"unknown preset 'gpt3'; did you mean 'gpt2'? choose one of: {presets}"
    assert error_of("gtp2-xl", {"hub"}) == (
        "unknown GPT-2 hub name 'gtp2-xl'; did you mean 'gpt2-xl'? choose one of: gpt2, gpt2-medium, gpt2-large, gpt2-xl"
    )


def test_label_starts_every_message(tmp_path):
    assert error_of("gpt7", LOADABLE, label="run.init_from").startswith("run.init_from: 'gpt7' not found:")
    assert error_of(str(tmp_path), LOADABLE, label="run.init_from").startswith(f"run.init_from: {tmp_path} holds no model")


def test_allowed_must_name_kinds():
    with pytest.raises(ValueError, match="subset"):
        resolve_source("gpt2", {"folder"})
    with pytest.raises(ValueError, match="subset"):
        resolve_source("gpt2", set())


# --------------------------------------------------------------------------------------------
# Configurations without weights


def test_model_config_of_every_kind(tmp_path):
    run = make_run(tmp_path / "run", config={**TINY_CONFIG.to_dict(), "n_layer": 3})
    cfg, where = model_config(resolve_source(str(run)))  # from the checkpoint's info.json
    assert cfg == GPTConfig(**{**TINY_CONFIG.to_dict(), "n_layer": 3}) and where == f"run folder {run}"
    (run / "config.json").write_text(json.dumps({"model": {**TINY_CONFIG.to_dict(), "n_layer": 4}}))
    assert model_config(resolve_source(str(run)))[0].n_layer == 4  # config.json first
    hf = make_hf(tmp_path / "hf", weights=None)
    assert model_config(resolve_source(str(hf), INSPECT, need_weights=False)) == (TINY_CONFIG, f"Hugging Face GPT-2 folder {hf}")
    cfg, where = model_config(resolve_source("gpt2-medium", LOADABLE))
    assert cfg == GPTConfig.from_name("gpt2-medium") and where.startswith("GPT-2 hub name gpt2-medium")
    assert model_config(resolve_source("gpt2-large", INSPECT)) == (GPTConfig.from_name("gpt2-large"), "preset gpt2-large")
    cfg, where = model_config(resolve_source("gpt2-124m"))
    assert (cfg.n_layer, cfg.vocab_size, where) == (12, 50304, "training preset gpt2-124m")
    cfg, where = model_config(resolve_source("shakespeare-char-cpu"), vocab_size=70)
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.bias) == (4, 192, 70, False)


def test_preset_vocab_comes_from_the_dataset(tmp_path):
    cfg, where = resolve.preset_config("shakespeare-char")
    assert cfg.vocab_size == resolve.SHAKESPEARE_CHARS == 76 and "not prepared yet" in where
    (tmp_path / "data" / "shakespeare-char").mkdir(parents=True)
    (tmp_path / "data" / "shakespeare-char" / "meta.json").write_text(json.dumps({"vocab_size": 77}))
    cfg, where = resolve.preset_config("shakespeare-char")
    assert cfg.vocab_size == 77 and where == "training preset shakespeare-char; vocab from data/shakespeare-char/meta.json"
    assert resolve.preset_config("finetune-shakespeare")[0].vocab_size == resolve.GPT2_VOCAB


def test_model_config_errors(tmp_path):
    with pytest.raises(NanoGPTError, match="^a vocabulary size applies to presets only; GPT-2 hub name gpt2 has its own$"):
        model_config(ModelSource("hub", "gpt2", None), vocab_size=10)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(NanoGPTError, match=r"config.json is not valid JSON"):
        model_config(ModelSource("hf", str(bad), bad))
    with pytest.raises(NanoGPTError, match="this llama config.json lacks vocab_size, hidden_size"):
        model_config(ModelSource("hf", "x", make_hf(tmp_path / "llama", config={"model_type": "llama"})))
    with pytest.raises(NanoGPTError, match="only GPT-2"):
        model_config(ModelSource("hf", "x", make_hf(tmp_path / "bert", config={"model_type": "bert"})))
    with pytest.raises(NanoGPTError, match="did you mean 'gpt2-124m'"):
        resolve.preset_config("gpt2-125m")
    run = make_run(tmp_path / "run", config={**TINY_CONFIG.to_dict(), "n_head": 3})
    with pytest.raises(NanoGPTError, match="must be divisible by model.n_head"):
        model_config(resolve_source(str(run)))


# --------------------------------------------------------------------------------------------
# Old names, loading, export, and no torch


def test_old_names_still_importable():
    from nanogpt import checkpoint, explain, hf

    assert checkpoint.is_run_dir is resolve.is_run_dir and checkpoint.checkpoint_path is resolve.checkpoint_path
    assert hf.is_hf_dir is resolve.is_hf_dir and hf.HUB_NAMES is resolve.HUB_NAMES
    assert explain.SHAKESPEARE_CHARS == 76 and explain.GPT2_VOCAB == 50257


def test_load_model_uses_the_resolver(tmp_path):
    from nanogpt.checkpoint import load_model

    with pytest.raises(NanoGPTError, match="^'gpt3' not found: no such folder or name; did you mean 'gpt2'"):
        load_model("gpt3")
    with pytest.raises(NanoGPTError, match="^'gpt2-124m' is a preset, which is not accepted here"):
        load_model("gpt2-124m")
    with pytest.raises(NanoGPTError, match="^preset gpt2 is a configuration without weights"):
        load_model(ModelSource("preset", "gpt2", None))


def test_export_takes_a_run_or_hf_folder_only(tmp_path, capsys):
    import torch

    from nanogpt.checkpoint import save_checkpoint
    from nanogpt.cli import main
    from nanogpt.model import GPT

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run", GPT(TINY_CONFIG), {}, {"iter": 1, "config": {"model": TINY_CONFIG.to_dict()}})
    assert main(["export", str(tmp_path / "run"), "--to", str(tmp_path / "hf"), "--which", "last"]) == 0
    assert main(["export", str(tmp_path / "hf"), "--to", str(tmp_path / "hf2")]) == 0  # an HF folder again
    a = GPT.from_pretrained(str(tmp_path / "hf")).state_dict()
    b = GPT.from_pretrained(str(tmp_path / "hf2")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["export", "gpt2", "--to", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"'gpt2' is a GPT-2 hub name, which is not accepted here; pass a run folder, a Hugging Face GPT-2 folder or {NANOGPT}" in err
    assert not (tmp_path / "x").exists()


def test_importing_and_using_resolve_does_not_import_torch(tmp_path):
    make_hf(tmp_path / "hf", weights=None)
    code = (
        "import sys, nanogpt.resolve as r\n"
        "r.model_config(r.resolve_source('hf', need_weights=False))\n"
        "r.model_config(r.resolve_source('gpt2-124m'))\n"
        "r.model_config(r.resolve_source('gpt2'))\n"
        "heavy = [m for m in ('torch', 'numpy', 'nanogpt.checkpoint', 'nanogpt.model') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    src = str(Path(resolve.__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
