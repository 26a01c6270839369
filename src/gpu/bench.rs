//! The `bench-gpu` harness (feature `bench-gpu`): every kernel checked against the CPU
//! decode on every element, timed against the card's copy bandwidth, and a synthetic
//! Llama-shaped model loaded into GPU memory from `.tnpk` and from bf16 safetensors.
#![allow(unsafe_code)] // typed views of device buffers; every block carries a SAFETY note

use std::time::Instant;

use serde::Serialize;
use tenpak_kernels::{CudaSlice, Gpu, OutType};

use super::imp::{
    alloc_out, decode_uploaded_into, ge, layout, load_pinned_with, load_with, out_type, upload,
    Layout,
};
use crate::codec;
use crate::dtype::DType;
use crate::{Error, Result};

/// The kernel layout of an encoding the harness made for a codec that has a kernel.
fn kernel_layout(enc: &[u8]) -> Result<Layout> {
    layout(enc)?.ok_or_else(|| Error::Gpu("this codec has no kernel (CPU then upload)".into()))
}

/// Settings of [`bench`].
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Rows × cols of the large timing matrix.
    pub rows: usize,
    /// Columns of the large timing matrix.
    pub cols: usize,
    /// Timed repetitions (median reported).
    pub reps: usize,
    /// Parameters of the synthetic model for the whole-artifact load comparison (0 = skip).
    pub model_params: usize,
    /// Scratch directory for the synthetic model.
    pub scratch: std::path::PathBuf,
}

/// One correctness check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was decoded.
    pub case: String,
    /// Output type.
    pub out: String,
    /// Max |gpu − cpu| / max |cpu|.
    pub max_rel_error: f64,
    /// Elements that differ bit-wise from the CPU decode.
    pub mismatched: usize,
    /// Elements checked (every output element).
    pub elements: usize,
}

/// One timed kernel.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// Kernel and case.
    pub case: String,
    /// Median milliseconds.
    pub ms: f64,
    /// Output bytes written / s.
    pub out_gb_s: f64,
    /// (output written + packed read) / s.
    pub moved_gb_s: f64,
    /// `moved_gb_s` / the copy bandwidth of the same run.
    pub fraction_of_copy: f64,
}

/// Whole-model load comparison.
#[derive(Debug, Clone, Serialize)]
pub struct LoadComparison {
    /// Weights in the model.
    pub params: usize,
    /// bf16 safetensors bytes.
    pub safetensors_bytes: u64,
    /// `.tnpk` bytes.
    pub tnpk_bytes: u64,
    /// Seconds: read + copy of the bf16 safetensors into GPU memory.
    pub safetensors_s: f64,
    /// Seconds: read + verify + copy + decode of the `.tnpk` into bf16 GPU buffers.
    pub tnpk_s: f64,
    /// Seconds for the `.tnpk` through pinned staging and overlapping streams.
    pub tnpk_pinned_s: f64,
    /// `safetensors_s / tnpk_s` (> 1: the artifact is faster).
    pub speedup: f64,
}

/// Everything `bench-gpu` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Card and NVRTC target.
    pub device: String,
    /// Device-to-device copy, bytes read + written per second (GB/s).
    pub copy_gb_s: f64,
    /// Kernel checks against the CPU decode.
    pub checks: Vec<Check>,
    /// Kernel timings.
    pub timings: Vec<Timing>,
    /// Whole-artifact load vs bf16 safetensors load.
    pub load: Option<LoadComparison>,
}

fn randn(n: usize, seed: u64) -> Vec<f32> {
    crate::synthetic::weights(n, seed, 0.05)
}

