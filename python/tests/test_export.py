"""`tenpak export --to compressed-tensors` read by its consumers, not by our readers: the
`compressed-tensors` library's own decompression (the code vLLM and llm-compressor share)
and transformers' `from_pretrained`, against our decode (the Python package's f32 load,
itself checked against `tenpak unpack`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tenpak
from conftest import run, write_model

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationScheme  # noqa: E402


def library_decompress(out: Path):
    """Every tensor of the export as the library sees it: packed Linears decompressed by
    `PackedQuantizationCompressor.decompress` with the scheme of their config group."""
    config = json.loads((out / "config.json").read_text())
    qc = config.get("quantization_config")
    assert qc is None or (qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized")
    scheme_of = {}
    for group in (qc or {"config_groups": {}})["config_groups"].values():
        scheme = QuantizationScheme.model_validate(group)
        for target in group["targets"]:
            scheme_of[target] = scheme
    sd = {}
    for f in sorted(out.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    result = {}
    for name in list(sd):
        if name.endswith(".weight_packed"):
            module = name[: -len(".weight_packed")]
            local = {k[len(module) + 1 :]: v for k, v in sd.items() if k.startswith(module + ".weight_")}
            result[module + ".weight"] = PackedQuantizationCompressor.decompress(local, scheme_of[module])["weight"]
        elif not any(name.endswith(s) for s in (".weight_scale", ".weight_shape", ".weight_zero_point")):
            result[name] = sd[name]
    return result, qc


def export(tnpk: Path, out: Path, *extra):
    r = run("export", tnpk, "--to", "compressed-tensors", "-o", out, "--report", str(out) + ".json", *extra)
    return r.stdout, json.loads(Path(str(out) + ".json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ct")
    write_model(d / "model", seed=3)
    for args, name in [
        (["--codec", "int4", "--group-size", "64", "--symmetric"], "sym"),
        (["--codec", "int4", "--group-size", "128"], "asym"),
        (["--codec", "int4_residual", "--group-size", "128"], "residual"),
    ]:
        run("pack", d / "model", "-o", d / f"{name}.tnpk", *args)
    return d


def test_symmetric_int4_is_exact_for_the_library(tiny):
    out = tiny / "sym-ct"
    stdout, rep = export(tiny / "sym.tnpk", out)
    ours = tenpak.open(tiny / "sym.tnpk").load(dtype=torch.float32)
    theirs, qc = library_decompress(out)
    assert set(theirs) == set(ours)
    packed = [t for t in rep["tensors"] if t["ty"].startswith("int4")]
    assert len(packed) == 28 and all(t["exact"] for t in packed)
    for name, t in ours.items():
        got = theirs[name]
        if name.endswith("_proj.weight"):
            # The library dequantizes in the scale's dtype (f32): exactly our decode.
            assert got.dtype == torch.float32
            assert torch.equal(got, t), name
        else:
            assert torch.equal(got.float(), t), name
    assert qc["ignore"] == ["lm_head"]
    (group,) = qc["config_groups"].values()
    assert group["weights"]["group_size"] == 64 and group["weights"]["symmetric"] is True
    assert "exact" in stdout and "compressed-tensors" in stdout


def test_asymmetric_int4_gets_integer_zero_points_with_its_error_reported(tiny):
    out = tiny / "asym-ct"
    _, rep = export(tiny / "asym.tnpk", out)
    original = load_file(str(tiny / "model" / "model.safetensors"))
    ours = tenpak.open(tiny / "asym.tnpk").load(dtype=torch.float32)
    theirs, qc = library_decompress(out)
    (group,) = qc["config_groups"].values()
    assert group["weights"]["symmetric"] is False and group["weights"]["group_size"] == 128
    by_name = {t["name"]: t for t in rep["tensors"]}
    for name, t in ours.items():
        if not name.endswith("_proj.weight"):
            continue
        r = by_name[name]
        assert not r["exact"] and r["ty"] == "int4 g128 asym"
        diff = (theirs[name] - t).abs().max().item()
        # The report's figure is what the library gives.
        assert abs(diff - r["max_abs_error"]) <= 1e-6 * max(1.0, diff), (name, diff, r["max_abs_error"])
        rel = ((theirs[name] - t).norm() / t.norm()).item()
        assert abs(rel - r["rel_rms_error"]) < 1e-4
        # An fp16 offset moved onto an integer zero point shifts a group by up to half a
        # step: the added error is about int4's own (measured against the original).
        own = ((t - original[name].float()).norm() / original[name].float().norm()).item()
        assert rel <= 1.1 * own, (name, rel, own)


def test_other_codecs_fall_back_as_asked(tiny):
    # dense: the decode rounded to the model's bf16 (what `tenpak unpack` writes).
    for fallback, ty, tol in [("int8", "int8 g128 sym", 0.01), ("int4", "int4 g128 sym", 0.15), ("dense", "bf16", 0.002)]:
        out = tiny / f"res-{fallback}"
        _, rep = export(tiny / "residual.tnpk", out, "--fallback", fallback)
        ours = tenpak.open(tiny / "residual.tnpk").load(dtype=torch.float32)
        theirs, qc = library_decompress(out)
        for r in rep["tensors"]:
            if r["name"].endswith("_proj.weight"):
                assert r["ty"] == ty, r
                rel = ((theirs[r["name"]].float() - ours[r["name"]]).norm() / ours[r["name"]].norm()).item()
                assert rel <= tol + 1e-3 and abs(rel - r["rel_rms_error"]) < 1e-3, (fallback, r, rel)
        if fallback == "dense":
            # Nothing packed: a plain dense model.
            assert qc is None


def test_transformers_loads_the_export(tiny):
    transformers = pytest.importorskip("transformers")
    out = tiny / "sym-ct"
    if not out.exists():
        export(tiny / "sym.tnpk", out)
    # dequantize=True: transformers decompresses the Linears (the library's code) as it loads them.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(out),
        dtype=torch.float32,
        quantization_config=transformers.CompressedTensorsConfig(dequantize=True),
    )
    ours = tenpak.open(tiny / "sym.tnpk").load(dtype=torch.float32)
    sd = model.state_dict()
    for name, t in ours.items():
        assert torch.equal(sd[name].float(), t), name
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(model(ids).logits).all()


def test_bad_requests(tiny, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    r = run("export", tiny / "sym.tnpk", "--to", "compressed-tensors", "-o", busy, check=False)
    assert r.returncode != 0 and "not empty" in r.stderr
    assert (busy / "keep.txt").read_text() == "mine"
    r = run("export", tiny / "sym.tnpk", "--to", "compressed-tensors", "-o", tmp_path / "x", "--fallback", "q8_0", check=False)
    assert r.returncode != 0 and "int8, int4, dense" in r.stderr
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".x.partial*"))


def fixtures():
    d = Path(os.environ.get("TENPAK_FIXTURES", Path.home() / ".cache/tenpak-fixtures"))
    need = [d / "models/SmolLM2-135M-Instruct.Q4_1.gguf", d / "models/gemma-3-270m-q4_k_m.gguf"]
    if not all(p.exists() for p in need):
        if os.environ.get("CI") == "true":
            pytest.fail(f"fixtures missing under {d} (scripts/fixtures.sh)")
        pytest.skip("fixture models absent (scripts/fixtures.sh)")
    return need


@pytest.mark.parametrize("which,group", [(0, 64), (1, 128)], ids=["SmolLM2-135M", "Gemma-3-270M"])
def test_fixture_models_export_exactly(tmp_path, which, group):
    gguf = fixtures()[which]
    tnpk = tmp_path / "m.tnpk"
    run("pack", gguf, "-o", tnpk, "--codec", "int4", "--group-size", str(group), "--symmetric")
    out = tmp_path / "ct"
    stdout, rep = export(tnpk, out)
    ours = tenpak.open(tnpk).load(dtype=torch.float32)
    theirs, qc = library_decompress(out)
    assert set(theirs) == set(ours)
    worst = 0.0
    for name, t in ours.items():
        got = theirs[name].float()
        if name.endswith("_proj.weight"):
            worst = max(worst, (got - t).abs().max().item())
    assert worst == 0.0
    packed = [t for t in rep["tensors"] if t["ty"].startswith("int4")]
    assert packed and all(t["exact"] for t in packed)
    assert (out / "tokenizer.json").exists()
    print(f"\n{gguf.name}: {len(packed)} Linears int4 g{group} sym, max abs diff library vs tenpak {worst}; {stdout.strip()}")


def test_a_delta_exports_the_finetune_dense(work, tmp_path):
    out = tmp_path / "ft-ct"
    stdout, rep = export(work / "tune.tnpk", out, "--base", work / "base.tnpk")
    assert all(t["exact"] for t in rep["tensors"])
    theirs, qc = library_decompress(out)
    assert qc is None
    ours = tenpak.open(work / "tune.tnpk", base=work / "base.tnpk").load()
    assert set(theirs) == set(ours)
    for name, t in ours.items():
        assert theirs[name].dtype == t.dtype and torch.equal(theirs[name], t), name


@pytest.mark.parametrize(
    "which,pack",
    [(0, ["--gguf-dtype", "f32", "--codec", "int4", "--group-size", "32"]), (1, ["--codec", "int4", "--group-size", "64"])],
    ids=["SmolLM2-135M", "Gemma-3-270M"],
)
def test_fixture_gguf_export_gives_transformers_the_tnpk_ppl(tmp_path, which, pack):
    """The GGUF export loaded by transformers' GGUF loader (`gguf_file=`) scores the same
    windows as `tenpak eval` on the .tnpk within 0.1% (bench/tools/reference_ppl.py: the
    same window rule, f32)."""
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    model = fixtures()[which]
    text = model.parent.parent / "text/emma.txt"
    tnpk, out = tmp_path / "m.tnpk", tmp_path / "m.gguf"
    run("pack", model, "-o", tnpk, *pack)
    run("export", tnpk, "--to", "gguf", "-o", out)
    ours = json.loads(run("eval", tnpk, "--text", text, "--max-tokens", "1024", "--json").stdout)["ppl"]
    script = Path(__file__).resolve().parents[2] / "bench/tools/reference_ppl.py"
    r = subprocess.run(
        [sys.executable, str(script), str(out), str(text), "--max-tokens", "1024"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = json.loads(r.stdout.strip().splitlines()[-1])["ppl"]
    print(f"\n{model.name}: tenpak eval {ours:.4f}, transformers on the GGUF export {theirs:.4f} ({(theirs / ours - 1) * 100:+.4f}%)")
    assert abs(theirs / ours - 1) < 1e-3, (ours, theirs)
