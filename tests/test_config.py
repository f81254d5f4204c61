"""Configuration: presets, files, dotted overrides, validation with suggestions."""

import json

import pytest

from nanogpt.config import PRESETS, TrainConfig, get_preset, resolve_train_config, resolve_train_flat
from nanogpt.errors import NanoGPTError


def test_shakespeare_char_is_nanogpts_recipe():
    cfg = resolve_train_config("shakespeare-char")
    m, o, d, r = cfg.model, cfg.optim, cfg.data, cfg.run
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (6, 6, 384, 256, 0.2)
    assert (d.batch_size, o.lr, o.min_lr, o.warmup_iters, o.beta2, r.max_iters) == (64, 1e-3, 1e-4, 100, 0.99, 5000)


def test_gpt2_124m_tokens_per_step_is_half_a_million():
    cfg = resolve_train_config("gpt2-124m")
    assert cfg.data.batch_size * cfg.model.block_size * cfg.optim.grad_accum_steps == 524_288
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.optim.lr) == (12, 12, 768, 6e-4)


def test_all_presets_resolve():
    for name in PRESETS:
        assert isinstance(resolve_train_config(name), TrainConfig)


def test_precedence_preset_file_overrides(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('preset = "shakespeare-char"\n[model]\nn_layer = 3\n[optim]\nlr = 5e-4\n')
    flat, user = resolve_train_flat(config_file=str(f), overrides={"optim.lr": "2e-4"})
    cfg = TrainConfig.from_flat(flat)
    assert cfg.model.n_layer == 3 and cfg.model.n_embd == 384  # file over preset
    assert cfg.optim.lr == 2e-4  # command line over file
    assert user == {"model.n_layer", "optim.lr"}


def test_json_and_yaml_like_files(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"run": {"max_iters": 7}}))
    assert resolve_train_config(config_file=str(f)).run.max_iters == 7


def test_unknown_key_suggests_nearest():
    with pytest.raises(NanoGPTError, match="unknown config key 'model.nlayer'; did you mean 'model.n_layer'"):
        TrainConfig.from_flat({"model.nlayer": 4})


def test_unknown_preset_suggests_nearest():
    with pytest.raises(NanoGPTError, match="did you mean 'shakespeare-char'"):
        get_preset("shakespear-char")


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("model.n_layer", "four", "model.n_layer must be int"),
        ("model.n_layer", 2.5, "model.n_layer must be int"),
        ("optim.lr", "fast", "optim.lr must be float"),
        ("run.dtype", "float8", "run.dtype must be one of"),
        ("model.n_embd", 100, "divisible by model.n_head"),
        ("optim.min_lr", 1.0, "must not exceed optim.lr"),
        ("data.batch_size", 0, "data.batch_size must be positive"),
    ],
)
def test_bad_values_are_clear(key, value, match):
    with pytest.raises(NanoGPTError, match=match):
        TrainConfig.from_flat({key: value})


def test_values_from_strings_are_typed():
    cfg = TrainConfig.from_flat({"model.bias": "false", "optim.lr_decay_iters": "none", "run.max_iters": "1_000"})
    assert cfg.model.bias is False and cfg.optim.lr_decay_iters is None and cfg.run.max_iters == 1000


def test_bad_config_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model\n")
    with pytest.raises(NanoGPTError, match="cannot parse config file"):
        resolve_train_config(config_file=str(f))
    with pytest.raises(NanoGPTError, match="config file not found"):
        resolve_train_config(config_file=str(tmp_path / "missing.toml"))


def test_shipped_config_files_resolve():
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
    assert files
    for f in files:
        cfg = resolve_train_config(config_file=str(f))
        assert isinstance(cfg, TrainConfig)
    cfg = resolve_train_config(config_file=str(files[0]))
    assert cfg.model.n_layer == 2 and cfg.model.activation == "gelu" and cfg.run.max_seconds == 60
