"""nanogpt export: complete folders and files that other tools open, and that nanogpt reads back."""

import numpy as np
import pytest
import torch

from nanogpt.cli import main
from nanogpt.checkpoint import load_model
from tests.test_train import char_data, cfg_for  # noqa: F401 - the module-scoped dataset fixture
from nanogpt.trainer import train

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def char_run(char_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("runs") / "char"
    cfg, explicit = cfg_for(char_data, out, **{"run.max_iters": 10, "run.eval_interval": 10, "model.activation": "gelu"})
    train(cfg, explicit)
    return out


def test_hf_export_is_complete_and_reads_back(char_run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(char_run), "--to", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "nanogpt_tokenizer.json"} <= names
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert "AutoTokenizer.from_pretrained(DIR)" in capsys.readouterr().out
    ours = load_model(char_run)
    back = load_model(out)  # the tokenizer comes back with the folder
    text = "the king speaks of love"
    assert back.tokenizer.encode(text) == ours.tokenizer.encode(text)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = hf_tok(text)["input_ids"]
    assert ids == ours.tokenizer.encode(text)
    with torch.no_grad():
        torch.testing.assert_close(hf(torch.tensor([ids])).logits, ours.model(torch.tensor([ids]))[0], atol=1e-4, rtol=1e-4)
    assert main(["sample", str(out), "--prompt", "the", "--max-new-tokens", "5", "--dtype", "float32"]) == 0


def test_nanogpt_export_reads_back_with_its_vocabulary(char_run, tmp_path):
    from nanogpt.nanogpt_format import read_checkpoint

    assert main(["export", str(char_run), "--to", str(tmp_path / "ng"), "--format", "nanogpt"]) == 0
    ck = read_checkpoint(tmp_path / "ng")
    ours = load_model(char_run)
    assert ck.config == ours.model.config and ck.chars == ours.tokenizer.chars
    assert all(torch.equal(v, ours.model.state_dict()[k]) for k, v in ck.state.items())


def test_gguf_export_and_its_gelu_note(char_run, tmp_path, capsys):
    gguf = pytest.importorskip("gguf")
    target = tmp_path / "m.gguf"
    assert main(["export", str(char_run), "--to", str(target), "--format", "gguf", "--type", "f32"]) == 0
    printed = capsys.readouterr().out
    assert "trained with the exact GELU" in printed and "top token agrees" in printed
    reader = gguf.GGUFReader(str(target))
    tensors = {t.name: t for t in reader.tensors}
    wte = load_model(char_run).model.state_dict()["transformer.wte.weight"]
    assert np.array_equal(np.asarray(tensors["token_embd.weight"].data).reshape(wte.shape), wte.numpy())
    assert main(["export", str(char_run), "--to", str(target), "--format", "gguf"]) == 2  # exists: no overwrite
    assert main(["export", str(char_run), "--to", str(tmp_path / "x"), "--format", "gguf"]) == 2  # not .gguf
