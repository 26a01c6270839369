//! The CUDA implementation of [`super`]: encodings uploaded as they are stored, decoded
//! by the `tenpak-kernels` kernels, checked against the CPU decode, and timed.
#![allow(unsafe_code)] // typed views of device buffers; every block carries a SAFETY note

use std::time::Instant;

use tenpak_kernels::{CudaSlice, CudaView, Gpu, OutType, StageGeometry};

use super::{BenchOptions, BenchReport, Check, LoadComparison, Timing};
use crate::codec::group::Stage;
use crate::codec::{self, CodecId, Header, HEADER_LEN};
use crate::dtype::DType;
use crate::{Error, Result};

fn ge(e: impl std::fmt::Display) -> Error {
    Error::Gpu(e.to_string())
}

/// Where a stage's arrays sit inside an encoding (byte offsets from its start).
#[derive(Debug, Clone, Copy)]
struct StageAt {
    geo: StageGeometry,
    scales: usize,
    offsets: usize,
    codes: usize,
    groups: usize,
    code_len: usize,
}

fn stage_at(st: Stage, rows: usize, cols: usize, at: usize) -> StageAt {
    let groups = rows * st.groups_per_row(cols);
    let sc = if st.symmetric { 2 } else { 4 };
    StageAt {
        geo: StageGeometry {
            rows,
            cols,
            group: st.group,
            bits: st.bits,
            symmetric: st.symmetric,
        },
        scales: at,
        offsets: at + 2 * groups,
        codes: at + sc * groups,
        groups,
        code_len: rows * st.code_bytes_per_row(cols),
    }
}

/// The parsed layout of an encoding (validated by the CPU decoder's rules first).
struct Layout {
    stages: Vec<StageAt>,
    outliers: Option<(Vec<u32>, Vec<u16>)>,
    numel: usize,
}

fn layout(bytes: &[u8]) -> Result<Layout> {
    // The CPU decoder validates everything (lengths, indices); run it on a header-sized
    // dry check by decoding the header and stage lengths the same way.
    let h = Header::parse(bytes)?;
    let (base_start, outliers) = if h.id == CodecId::Outliers {
        let extra = bytes
            .get(HEADER_LEN..HEADER_LEN + 12)
            .ok_or_else(|| Error::CorruptEncoding("outlier header".into()))?;
        let count = u32::from_le_bytes([extra[0], extra[1], extra[2], extra[3]]) as usize;
        let base_len = u64::from_le_bytes(
            extra[4..12]
                .try_into()
                .map_err(|_| Error::CorruptEncoding("len".into()))?,
        ) as usize;
        let start = HEADER_LEN + 12;
        let tail = bytes
            .get(start + base_len..)
            .filter(|t| t.len() == count * 6)
            .ok_or_else(|| Error::CorruptEncoding("outlier arrays".into()))?;
        let idx: Vec<u32> = tail[..count * 4]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if idx.iter().any(|&i| i as usize >= h.numel()) {
            return Err(Error::CorruptEncoding("outlier index out of range".into()));
        }
        let val: Vec<u16> = tail[count * 4..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        (start, Some((idx, val)))
    } else {
        (0, None)
    };
    let bh = Header::parse(&bytes[base_start..])?;
    let (rows, cols) = (bh.rows as usize, bh.cols as usize);
    let st = |g: u16, bits: u32, sym: bool| Stage {
        bits,
        group: g as usize,
        symmetric: sym,
        refine_iters: 0,
    };
    let mut stages = vec![stage_at(
        st(bh.group, 4, bh.symmetric),
        rows,
        cols,
        base_start + HEADER_LEN,
    )];
    if bh.id == CodecId::Int4Residual {
        let first = stages[0];
        let at = first.codes + first.code_len;
        stages.push(stage_at(st(bh.group2, 2, false), rows, cols, at));
    }
    let last = stages[stages.len() - 1];
    let end = last.codes + last.code_len;
    let base_end = match &outliers {
        Some(_) => {
            base_start
                + u64::from_le_bytes(
                    bytes[HEADER_LEN + 4..HEADER_LEN + 12]
                        .try_into()
                        .map_err(|_| Error::CorruptEncoding("len".into()))?,
                ) as usize
        }
        None => bytes.len(),
    };
    if end != base_end {
        return Err(Error::CorruptEncoding(format!(
            "stages end at {end}, encoding at {base_end}"
        )));
    }
    Ok(Layout {
        stages,
        outliers,
        numel: rows * cols,
    })
}

/// A device copy of an encoding, placed so that code arrays are 4-byte aligned.
struct Uploaded {
    buf: CudaSlice<u8>,
    pad: usize,
}

fn upload(gpu: &Gpu, bytes: &[u8], l: &Layout) -> Result<Uploaded> {
    let pad = (16 - l.stages[0].codes % 16) % 16;
    let mut buf = alloc_out(gpu, pad + bytes.len())?;
    gpu.stream()
        .memcpy_htod(bytes, &mut buf.slice_mut(pad..))
        .map_err(ge)?;
    Ok(Uploaded { buf, pad })
}

fn u16_view<'a>(u: &'a Uploaded, at: usize, n: usize) -> Result<CudaView<'a, u16>> {
    let v = u.buf.slice(u.pad + at..u.pad + at + 2 * n.max(1));
    // SAFETY: `at + pad` is even (every array offset in the format is even and `pad` is a
    // multiple of 16) and the range holds 2·n bytes, so the u16 view is aligned and in bounds.
    unsafe { v.transmute::<u16>(n.max(1)) }.ok_or_else(|| Error::Gpu("u16 view".into()))
}

