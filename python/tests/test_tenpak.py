"""The Python package against the CLI's own outputs (`tenpak unpack`), over files and
HTTP, with signatures, corrupt chunks and deltas."""

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file

import tenpak
from conftest import LAYERS, run


def unpacked(work, tmp_path, *args):
    out = tmp_path / "unpacked"
    run("unpack", *args, "-o", out)
    return load_file(str(out / "model.safetensors"))


def test_open_lists_tensors_metadata_and_files(work):
    art = tenpak.open(work / "base.tnpk")
    names = [t.name for t in art.tensors]
    assert "model.layers.0.self_attn.q_proj.weight" in names
    q = next(t for t in art.tensors if t.name == "model.layers.0.self_attn.q_proj.weight")
    assert q.shape == (256, 256) and q.dtype == "bf16" and q.layer == 0
    assert q.encoding.startswith("int4")
    assert art.digest.startswith("sha256:") and art.base_digest is None
    assert art.config["model_type"] == "llama"
    assert "config.json" in art.files
    assert art.names(layers=[3]) == [t.name for t in art.tensors if t.layer == 3]
    assert "tenpak.Artifact" in repr(art)


def test_load_equals_unpack(work, tmp_path):
    ref = unpacked(work, tmp_path, work / "base.tnpk")
    sd = tenpak.load_state_dict(work / "base.tnpk")
    assert set(sd) == set(ref)
    for name, t in ref.items():
        assert sd[name].dtype == t.dtype == torch.bfloat16
        assert torch.equal(sd[name], t), name
    # f32 output: the decode itself, which rounds to the bf16 that unpack wrote.
    f32 = tenpak.open(work / "base.tnpk").load(names=["model.layers.2.*"], dtype=torch.float32)
    assert len(f32) == 9
    for name, t in f32.items():
        assert t.dtype == torch.float32
        assert torch.equal(t.to(torch.bfloat16), ref[name]), name


def test_http_layer0_fetches_only_its_chunks(work, tmp_path, server):
    ref = unpacked(work, tmp_path, work / "base.tnpk", "--layers", "0")
    art = tenpak.open(server.url("base.tnpk"))
    opened = server.bytes_sent
    server.reset()
    got = art.load(layers=[0], device="cpu")
    assert set(got) == set(ref) and len(got) == 9
    for name, t in ref.items():
        assert torch.equal(got[name], t), name
    layer0 = sum(t.encoded_bytes for t in art.tensors if t.layer == 0)
    everything = sum(t.encoded_bytes for t in art.tensors)
    # The server sent layer 0's chunks and nothing of the other tensors (chunks are
    # 4096-aligned: a coalesced request may carry the padding between two of them).
    assert layer0 <= server.bytes_sent <= layer0 + 4096 * 9, (server.bytes_sent, layer0)
    assert server.bytes_sent < everything / LAYERS
    print(
        f"\nHTTP: open {opened} bytes; layers=[0] fetched {server.bytes_sent} bytes in "
        f"{server.requests} requests; layer 0 holds {layer0} of {everything} encoded bytes "
        f"(file {art.size} bytes)"
    )


def test_signature_checked_before_use(work):
    art = tenpak.open(work / "base.tnpk", key=work / "signer.pub")
    assert art.load(names=["model.norm.weight"])["model.norm.weight"].shape == (256,)
    with pytest.raises(tenpak.SignatureError, match="not signed by"):
        tenpak.open(work / "base.tnpk", key=work / "other.pub")
    with pytest.raises(tenpak.TenpakError):
        tenpak.open(work / "base.tnpk", key=work / "missing.pub")


def chunk_offset(path, tensor):
    """The file offset of `tensor`'s first chunk, read from the manifest (docs/FORMAT.md:
    the header's manifest_offset and manifest_len at bytes 16 and 24)."""
    data = path.read_bytes()
    off, n = struct.unpack_from("<QQ", data, 16)
    manifest = json.loads(data[off : off + n])
    entry = next(t for t in manifest["tensors"] if t["name"] == tensor)
    return manifest["chunks"][entry["chunks"][0]]["offset"]


def test_corrupt_chunk_is_an_integrity_error(work, tmp_path):
    bad = tmp_path / "bad.tnpk"
    shutil.copy(work / "base.tnpk", bad)
    # One flipped byte in layer 3's down_proj: opening still works (header, manifest and
    # signature intact), loading layer 3 fails with the chunk named, layer 0 still loads.
    at = chunk_offset(bad, "model.layers.3.mlp.down_proj.weight") + 10
    data = bytearray(bad.read_bytes())
    data[at] ^= 0xFF
    bad.write_bytes(bytes(data))
    art = tenpak.open(bad, key=work / "signer.pub")
    with pytest.raises(tenpak.IntegrityError, match="corrupt"):
        art.load(layers=[3])
    assert len(art.load(layers=[0])) == 9


def test_not_a_tnpk_and_missing_file(tmp_path):
    junk = tmp_path / "junk.tnpk"
    junk.write_bytes(b"definitely not a tnpk file" * 10)
    with pytest.raises(tenpak.FormatError):
        tenpak.open(junk)
    with pytest.raises(tenpak.FetchError):
        tenpak.open(tmp_path / "absent.tnpk")
    truncated = tmp_path / "truncated.tnpk"
    truncated.write_bytes(b"\x89TNPK\r\n\x1a" + bytes(40))
    with pytest.raises(tenpak.FormatError):
        tenpak.open(truncated)


def test_unknown_selection_and_dtype(work):
    art = tenpak.open(work / "base.tnpk")
    with pytest.raises(tenpak.TensorNotFoundError):
        art.load(names=["no.such.tensor"])
    with pytest.raises(ValueError):
        art.load(names=["model.norm.weight"], dtype="int7")


def test_delta_needs_its_base_and_loads_the_finetune(work, tmp_path, server):
    with pytest.raises(tenpak.MissingBaseError):
        tenpak.open(work / "tune.tnpk")
    with pytest.raises(tenpak.WrongBaseError):
        tenpak.open(work / "base.tnpk", base=work / "base.tnpk")
    art = tenpak.open(server.url("tune.tnpk"), base=server.url("base.tnpk"), key=work / "signer.pub")
    assert art.base_digest == tenpak.open(work / "base.tnpk").digest
    ref = unpacked(work, tmp_path, work / "tune.tnpk", "--base", work / "base.tnpk")
    sd = art.load()
    assert set(sd) == set(ref)
    for name, t in ref.items():
        assert torch.equal(sd[name], t), name


def test_state_dict_loads_into_transformers(work):
    transformers = pytest.importorskip("transformers")
    art = tenpak.open(work / "base.tnpk")
    config = transformers.LlamaConfig(**{k: v for k, v in art.config.items() if k not in ("architectures", "torch_dtype")})
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    missing, unexpected = model.load_state_dict(art.load(), strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, art.load(names=["model.layers.0.self_attn.q_proj.weight"])["model.layers.0.self_attn.q_proj.weight"])
