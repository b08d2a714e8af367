"""Checkpoint formats: strict loading, clear errors, conversions, URL and Hub sources (local stand-ins)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, TINY, Evil
from webdino_seg import WeightsError, convert_weights, create_backbone
from webdino_seg.models.variants import get_variant
from webdino_seg.models.weights.dinov2 import chunk_keys, official_to_hf
from webdino_seg.models.weights.formats import to_official
from webdino_seg.utils.download import cache_path, download_url, sha256_file

OFFICIAL = FIXTURES / "tiny_official.pth"


def _tiny_sd() -> dict[str, torch.Tensor]:
    return torch.load(OFFICIAL, weights_only=True)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_300m_key_lists_convert_both_ways() -> None:
    official = json.loads((FIXTURES / "webdino300m_official_keys.json").read_text())
    hf = json.loads((FIXTURES / "webdino300m_hf_keys.json").read_text())
    cfg = get_variant("webdino-300m")
    with torch.device("meta"):
        model = create_backbone("webdino-300m")
    sd = model.state_dict()
    as_hf = official_to_hf(sd)
    assert {k: list(v.shape) for k, v in as_hf.items()} == hf["legacy_keys"]
    chunked = chunk_keys(sd, cfg)
    assert {k: list(v.shape) for k, v in chunked.items()} == official["chunked"]
    for spec in (official["chunked"], official["unchunked"], hf["legacy_keys"], hf["v5_keys"]):
        fake = {k: torch.empty(v, device="meta") for k, v in spec.items()}
        back, _ = to_official(fake)
        assert {k: list(v.shape) for k, v in back.items()} == official["unchunked"]


@pytest.mark.parametrize(
    ("wrap", "fmt"),
    [
        (lambda sd: {"model": sd}, "official-chunked"),
        (
            lambda sd: {"teacher": {f"backbone.{k}": v for k, v in sd.items()} | {"dino_head.w": torch.ones(1)}},
            "official-chunked",
        ),
        (lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, "official-chunked"),
        (lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()} | {"ibot_head.x": torch.ones(2)}, "official-chunked"),
    ],
)
def test_wrapped_checkpoints_load(tmp_path: Path, wrap, fmt: str) -> None:
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(_tiny_sd()), path)
    model = create_backbone("webdino-300m", weights=path, **TINY)
    assert model.weights_info["format"] == fmt
    _assert_same_weights(model, create_backbone("webdino-300m", weights=OFFICIAL, **TINY))


def test_hf_v5_naming_loads(tmp_path: Path) -> None:
    legacy = load_file(FIXTURES / "tiny_hf" / "model.safetensors")
    v5 = {}
    for k, v in legacy.items():
        k2 = (
            k.replace("attention.attention.query", "attention.q_proj")
            .replace("attention.attention.key", "attention.k_proj")
            .replace("attention.attention.value", "attention.v_proj")
            .replace("attention.output.dense", "attention.o_proj")
            .replace("mlp.weights_out", "mlp.down_proj")
        )
        if ".mlp.weights_in." in k:
            gate, up = v.chunk(2)
            v5[k2.replace("weights_in", "gate_proj")] = gate.contiguous()
            v5[k2.replace("weights_in", "up_proj")] = up.contiguous()
        else:
            v5[k2] = v
    path = tmp_path / "v5.pth"
    torch.save(v5, path)
    model = create_backbone("webdino-300m", weights=path, **TINY)
    assert model.weights_info["format"] == "hf-v5"
    _assert_same_weights(model, create_backbone("webdino-300m", weights=OFFICIAL, **TINY))


def _corrupt(kind: str) -> dict:
    sd = _tiny_sd()
    if kind == "removed":
        del sd["blocks.2.2.attn.qkv.bias"]
    elif kind == "renamed":
        sd["blocks.1.1.attn.qkv_renamed.weight"] = sd.pop("blocks.1.1.attn.qkv.weight")
    elif kind == "shape":
        sd["norm.weight"] = torch.ones(65)
    return sd


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        ("removed", r"official-chunked checkpoint(.|\n)*1 missing key\(s\): blocks\.2\.attn\.qkv\.bias"),
        (
            "renamed",
            r"missing key\(s\): blocks\.1\.attn\.qkv\.weight(.|\n)*unexpected key\(s\): blocks\.1\.attn\.qkv_renamed",
        ),
        ("shape", r"shape mismatch(.|\n)*norm\.weight \(65,\) vs \(64,\)"),
    ],
)
def test_strict_loading_errors(tmp_path: Path, kind: str, pattern: str) -> None:
    path = tmp_path / f"{kind}.pth"
    torch.save(_corrupt(kind), path)
    model = create_backbone("webdino-300m", **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from webdino_seg.models.weights.loading import load_backbone_weights

    with pytest.raises(WeightsError, match=pattern):
        load_backbone_weights(model, path)
    for k, v in model.state_dict().items():  # nothing half-loaded
        assert torch.equal(v, before[k]), k


def test_wrong_variant_names_what_the_file_looks_like() -> None:
    with pytest.raises(WeightsError, match=r"shape mismatch(.|\n)*looks like webdino-tiny"):
        create_backbone("webdino-300m", weights=OFFICIAL)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_text("this is not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pth: not a PyTorch checkpoint"):
        create_backbone("webdino-tiny", weights=junk)
    opcode = tmp_path / "opcode.pth"  # bytes the unpickler rejects as an unknown opcode: garbage, not code
    opcode.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match=r"opcode\.pth: not a PyTorch checkpoint \(UnpicklingError: Unsupported"):
        create_backbone("webdino-tiny", weights=opcode)
    nested = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "config": {"lr": 1.0}}, nested)
    with pytest.raises(WeightsError, match="not a state dict"):
        create_backbone("webdino-tiny", weights=nested)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 20)
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        create_backbone("webdino-tiny", weights=bad_st)


def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"pos_embed": Evil()}, f)
    torch.save({"x": Evil()}, tmp_path / "evil2.pth")
    for p in (path, tmp_path / "evil2.pth"):
        with pytest.raises(WeightsError, match="refused to load"):
            create_backbone("webdino-tiny", weights=p)
    assert not (tmp_path / "PWNED").exists()


def test_missing_file_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights not found"):
        create_backbone("webdino-tiny", weights=tmp_path / "nope.pth")


@pytest.mark.parametrize("to", ["hf", "official"])
def test_convert_round_trip_is_lossless(tmp_path: Path, to: str) -> None:
    src = FIXTURES / ("tiny_hf" if to == "official" else "tiny_official_unchunked.pth")
    out = tmp_path / ("tiny.pth" if to == "official" else "hf")
    convert_weights(src, out, to)
    back = tmp_path / ("back_hf" if to == "official" else "back.pth")
    convert_weights(out, back, "hf" if to == "official" else "official")
    ref = create_backbone("webdino-300m", weights=OFFICIAL, **TINY)
    for path in (out, back):
        _assert_same_weights(create_backbone("webdino-300m", weights=path, **TINY), ref)
    if to == "official":  # written chunked, like the official factory
        assert torch.load(out, weights_only=True).keys() == _tiny_sd().keys()
    else:
        assert load_file(out / "model.safetensors").keys() == load_file(FIXTURES / "tiny_hf/model.safetensors").keys()
        cfg = json.loads((out / "config.json").read_text())
        ref_cfg = json.loads((FIXTURES / "tiny_hf/config.json").read_text())
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "use_swiglu_ffn", "layer_norm_eps"):
            assert cfg[key] == ref_cfg[key]


# --- remote sources, through local stand-ins only (the `server` fixture in conftest) ------------


def test_url_downloads_once_into_cache(tmp_path: Path, server, monkeypatch: pytest.MonkeyPatch) -> None:
    base, _ = server
    (tmp_path / "srv" / "tiny.pth").write_bytes(OFFICIAL.read_bytes())
    monkeypatch.setenv("WEBDINO_SEG_CACHE", str(tmp_path / "cache"))
    model = create_backbone("webdino-300m", weights=f"{base}/tiny.pth", **TINY)
    cached = cache_path(f"{base}/tiny.pth")
    assert cached.parent == tmp_path / "cache" / "downloads" and cached.name.endswith("-tiny.pth")
    assert cached.exists() and sha256_file(cached) == sha256_file(OFFICIAL)
    _assert_same_weights(model, create_backbone("webdino-300m", weights=OFFICIAL, **TINY))
    (tmp_path / "srv" / "tiny.pth").unlink()  # second use is served from the cache
    create_backbone("webdino-300m", weights=f"{base}/tiny.pth", **TINY)


def test_interrupted_download_resumes_and_is_checked(tmp_path: Path, server) -> None:
    base, handler = server
    (tmp_path / "srv" / "tiny.pth").write_bytes(OFFICIAL.read_bytes())
    handler.cut_after = 1000
    with pytest.raises(ConnectionError, match="run again to resume"):
        download_url(f"{base}/tiny.pth", tmp_path / "dl", progress=False)
    (part,) = (tmp_path / "dl").glob(".tiny.pth.*.part")
    assert part.stat().st_size == 1000
    assert not (tmp_path / "dl" / "tiny.pth").exists()
    handler.cut_after = None
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_url(f"{base}/tiny.pth", tmp_path / "dl", sha256="0" * 64, progress=False)
    assert not (tmp_path / "dl" / "tiny.pth").exists()
    path = download_url(f"{base}/tiny.pth", tmp_path / "dl", sha256=sha256_file(OFFICIAL), progress=False)
    assert sha256_file(path) == sha256_file(OFFICIAL)


def test_unreachable_url_is_a_clear_error(tmp_path: Path, server, monkeypatch: pytest.MonkeyPatch) -> None:
    base, _ = server
    monkeypatch.setenv("WEBDINO_SEG_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConnectionError, match="HTTP 404"):
        create_backbone("webdino-tiny", weights=f"{base}/missing.pth")
    with pytest.raises(ConnectionError, match=r"cannot download http://127\.0\.0\.1:9/"):
        create_backbone("webdino-tiny", weights="http://127.0.0.1:9/x.pth")


def test_hub_id_from_prefilled_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = "facebook/webssl-dino-tiny-test"
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = tmp_path / "hub" / "models--facebook--webssl-dino-tiny-test"
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for name in ("config.json", "model.safetensors"):
        (snap / name).write_bytes((FIXTURES / "tiny_hf" / name).read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    model = create_backbone("webdino-300m", weights=repo, **TINY)
    assert model.weights_info["format"] == "hf-v4"
    _assert_same_weights(model, create_backbone("webdino-300m", weights=OFFICIAL, **TINY))
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        create_backbone("webdino-tiny", weights="facebook/not-cached")