/// An output buffer the decode will overwrite entirely.
fn alloc_out(gpu: &Gpu, bytes: usize) -> Result<CudaSlice<u8>> {
    // SAFETY: uninitialised device memory; every decode path writes every element before
    // anything reads it (the checks in `bench` prove it by pre-filling with NaN patterns).
    unsafe { gpu.stream().alloc::<u8>(bytes.max(1)) }.map_err(ge)
}

fn decode_uploaded(gpu: &Gpu, up: &Uploaded, l: &Layout, ty: OutType) -> Result<CudaSlice<u8>> {
    let mut out = alloc_out(gpu, l.numel * ty.size())?;
    decode_uploaded_into(gpu, up, l, ty, &mut out)?;
    Ok(out)
}

fn decode_uploaded_into(
    gpu: &Gpu,
    up: &Uploaded,
    l: &Layout,
    ty: OutType,
    out: &mut CudaSlice<u8>,
) -> Result<()> {
    let s = gpu.stream();
    let codes = |st: &StageAt| {
        up.buf
            .slice(up.pad + st.codes..up.pad + st.codes + st.code_len)
    };
    let flat = l.stages.iter().all(|st| st.geo.is_flat());
    match (l.stages.as_slice(), flat) {
        ([a], true) => {
            let off = if a.geo.symmetric {
                u16_view(up, a.scales, 1)?
            } else {
                u16_view(up, a.offsets, a.groups)?
            };
            gpu.int4_flat(
                &a.geo,
                &codes(a),
                &u16_view(up, a.scales, a.groups)?,
                &off,
                &mut out.slice_mut(..),
                ty,
            )
            .map_err(ge)?;
        }
        ([a, b], true) => {
            gpu.int4_residual_flat(
                &a.geo,
                &codes(a),
                &u16_view(up, a.scales, a.groups)?,
                &u16_view(up, a.offsets, a.groups)?,
                &b.geo,
                &codes(b),
                &u16_view(up, b.scales, b.groups)?,
                &u16_view(up, b.offsets, b.groups)?,
                &mut out.slice_mut(..),
                ty,
            )
            .map_err(ge)?;
        }
        (stages, _) => {
            // Any geometry: stage by stage into f32, then convert.
            let mut f = s.alloc_zeros::<f32>(l.numel).map_err(ge)?;
            for (k, st) in stages.iter().enumerate() {
                let off = if st.geo.symmetric {
                    u16_view(up, st.scales, 1)?
                } else {
                    u16_view(up, st.offsets, st.groups)?
                };
                gpu.stage_generic(
                    &st.geo,
                    &codes(st),
                    &u16_view(up, st.scales, st.groups)?,
                    &off,
                    &mut f.slice_mut(..),
                    k > 0,
                )
                .map_err(ge)?;
            }
            if ty == OutType::F32 {
                // SAFETY: an f32 buffer of numel elements viewed as its 4·numel bytes.
                let fb = unsafe { f.transmute::<u8>(l.numel * 4) }
                    .ok_or_else(|| Error::Gpu("view".into()))?;
                s.memcpy_dtod(&fb, out).map_err(ge)?;
            } else {
                gpu.convert(&f.slice(..), &mut out.slice_mut(..), ty)
                    .map_err(ge)?;
            }
        }
    }
    if let Some((idx, val)) = &l.outliers {
        let di = s.clone_htod(idx).map_err(ge)?;
        let dv = s.clone_htod(val).map_err(ge)?;
        gpu.scatter(
            &di.slice(..),
            &dv.slice(..),
            &mut out.slice_mut(..),
            ty,
            l.numel,
        )
        .map_err(ge)?;
    }
    Ok(())
}

