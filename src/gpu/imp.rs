//! The CUDA implementation of [`super`]: encodings uploaded as they are stored, decoded
//! by the `tenpak-kernels` kernels, checked against the CPU decode, and timed.
#![allow(unsafe_code)] // typed views of device buffers; every block carries a SAFETY note

use tenpak_kernels::{CudaSlice, CudaView, Gpu, OutType, StageGeometry};

use crate::codec::group::Stage;
use crate::codec::spec::GpuDecode;
use crate::codec::table;
use crate::codec::{self, Header, HEADER_LEN};
use crate::dtype::DType;
use crate::error::Corruption;
use crate::{Error, Result};

pub(super) fn ge(e: impl std::fmt::Display) -> Error {
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

/// The parsed layout of an encoding whose codec has a kernel (validated by the CPU
/// decoder's rules: the same header and outlier parsing).
pub(super) struct Layout {
    stages: Vec<StageAt>,
    outliers: Option<(Vec<u32>, Vec<u16>)>,
    numel: usize,
}

/// The layout for the GPU kernels, or `None` where the codec table says the encoding is
/// decoded on the CPU and uploaded as values.
pub(super) fn layout(bytes: &[u8]) -> Result<Option<Layout>> {
    layout_of(bytes, false)
}

/// [`layout`], and with `int2` also 2-bit grouped encodings (read by the generic stage
/// kernel; the flat kernels are 4-bit only), as a delta's difference is added.
fn layout_of(bytes: &[u8], int2: bool) -> Result<Option<Layout>> {
    let h = Header::parse(bytes)?;
    let row = table::row(h.id)
        .ok_or_else(|| Error::corrupt("unknown", Corruption::UnknownCodecId { id: h.id.0 }))?;
    let two_bit = int2 && h.id == codec::int4::ID_N && h.group2 == 2;
    // The grouped encoding the kernels read (the header itself, or an outlier wrapper's
    // base, whose header `parts` has already parsed once).
    let (bh, base_start, base_end, outliers) = match row.gpu {
        _ if two_bit => (h, 0, bytes.len(), None),
        GpuDecode::CpuThenUpload => return Ok(None),
        GpuDecode::GroupedInt => (h, 0, bytes.len(), None),
        GpuDecode::Outliers => {
            let p = codec::outliers::parts(&h, bytes)?;
            let inner = Header::parse(p.base)?;
            if table::row(inner.id).map(|r| r.gpu) != Some(GpuDecode::GroupedInt) {
                return Ok(None);
            }
            (
                inner,
                p.base_start,
                p.base_start + p.base.len(),
                Some((p.indices, p.values)),
            )
        }
    };
    let (rows, cols) = (bh.rows as usize, bh.cols as usize);
    let st = |g: u16, bits: u32, sym: bool| Stage {
        bits,
        group: g as usize,
        symmetric: sym,
        refine_iters: 0,
    };
    let bits = if two_bit { 2 } else { 4 };
    let mut stages = vec![stage_at(
        st(bh.group, bits, bh.symmetric),
        rows,
        cols,
        base_start + HEADER_LEN,
    )];
    if bh.id == codec::int4_residual::ID {
        let first = stages[0];
        let at = first.codes + first.code_len;
        stages.push(stage_at(st(bh.group2, 2, false), rows, cols, at));
    }
    let last = stages[stages.len() - 1];
    let end = last.codes + last.code_len;
    if end != base_end {
        return Err(Error::corrupt(
            table::row(bh.id).map_or("unknown", |r| r.name),
            Corruption::Length {
                what: "bytes",
                expected: (end - base_start) as u64,
                actual: (base_end - base_start) as u64,
            },
        ));
    }
    Ok(Some(Layout {
        stages,
        outliers,
        numel: rows * cols,
    }))
}

/// A device copy of an encoding, placed so that code arrays are 4-byte aligned.
pub(super) struct Uploaded {
    buf: CudaSlice<u8>,
    pad: usize,
}

pub(super) fn upload(gpu: &Gpu, bytes: &[u8], l: &Layout) -> Result<Uploaded> {
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
pub(super) fn alloc_out(gpu: &Gpu, bytes: usize) -> Result<CudaSlice<u8>> {
    // SAFETY: uninitialised device memory; every decode path writes every element before
    // anything reads it (the checks in `bench` prove it by pre-filling with NaN patterns).
    unsafe { gpu.stream().alloc::<u8>(bytes.max(1)) }.map_err(ge)
}

pub(super) fn decode_uploaded(
    gpu: &Gpu,
    up: &Uploaded,
    l: &Layout,
    ty: OutType,
) -> Result<CudaSlice<u8>> {
    let mut out = alloc_out(gpu, l.numel * ty.size())?;
    decode_uploaded_into(gpu, up, l, ty, &mut out)?;
    Ok(out)
}

pub(super) fn decode_uploaded_into(
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
    let flat = l
        .stages
        .iter()
        .enumerate()
        .all(|(k, st)| st.geo.is_flat() && st.geo.bits == if k == 0 { 4 } else { 2 });
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

pub(super) fn out_type(d: DType) -> OutType {
    match d {
        DType::F32 => OutType::F32,
        DType::BF16 => OutType::Bf16,
        DType::F16 => OutType::F16,
    }
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
    /// The raw device address of a tensor's buffer (on GPU 0, in the primary context),
    /// for handing the memory to another runtime (DLPack) while `self` stays alive. The
    /// load has synchronized its stream, so the data is complete.
    pub fn device_address(&self, name: &str) -> Option<u64> {
        use tenpak_kernels::cudarc::driver::DevicePtr;
        let b = self.buffer(name)?;
        let (ptr, _record) = b.device_ptr(self.gpu.stream());
        Some(ptr)
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
/// encoding) and, for encodings with a kernel, their layout (checked against the tensor's
/// shape). The codec table decides which encodings have a kernel ([`GpuDecode`]); the
/// others decode on the CPU and travel as values.
fn prepare<'a>(
    t: &crate::artifact::format::TensorEntry,
    bytes: &'a [u8],
    dtype: DType,
) -> Result<(std::borrow::Cow<'a, [u8]>, Option<Layout>)> {
    use crate::artifact::Encoding;
    let n = t.numel() as usize;
    let values = |f: &[f32]| std::borrow::Cow::Owned(dtype.encode(f));
    match t.encoding {
        Encoding::Raw if t.dtype == dtype => Ok((std::borrow::Cow::Borrowed(bytes), None)),
        Encoding::Raw => {
            let mut f = vec![0f32; n];
            t.dtype.decode_into(bytes, &mut f);
            Ok((values(&f), None))
        }
        Encoding::Unknown => Err(Error::UnknownCodec {
            tensor: t.name.clone(),
        }),
        // A delta's tensors need its base: `load_delta` loads those.
        Encoding::Base | Encoding::Delta { .. } => Err(Error::Gpu(format!(
            "{} belongs to a delta artifact: load it with its base (gpu::load_delta)",
            t.name
        ))),
        _ => match layout(bytes).map_err(|e| e.in_tensor(&t.name))? {
            Some(l) if l.numel != n => Err(Error::corrupt(
                "int4",
                Corruption::Length {
                    what: "weights",
                    expected: n as u64,
                    actual: l.numel as u64,
                },
            )
            .in_tensor(&t.name)),
            Some(l) => Ok((std::borrow::Cow::Borrowed(bytes), Some(l))),
            None => {
                let mut f = vec![0f32; n];
                codec::decode(bytes, &mut f).map_err(|e| e.in_tensor(&t.name))?;
                Ok((values(&f), None))
            }
        },
    }
}

/// Refuses a delta on the paths for full artifacts (it needs its base: [`load_delta`]).
fn full_only(art: &crate::artifact::Artifact) -> Result<()> {
    match &art.manifest().base {
        None => Ok(()),
        Some(b) => Err(Error::DeltaNeedsBase {
            base: b.digest.clone(),
        }),
    }
}

/// A tensor of a full artifact into GPU memory as `dtype`: decoded there where its
/// encoding has a kernel, else decoded on the CPU and uploaded as values.
fn to_gpu(
    gpu: &Gpu,
    t: &crate::artifact::format::TensorEntry,
    bytes: &[u8],
    dtype: DType,
) -> Result<CudaSlice<u8>> {
    match prepare(t, bytes, dtype)? {
        (payload, None) => gpu.stream().clone_htod(&payload[..]).map_err(ge),
        (payload, Some(l)) => {
            decode_uploaded(gpu, &upload(gpu, &payload, &l)?, &l, out_type(dtype))
        }
    }
}

pub(super) fn load_with(
    gpu: &std::sync::Arc<Gpu>,
    art: &crate::artifact::Artifact,
    sel: &crate::artifact::Selection,
    dtype: DType,
) -> Result<GpuTensors> {
    full_only(art)?;
    let chosen = art.select(sel);
    let mut tensors = Vec::with_capacity(chosen.len());
    art.for_each_encoded(&chosen, |t, bytes| {
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let out = to_gpu(gpu, t, &bytes, dtype)?;
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

pub(super) fn load_pinned_with(
    gpu: &std::sync::Arc<Gpu>,
    art: &crate::artifact::Artifact,
    sel: &crate::artifact::Selection,
    dtype: DType,
) -> Result<GpuTensors> {
    full_only(art)?;
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

/// A `delta_add` whose difference the kernels read (grouped INT4 or INT2 stages, no
/// outliers): the inner encoding's offset in the bytes and its layout.
fn add_layout(bytes: &[u8]) -> Result<Option<(usize, Layout)>> {
    let h = Header::parse(bytes)?;
    if h.id != codec::delta_add::ID {
        return Ok(None);
    }
    let inner = bytes.get(HEADER_LEN..).unwrap_or_default();
    let ih = Header::parse(inner)?;
    if (ih.rows, ih.cols) != (h.rows, h.cols) {
        return Err(Error::corrupt(
            "delta_add",
            Corruption::Structure("the inner encoding has another shape"),
        ));
    }
    Ok(match layout_of(inner, true)? {
        Some(l) if l.outliers.is_none() => Some((HEADER_LEN, l)),
        _ => None,
    })
}

/// A base tensor as f32 on the GPU (4·n bytes): raw bf16 widened by a kernel, encodings
/// with a kernel decoded there, anything else decoded on the CPU and uploaded.
fn base_f32(
    gpu: &Gpu,
    base: &crate::artifact::Artifact,
    t: &crate::artifact::format::TensorEntry,
    bytes: &[u8],
) -> Result<CudaSlice<u8>> {
    use crate::artifact::Encoding;
    let n = t.numel() as usize;
    let s = gpu.stream();
    let mut acc = alloc_out(gpu, 4 * n)?;
    match t.encoding {
        Encoding::Raw if t.dtype == DType::BF16 => {
            let raw = s.clone_htod(bytes).map_err(ge)?;
            // SAFETY: n bf16 values are 2·n bytes; the f32 view covers the 4·n bytes of `acc`.
            let (src, mut dst) = unsafe {
                (
                    raw.transmute::<u16>(n)
                        .ok_or_else(|| Error::Gpu("u16 view".into()))?,
                    acc.transmute_mut::<f32>(n)
                        .ok_or_else(|| Error::Gpu("f32 view".into()))?,
                )
            };
            gpu.bf16_to_f32(&src, &mut dst).map_err(ge)?;
            s.synchronize().map_err(ge)?;
        }
        _ => match layout(bytes).map_err(|e| e.in_tensor(&t.name))? {
            Some(l) if l.numel == n && t.encoding != Encoding::Raw => {
                let up = upload(gpu, bytes, &l)?;
                decode_uploaded_into(gpu, &up, &l, OutType::F32, &mut acc)?;
            }
            _ => {
                let v = base.decode(t, bytes)?;
                s.memcpy_htod(&DType::F32.encode(&v), &mut acc)
                    .map_err(ge)?;
            }
        },
    }
    Ok(acc)
}

/// Adds the difference of a `delta_add` (laid out by [`add_layout`]) onto `acc` (f32).
fn add_on_gpu(
    gpu: &Gpu,
    acc: &mut CudaSlice<u8>,
    bytes: &[u8],
    at: usize,
    l: &Layout,
) -> Result<()> {
    let up = upload(gpu, &bytes[at..], l)?;
    for st in &l.stages {
        let off = if st.geo.symmetric {
            u16_view(&up, st.scales, 1)?
        } else {
            u16_view(&up, st.offsets, st.groups)?
        };
        let codes = up
            .buf
            .slice(up.pad + st.codes..up.pad + st.codes + st.code_len);
        // SAFETY: `acc` holds 4·numel bytes (allocated by `base_f32` for this tensor).
        let mut f = unsafe { acc.transmute_mut::<f32>(l.numel) }
            .ok_or_else(|| Error::Gpu("f32 view".into()))?;
        gpu.stage_generic(
            &st.geo,
            &codes,
            &u16_view(&up, st.scales, st.groups)?,
            &off,
            &mut f,
            true,
        )
        .map_err(ge)?;
    }
    Ok(())
}

/// f32 values on the GPU as `ty` (the buffer itself for f32).
fn finish_f32(gpu: &Gpu, acc: CudaSlice<u8>, n: usize, ty: OutType) -> Result<CudaSlice<u8>> {
    if ty == OutType::F32 {
        return Ok(acc);
    }
    let mut out = alloc_out(gpu, n * ty.size())?;
    // SAFETY: `acc` holds n f32 values.
    let f = unsafe { acc.transmute::<f32>(n) }.ok_or_else(|| Error::Gpu("f32 view".into()))?;
    gpu.convert(&f, &mut out.slice_mut(..), ty).map_err(ge)?;
    Ok(out)
}

/// Loads the selected tensors of a delta opened with its base into GPU 0 as `dtype`:
/// references decode the base's tensor on the GPU, `delta_add` of grouped INT decodes the
/// base and adds the difference there, the other delta codecs apply on the CPU and upload
/// (chunks of both artifacts sha256-checked as they are fetched, as on the CPU).
pub fn load_delta(
    d: &crate::delta::DeltaSource,
    sel: &crate::artifact::Selection,
    dtype: DType,
) -> Result<(GpuTensors, super::DeltaPaths)> {
    load_delta_with(
        &std::sync::Arc::new(Gpu::new(0).map_err(ge)?),
        d,
        sel,
        dtype,
    )
}

pub(super) fn load_delta_with(
    gpu: &std::sync::Arc<Gpu>,
    d: &crate::delta::DeltaSource,
    sel: &crate::artifact::Selection,
    dtype: DType,
) -> Result<(GpuTensors, super::DeltaPaths)> {
    use crate::artifact::Encoding;
    let (delta, base) = (d.delta(), d.base());
    let s = gpu.stream();
    let ty = out_type(dtype);
    let chosen = delta.select(sel);
    let mut tensors = Vec::with_capacity(chosen.len());
    let mut paths = super::DeltaPaths::default();
    delta.for_each_encoded(&chosen, |t, bytes| {
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let n = t.numel() as usize;
        let base_entry = || {
            crate::delta::pack::base_entry(base, &t.name, &shape).ok_or_else(|| {
                Error::BaseMismatch {
                    tensor: t.name.clone(),
                    shape: shape.clone(),
                }
            })
        };
        let out = match &t.encoding {
            Encoding::Base => {
                paths.reference += 1;
                let bt = base_entry()?;
                to_gpu(gpu, bt, &base.fetch_tensor(bt)?, dtype)?
            }
            Encoding::Delta { .. } => match add_layout(&bytes).map_err(|e| e.in_tensor(&t.name))? {
                Some((at, l)) if l.numel == n => {
                    paths.gpu_add += 1;
                    let bt = base_entry()?;
                    let bb = base.fetch_tensor(bt)?;
                    let mut acc = base_f32(gpu, base, bt, &bb)?;
                    add_on_gpu(gpu, &mut acc, &bytes, at, &l)?;
                    finish_f32(gpu, acc, n, ty)?
                }
                _ => {
                    paths.cpu_apply += 1;
                    s.clone_htod(&dtype.encode(&d.tensor(&t.name)?))
                        .map_err(ge)?
                }
            },
            _ => {
                paths.full += 1;
                to_gpu(gpu, t, &bytes, dtype)?
            }
        };
        tensors.push((t.name.clone(), shape, out));
        Ok(())
    })?;
    gpu.sync().map_err(ge)?;
    Ok((
        GpuTensors {
            gpu: gpu.clone(),
            tensors,
            dtype,
        },
        paths,
    ))
}
