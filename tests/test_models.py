"""The decoder matches transformers' PyTorch logits for every family, and HF import/export."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tr = pytest.importorskip("transformers")

from conftest import real_model_dir  # noqa: E402

from critique_jax.checkpoints.hf import (  # noqa: E402
    CheckpointFormatError,
    SafetensorsIndex,
    load_hf,
    save_hf,
)
from critique_jax.data.tokenizers import check_vocab  # noqa: E402
from critique_jax.models import Transformer  # noqa: E402

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,
)

FAMILIES = {
    "llama3-tied": lambda: tr.LlamaConfig(
        **COMMON, rope_theta=5e5, rope_scaling=LLAMA3_ROPE, tie_word_embeddings=True
    ),
    "llama2-untied-bias": lambda: tr.LlamaConfig(**COMMON, attention_bias=True),
    "mistral-sliding": lambda: tr.MistralConfig(**COMMON, sliding_window=4),
    "qwen2": lambda: tr.Qwen2Config(**COMMON, tie_word_embeddings=False),
    "qwen3": lambda: tr.Qwen3Config(**COMMON, head_dim=24),
}


def _random_checkpoint(hf_config, directory: Path, seed: int = 0):
    torch.manual_seed(seed)
    model = tr.AutoModelForCausalLM.from_config(hf_config).eval()
    with torch.no_grad():  # non-trivial norm scales and biases, so a mix-up shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(directory)
    return model


def _padded_batch():
    ids = np.random.RandomState(0).randint(0, COMMON["vocab_size"], (3, 12))
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, 9:] = 0  # right padding
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    return ids, mask, positions


def _torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def _our_logits(cfg, params, ids, mask, positions):
    out = Transformer(cfg).apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask)
    )
    return np.asarray(out)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    model = _random_checkpoint(FAMILIES[request.param](), directory)
    return request.param, directory, model


@pytest.mark.parametrize("scan_layers", [True, False])
def test_logits_match_transformers(family, scan_layers):
    _, directory, model = family
    ids, mask, positions = _padded_batch()
    cfg, params = load_hf(directory, scan_layers=scan_layers)
    ours = _our_logits(cfg, params, ids, mask, positions)
    ref = _torch_logits(model, ids, mask)
    valid = mask.astype(bool)
    assert np.abs(ours - ref)[valid].max() <= 1e-4


@pytest.mark.parametrize("length", [150])
def test_sequences_longer_than_one_query_block_match_transformers(family, length):
    """Training attention runs the causal triangle in query blocks of 64 (three here, the last
    one short); with left and right padding the logits still match."""
    _, directory, model = family
    ids = np.random.RandomState(1).randint(0, COMMON["vocab_size"], (2, length))
    mask = np.ones_like(ids)
    mask[0, :70] = 0
    mask[1, 130:] = 0
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    cfg, params = load_hf(directory)
    ours = _our_logits(cfg, params, ids, mask, positions)
    ref = _torch_logits(model, ids, mask)
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4


def test_export_loads_in_transformers_with_same_logits(family, tmp_path):
    _, directory, model = family
    cfg, params = load_hf(directory)
    out = save_hf(cfg, params, tmp_path / "export")
    reloaded = tr.AutoModelForCausalLM.from_pretrained(out).eval()
    ids, mask, _ = _padded_batch()
    valid = mask.astype(bool)
    diff = np.abs(_torch_logits(reloaded, ids, mask) - _torch_logits(model, ids, mask))[valid]
    assert diff.max() <= 1e-5


def test_import_export_is_bit_identical(family, tmp_path):
    _, directory, _ = family
    for scan_layers in (True, False):
        cfg, params = load_hf(directory, scan_layers=scan_layers)
        out = save_hf(cfg, params, tmp_path / f"rt{scan_layers}")
        a, b = SafetensorsIndex(directory), SafetensorsIndex(out)
        assert set(b.tensors) <= set(a.tensors)
        for name in b.tensors:
            x, y = a.get(name), b.get(name)
            assert x.dtype == y.dtype and x.shape == y.shape
            assert np.array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8)), name


def test_bf16_checkpoint_round_trips(tmp_path):
    cfg_hf = FAMILIES["qwen2"]()
    cfg_hf.torch_dtype = "bfloat16"
    torch.manual_seed(0)
    model = tr.AutoModelForCausalLM.from_config(cfg_hf).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    cfg, params = load_hf(tmp_path / "bf16", param_dtype="bfloat16", dtype="bfloat16")
    assert params["embed"]["embedding"].dtype == jnp.bfloat16
    out = save_hf(cfg, params, tmp_path / "bf16-out")
    a, b = SafetensorsIndex(tmp_path / "bf16"), SafetensorsIndex(out)
    name = "model.layers.1.mlp.down_proj.weight"
    assert np.array_equal(
        np.asarray(a.get(name)).view(np.uint16), np.asarray(b.get(name)).view(np.uint16)
    )


def test_sharded_export_has_an_index_that_transformers_reads(tmp_path):
    directory = tmp_path / "src"
    model = _random_checkpoint(FAMILIES["llama2-untied-bias"](), directory)
    cfg, params = load_hf(directory)
    out = save_hf(cfg, params, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    cfg2, params2 = load_hf(out)
    assert cfg2 == cfg
    reloaded = tr.AutoModelForCausalLM.from_pretrained(out).eval()
    ids, mask, _ = _padded_batch()
    assert np.allclose(
        _torch_logits(reloaded, ids, mask), _torch_logits(model, ids, mask), atol=1e-5
    )


# ----------------------------------------------------------------------------- errors


def test_unsupported_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointFormatError, match="model_type 'gpt2' is not supported"):
        load_hf(tmp_path)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointFormatError, match="config.json is missing"):
        load_hf(tmp_path)
    with pytest.raises(CheckpointFormatError, match="does not exist"):
        load_hf(tmp_path / "nowhere")


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    directory = tmp_path / "ckpt"
    _random_checkpoint(FAMILIES["qwen2"](), directory)
    tensors = load_file(str(directory / "model.safetensors"))
    name = "model.layers.1.self_attn.k_proj.weight"

    broken = dict(tensors)
    broken[name] = np.zeros((8, 64), np.float32)
    save_file(broken, str(directory / "model.safetensors"))
    with pytest.raises(
        CheckpointFormatError, match=r"k_proj.weight has shape \(8, 64\).*\(32, 64\)"
    ):
        load_hf(directory)

    del broken[name]
    save_file(broken, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointFormatError, match="k_proj.weight is missing"):
        load_hf(directory)

    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointFormatError, match="no model.safetensors"):
        load_hf(directory)


def test_tokenizer_larger_than_embedding_is_rejected():
    from critique_jax.models import preset

    class FakeTokenizer:
        def __len__(self):
            return 300

    with pytest.raises(CheckpointFormatError, match="300 tokens but the model's embedding has"):
        check_vocab(FakeTokenizer(), preset("tiny"))


# ----------------------------------------------------------------------------- real model


def test_check_hf_passes_on_real_smollm2(capsys):
    from critique_jax.check_hf import main

    directory = real_model_dir("smollm2-135m")
    code = main([str(directory)])  # in process: jax, torch and transformers are loaded
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, result
    assert result["ok"] and result["top1_agreement"] == 1.0