fn out_type(d: DType) -> OutType {
    match d {
        DType::F32 => OutType::F32,
        DType::BF16 => OutType::Bf16,
        DType::F16 => OutType::F16,
    }
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
        let l = layout(&enc)?;
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
        let l = layout(&enc)?;
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

/// Tensors decoded into GPU memory.
pub struct GpuTensors {
    gpu: std::sync::Arc<Gpu>,
    tensors: Vec<(String, Vec<usize>, CudaSlice<u8>)>,
    dtype: DType,
}

impl GpuTensors {
    /// Names, in load order.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.0.as_str()).collect()
    }
    /// Shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors
            .iter()
            .find(|t| t.0 == name)
            .map(|t| t.1.as_slice())
    }
    /// Element type of every buffer.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The device buffer of a tensor (little-endian elements of [`GpuTensors::dtype`]).
    pub fn buffer(&self, name: &str) -> Option<&CudaSlice<u8>> {
        self.tensors.iter().find(|t| t.0 == name).map(|t| &t.2)
    }
    /// The device the buffers live on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    /// Copies a tensor back to the host (tests, checks).
    pub fn to_host(&self, name: &str) -> Result<Vec<u8>> {
        let b = self.buffer(name).ok_or_else(|| Error::TensorNotFound {
            name: name.to_string(),
        })?;
        self.gpu.stream().clone_dtoh(b).map_err(ge)
    }
}

/// Loads the selected tensors of `art` into GPU 0 as `dtype`: chunks are read (file or
/// HTTP ranges) and sha256-verified by the artifact reader, which prefetches the next
/// batch on another thread while this one is copied to the GPU and decoded there.
///
/// Copies go from the reader's buffers directly (the driver stages pageable memory);
/// [`load_artifact_pinned`] stages through pinned buffers with overlapping copy and
/// decode streams. On the H200 both beat the bf16 safetensors load, the direct path by a
/// little more (bench/results/gpu_decode_h200.md), so it is the default.
pub fn load_artifact(
    art: &crate::artifact::Artifact,
    sel: &crate::artifact::Selection,
    dtype: DType,
) -> Result<GpuTensors> {
    load_with(
        &std::sync::Arc::new(Gpu::new(0).map_err(ge)?),
        art,
        sel,
        dtype,
    )
}

/// What a tensor needs on the GPU: the bytes to send (raw values already in `dtype`, or the
/// encoding) and, for encodings, their layout (checked against the tensor's shape).
fn prepare<'a>(
    t: &crate::artifact::format::TensorEntry,
    bytes: &'a [u8],
    dtype: DType,
) -> Result<(std::borrow::Cow<'a, [u8]>, Option<Layout>)> {
    use crate::artifact::Encoding;
    let n = t.numel() as usize;
    match t.encoding {
        Encoding::Raw if t.dtype == dtype => Ok((std::borrow::Cow::Borrowed(bytes), None)),
        Encoding::Raw => {
            let mut f = vec![0f32; n];
            t.dtype.decode_into(bytes, &mut f);
            Ok((std::borrow::Cow::Owned(dtype.encode(&f)), None))
        }
        // Codecs without a kernel (AWQ-scaled, int3/int2, VQ, low rank) decode on the CPU
        // and travel as values.
        Encoding::Composite { .. } => {
            let mut f = vec![0f32; n];
            codec::decode(bytes, &mut f)?;
            Ok((std::borrow::Cow::Owned(dtype.encode(&f)), None))
        }
        Encoding::Unknown => Err(Error::InvalidCodec(format!(
            "tensor {} uses an unknown codec",
            t.name
        ))),
        _ => {
            let l = layout(bytes)?;
            if l.numel != n {
                return Err(Error::CorruptEncoding(format!(
                    "tensor {}: encoding holds {} weights",
                    t.name, l.numel
                )));
            }
            Ok((std::borrow::Cow::Borrowed(bytes), Some(l)))
        }
    }
}