fn check_case(
    gpu: &Gpu,
    case: &str,
    spec: &codec::CodecSpec,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Result<Vec<Check>> {
    let w = randn(rows * cols, seed);
    let enc = spec.build()?.encode(&w, rows, cols, None)?;
    let cpu = codec::decode_vec(&enc)?;
    let mut out = vec![];
    for d in [DType::F32, DType::BF16, DType::F16] {
        let ty = out_type(d);
        // Pre-fill the output with 0xFF (NaN in every output type) so an element the
        // kernels never write shows up as a mismatch.
        let l = kernel_layout(&enc)?;
        let up = upload(gpu, &enc, &l)?;
        let mut dev = gpu
            .stream()
            .clone_htod(&vec![0xFFu8; cpu.len() * ty.size()])
            .map_err(ge)?;
        decode_uploaded_into(gpu, &up, &l, ty, &mut dev)?;
        let got: Vec<u8> = gpu.stream().clone_dtoh(&dev).map_err(ge)?;
        let want = d.encode(&cpu);
        let mut got_f = vec![0f32; cpu.len()];
        d.decode_into(&got, &mut got_f);
        let mut want_f = vec![0f32; cpu.len()];
        d.decode_into(&want, &mut want_f);
        let scale = want_f
            .iter()
            .fold(0f32, |a, v| a.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let max_err = got_f
            .iter()
            .zip(&want_f)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        let mismatched = got
            .chunks(d.size())
            .zip(want.chunks(d.size()))
            .filter(|(a, b)| a != b)
            .count();
        out.push(Check {
            case: case.to_string(),
            out: d.to_string(),
            max_rel_error: (max_err / scale) as f64,
            mismatched,
            elements: cpu.len(),
        });
    }
    Ok(out)
}

/// Runs every check and timing (see `tenpak bench-gpu --help`).
pub fn bench(opts: &BenchOptions) -> Result<BenchReport> {
    let gpu = std::sync::Arc::new(Gpu::new(0).map_err(ge)?);
    let mut checks = vec![];
    let with = |mut s: codec::CodecSpec, f: &dyn Fn(&mut codec::CodecSpec)| {
        f(&mut s);
        s
    };
    let cases: Vec<(String, codec::CodecSpec, usize, usize)> = vec![
        ("int4 g8 asym".into(), codec::CodecSpec::int4(8), 64, 512),
        (
            "int4 g32 asym".into(),
            codec::CodecSpec::int4(32),
            256,
            1024,
        ),
        (
            "int4 g64 sym".into(),
            with(codec::CodecSpec::int4(64), &|s| s.symmetric = true),
            256,
            1024,
        ),
        (
            "int4 g128 asym".into(),
            codec::CodecSpec::int4(128),
            512,
            2048,
        ),
        (
            "int4 g128 sym".into(),
            with(codec::CodecSpec::int4(128), &|s| s.symmetric = true),
            512,
            2048,
        ),
        (
            "int4 g256 asym".into(),
            codec::CodecSpec::int4(256),
            128,
            4096,
        ),
        (
            "int4 g4096 asym".into(),
            codec::CodecSpec::int4(4096),
            16,
            8192,
        ),
        (
            "int4 g128 ragged rows (cols 1000)".into(),
            codec::CodecSpec::int4(128),
            64,
            1000,
        ),
        (
            "int4 g33 odd groups".into(),
            codec::CodecSpec::int4(33),
            64,
            500,
        ),
        (
            "int4 g24 sym ragged".into(),
            with(codec::CodecSpec::int4(24), &|s| s.symmetric = true),
            32,
            250,
        ),
        (
            "int4_residual g16/16".into(),
            codec::CodecSpec::int4_residual(16, 16),
            256,
            1024,
        ),
        (
            "int4_residual g64/32".into(),
            codec::CodecSpec::int4_residual(64, 32),
            128,
            2048,
        ),
        (
            "int4_residual g16/16 ragged (cols 1000)".into(),
            codec::CodecSpec::int4_residual(16, 16),
            32,
            1000,
        ),
        (
            "int4 g128 + 1% fp16 outliers".into(),
            with(codec::CodecSpec::int4(128), &|s| s.outlier_fraction = 0.01),
            256,
            1024,
        ),
        (
            "int4_residual + 0.5% outliers".into(),
            with(codec::CodecSpec::int4_residual(16, 16), &|s| {
                s.outlier_fraction = 0.005
            }),
            128,
            1024,
        ),
    ];
    for (i, (name, spec, r, c)) in cases.iter().enumerate() {
        checks.extend(check_case(&gpu, name, spec, *r, *c, 100 + i as u64)?);
    }
    let copy = gpu.copy_bandwidth(1 << 30, opts.reps).map_err(ge)?;
    let mut timings = vec![];
    let (rows, cols) = (opts.rows, opts.cols);
    let w = randn(rows * cols, 7);
    for (name, spec) in [
        ("int4 g128 asym", codec::CodecSpec::int4(128)),
        ("int4 g32 asym", codec::CodecSpec::int4(32)),
        (
            "int4_residual g16/16",
            codec::CodecSpec::int4_residual(16, 16),
        ),
    ] {
        let enc = spec.build()?.encode(&w, rows, cols, None)?;
        let l = kernel_layout(&enc)?;
        let up = upload(&gpu, &enc, &l)?;
        for ty in [OutType::F32, OutType::Bf16] {
            let mut out = alloc_out(&gpu, rows * cols * ty.size())?;
            let ms = gpu
                .time_ms(opts.reps, || {
                    decode_uploaded_into(&gpu, &up, &l, ty, &mut out)
                        .map_err(|e| tenpak_kernels::Error::Launch(e.to_string()))
                })
                .map_err(ge)?;
            let out_bytes = (rows * cols * ty.size()) as f64;
            let moved = out_bytes + enc.len() as f64;
            timings.push(Timing {
                case: format!("{name} -> {} ({rows}x{cols})", ty.suffix()),
                ms,
                out_gb_s: out_bytes / ms / 1e6,
                moved_gb_s: moved / ms / 1e6,
                fraction_of_copy: (moved / (ms / 1e3)) / copy,
            });
        }
    }
    let load = if opts.model_params > 0 {
        Some(load_comparison(&gpu, opts)?)
    } else {
        None
    };
    Ok(BenchReport {
        device: gpu.describe(),
        copy_gb_s: copy / 1e9,
        checks,
        timings,
        load,
    })
}

/// Builds a synthetic Llama-shaped bf16 model of about `params` weights, packs it with the
/// default target, then loads both into GPU memory (bf16) from the page cache.
fn load_comparison(gpu: &std::sync::Arc<Gpu>, opts: &BenchOptions) -> Result<LoadComparison> {
    use crate::source::{HfDirWriter, HfModelDir, TensorMeta, TensorSource};
    let dir = opts.scratch.join("synthetic-bf16");
    let (h, ff) = (2048usize, 5632usize);
    let per_layer = 4 * h * h + 3 * h * ff;
    let layers = (opts.model_params / per_layer).max(1);
    let mut metas = vec![TensorMeta {
        name: "model.embed_tokens.weight".into(),
        shape: vec![32000, h],
        dtype: DType::BF16,
        stored_as: "bf16".into(),
    }];
    for l in 0..layers {
        for (n, s) in [
            ("self_attn.q_proj", [h, h]),
            ("self_attn.k_proj", [h, h]),
            ("self_attn.v_proj", [h, h]),
            ("self_attn.o_proj", [h, h]),
            ("mlp.gate_proj", [ff, h]),
            ("mlp.up_proj", [ff, h]),
            ("mlp.down_proj", [h, ff]),
        ] {
            metas.push(TensorMeta {
                name: format!("model.layers.{l}.{n}.weight"),
                shape: s.to_vec(),
                dtype: DType::BF16,
                stored_as: "bf16".into(),
            });
        }
    }
    let mut w = HfDirWriter::new(&dir, metas.clone(), u64::MAX)?;
    for (i, m) in metas.iter().enumerate() {
        w.write(&m.name, &randn(m.numel(), i as u64 + 1))?;
    }
    w.finish()?;
    let cfg = serde_json::json!({"model_type": "llama", "hidden_size": h, "num_attention_heads": 16,
        "num_hidden_layers": layers, "intermediate_size": ff, "vocab_size": 32000});
    std::fs::write(dir.join("config.json"), cfg.to_string())
        .map_err(|e| Error::io("write", dir.join("config.json"), e))?;
    let src = HfModelDir::open(&dir)?;
    let tnpk = opts.scratch.join("synthetic.tnpk");
    crate::artifact::pack::pack(&src, &tnpk, &Default::default(), &[], &[], &|_| {})?;
    let st_path = dir.join("model.safetensors");
    let st_bytes = std::fs::metadata(&st_path)
        .map_err(|e| Error::io("stat", &st_path, e))?
        .len();
    let tn_bytes = std::fs::metadata(&tnpk)
        .map_err(|e| Error::io("stat", &tnpk, e))?
        .len();
    // Warm the page cache for both, so both loads read from memory.
    for p in [&st_path, &tnpk] {
        let _ = std::fs::read(p);
    }
    let s = gpu.stream();
    // Alternate the two loads and keep medians: host-side timings on a shared machine vary.
    let reps = 5;
    let (mut st_times, mut tn_times, mut pin_times) = (vec![], vec![], vec![]);
    let mut loaded = None;
    for _ in 0..reps {
        // bf16 safetensors: read each tensor, copy into its GPU buffer.
        let t0 = Instant::now();
        let mut keep: Vec<CudaSlice<u8>> = vec![];
        for m in src.tensors() {
            let raw = src.raw(&m.name)?;
            keep.push(s.clone_htod(raw).map_err(ge)?);
        }
        gpu.sync().map_err(ge)?;
        st_times.push(t0.elapsed().as_secs_f64());
        drop(keep);
        // .tnpk: open, fetch + verify (prefetching, parallel sha256), copy, decode to bf16.
        drop(loaded.take()); // free the previous load first
        let t0 = Instant::now();
        let art = crate::artifact::Artifact::open_location(&tnpk.display().to_string())?;
        loaded = Some(load_with(
            gpu,
            &art,
            &crate::artifact::Selection::default(),
            DType::BF16,
        )?);
        tn_times.push(t0.elapsed().as_secs_f64());
        // .tnpk through pinned staging and overlapping copy/decode streams.
        drop(loaded.take());
        let t0 = Instant::now();
        let art = crate::artifact::Artifact::open_location(&tnpk.display().to_string())?;
        loaded = Some(load_pinned_with(
            gpu,
            &art,
            &crate::artifact::Selection::default(),
            DType::BF16,
        )?);
        pin_times.push(t0.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (safetensors_s, tnpk_s, pinned_s) = (
        median(&mut st_times),
        median(&mut tn_times),
        median(&mut pin_times),
    );
    eprintln!("load times (s): safetensors {st_times:?}, tnpk direct {tn_times:?}, tnpk pinned+streams {pin_times:?}");
    let loaded = loaded.ok_or_else(|| Error::Gpu("no load ran".into()))?;
    let art = crate::artifact::Artifact::open_location(&tnpk.display().to_string())?;
    // The loaded buffers equal the CPU decode, bit for bit (two tensors spot-checked).
    for name in [
        "model.layers.0.mlp.down_proj.weight",
        "model.embed_tokens.weight",
    ] {
        let got = loaded.to_host(name)?;
        let want = DType::BF16.encode(&art.load_tensor(name)?);
        if got != want {
            return Err(Error::Gpu(format!(
                "{name}: GPU load differs from the CPU decode"
            )));
        }
    }
    Ok(LoadComparison {
        tnpk_pinned_s: pinned_s,
        params: src.tensors().iter().map(|m| m.numel()).sum(),
        safetensors_bytes: st_bytes,
        tnpk_bytes: tn_bytes,
        safetensors_s,
        tnpk_s,
        speedup: safetensors_s / tnpk_s,
    })
}