fn load_with(
    gpu: &std::sync::Arc<Gpu>,
    art: &crate::artifact::Artifact,
    sel: &crate::artifact::Selection,
    dtype: DType,
) -> Result<GpuTensors> {
    let s = gpu.stream();
    let ty = out_type(dtype);
    let chosen = art.select(sel);
    let mut tensors = Vec::with_capacity(chosen.len());
    art.for_each_encoded(&chosen, |t, bytes| {
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let out = match prepare(t, &bytes, dtype)? {
            (payload, None) => s.clone_htod(&payload[..]).map_err(ge)?,
            (payload, Some(l)) => decode_uploaded(gpu, &upload(gpu, &payload, &l)?, &l, ty)?,
        };
        tensors.push((t.name.clone(), shape, out));
        Ok(())
    })?;
    gpu.sync().map_err(ge)?;
    Ok(GpuTensors {
        gpu: gpu.clone(),
        tensors,
        dtype,
    })
}

/// Bytes per pinned staging buffer in [`load_artifact_pinned`].
pub const STAGE_BYTES: usize = 8 << 20;

/// [`load_artifact`] with explicit staging: two pinned host buffers of [`STAGE_BYTES`],
/// a copy stream that moves each piece to the GPU asynchronously while the CPU fills the
/// other buffer, and the compute stream that decodes a tensor as soon as its last piece
/// has arrived (it waits on the copy stream's event), so copies and decodes overlap.
pub fn load_artifact_pinned(
    art: &crate::artifact::Artifact,
    sel: &crate::artifact::Selection,
    dtype: DType,
) -> Result<GpuTensors> {
    load_pinned_with(
        &std::sync::Arc::new(Gpu::new(0).map_err(ge)?),
        art,
        sel,
        dtype,
    )
}

fn load_pinned_with(
    gpu: &std::sync::Arc<Gpu>,
    art: &crate::artifact::Artifact,
    sel: &crate::artifact::Selection,
    dtype: DType,
) -> Result<GpuTensors> {
    use tenpak_kernels::cudarc::driver::{result, DevicePtrMut};
    let compute = gpu.stream().clone();
    let copy = gpu.context().new_stream().map_err(ge)?;
    let ty = out_type(dtype);
    // SAFETY: the CPU writes each staging buffer before any copy reads it.
    let mut pinned = [
        unsafe { gpu.context().alloc_pinned::<u8>(STAGE_BYTES) }.map_err(ge)?,
        unsafe { gpu.context().alloc_pinned::<u8>(STAGE_BYTES) }.map_err(ge)?,
    ];
    let mut copied: [Option<tenpak_kernels::cudarc::driver::CudaEvent>; 2] = [None, None];
    let mut slot = 0usize;
    let chosen = art.select(sel);
    let mut tensors = Vec::with_capacity(chosen.len());
    art.for_each_encoded(&chosen, |t, bytes| {
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let (payload, l) = prepare(t, &bytes, dtype)?;
        let pad = l.as_ref().map_or(0, |l| (16 - l.stages[0].codes % 16) % 16);
        let mut dev = alloc_out(gpu, pad + payload.len())?;
        // The allocation is ordered on the compute stream; the copy stream starts after it.
        let allocated = compute.record_event(None).map_err(ge)?;
        copy.wait(&allocated).map_err(ge)?;
        for (i, piece) in payload.chunks(STAGE_BYTES).enumerate() {
            if let Some(ev) = copied[slot].take() {
                ev.synchronize().map_err(ge)?; // the last copy out of this buffer is done
            }
            let host = pinned[slot].as_mut_slice().map_err(ge)?;
            host[..piece.len()].copy_from_slice(piece);
            let (dptr, guard) = dev.device_ptr_mut(&copy);
            // SAFETY: the destination range [pad + i·STAGE, + len) lies inside `dev`
            // (pad + payload.len() bytes); the source is page-locked memory that is not
            // written again until the event recorded below has completed.
            unsafe {
                result::memcpy_htod_async(
                    dptr + (pad + i * STAGE_BYTES) as u64,
                    &host[..piece.len()],
                    copy.cu_stream(),
                )
            }
            .map_err(ge)?;
            drop(guard);
            copied[slot] = Some(copy.record_event(None).map_err(ge)?);
            slot ^= 1;
        }
        let arrived = copy.record_event(None).map_err(ge)?;
        compute.wait(&arrived).map_err(ge)?;
        let out = match l {
            None => dev,
            Some(l) => decode_uploaded(gpu, &Uploaded { buf: dev, pad }, &l, ty)?,
        };
        tensors.push((t.name.clone(), shape, out));
        Ok(())
    })?;
    gpu.sync().map_err(ge)?;
    copy.synchronize().map_err(ge)?;
    Ok(GpuTensors {
        gpu: gpu.clone(),
        tensors,
        dtype,
    })
}
