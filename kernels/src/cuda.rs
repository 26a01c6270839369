//! The CUDA implementation: NVRTC compilation, module cache, launches.
#![allow(unsafe_code)] // kernel launches and device views; every block carries a SAFETY note

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use cudarc;
use cudarc::driver::CudaModule;
pub use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use crate::{Error, OutType, Result, StageGeometry, DECODE_CU};

fn drv(e: impl std::fmt::Debug) -> Error {
    Error::Driver(format!("{e:?}"))
}

/// A device with the decode kernels loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    funcs: Mutex<HashMap<String, CudaFunction>>,
    arch: String,
}

const THREADS: u32 = 256;
/// Chunks of 8 weights per thread in the flat kernels (`ITEMS` in decode.cu).
const ITEMS: u64 = 4;

fn grid(threads_needed: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (threads_needed.div_ceil(THREADS as u64).max(1) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Gpu {
    /// Opens device `ordinal` and compiles the kernels for its architecture.
    pub fn new(ordinal: usize) -> Result<Self> {
        let ctx = CudaContext::new(ordinal).map_err(drv)?;
        let (maj, min) = ctx.compute_capability().map_err(drv)?;
        let arch: &'static str = Box::leak(format!("sm_{maj}{min}").into_boxed_str());
        let ptx = compile_ptx_with_opts(
            DECODE_CU,
            CompileOptions {
                arch: Some(arch),
                name: Some("decode.cu".into()),
                ..Default::default()
            },
        )
        .map_err(|e| Error::Compile(format!("{e:?}")))?;
        let module = ctx.load_module(ptx).map_err(drv)?;
        let stream = ctx.default_stream();
        Ok(Self {
            ctx,
            stream,
            module,
            funcs: Mutex::new(HashMap::new()),
            arch: arch.to_string(),
        })
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream launches go to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// Device name and NVRTC target.
    pub fn describe(&self) -> String {
        format!(
            "{} ({})",
            self.ctx.name().unwrap_or_else(|_| "?".into()),
            self.arch
        )
    }

    fn func(&self, name: &str) -> Result<CudaFunction> {
        let mut f = self
            .funcs
            .lock()
            .map_err(|_| Error::Driver("kernel cache poisoned".into()))?;
        if let Some(k) = f.get(name) {
            return Ok(k.clone());
        }
        let k = self.module.load_function(name).map_err(drv)?;
        f.insert(name.to_string(), k.clone());
        Ok(k)
    }

    fn check(g: &StageGeometry, scales: usize, offsets: usize, codes: usize) -> Result<()> {
        let per_byte = 8 / g.bits as usize;
        let gpr = g.cols.div_ceil(g.group);
        let cbr =
            (g.cols / g.group) * g.group.div_ceil(per_byte) + (g.cols % g.group).div_ceil(per_byte);
        let groups = g.rows * gpr;
        if scales < groups || (!g.symmetric && offsets < groups) || codes < g.rows * cbr {
            return Err(Error::Launch(format!(
                "{g:?} needs {groups} scales/offsets and {} code bytes; got {scales}/{offsets}/{codes}",
                g.rows * cbr
            )));
        }
        Ok(())
    }

    /// Decodes one 4-bit stage (flat geometry) into `out` of type `ty` (raw bytes of the
    /// output element type). `offsets` is ignored when symmetric.
    pub fn int4_flat(
        &self,
        g: &StageGeometry,
        codes: &CudaView<'_, u8>,
        scales: &CudaView<'_, u16>,
        offsets: &CudaView<'_, u16>,
        out: &mut CudaViewMut<'_, u8>,
        ty: OutType,
    ) -> Result<()> {
        if !g.is_flat() || g.bits != 4 {
            return Err(Error::Launch(format!("{g:?} is not a flat 4-bit stage")));
        }
        Self::check(g, scales.len(), offsets.len(), codes.len())?;
        let n = (g.rows * g.cols) as u64;
        if out.len() < n as usize * ty.size() {
            return Err(Error::Launch("output buffer too small".into()));
        }
        let f = self.func(&format!("int4_flat_{}", ty.suffix()))?;
        let (group, sym) = (g.group as u32, g.symmetric as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(codes)
            .arg(scales)
            .arg(offsets)
            .arg(out)
            .arg(&n)
            .arg(&group)
            .arg(&sym);
        // SAFETY: argument types and order match `int4_flat_*` in decode.cu; `check` proved
        // the inputs cover every group and code byte the kernel reads, the output holds n
        // elements, and each thread touches only its own 4 × 8 outputs.
        unsafe { b.launch(grid(n.div_ceil(8 * ITEMS))) }.map_err(drv)?;
        Ok(())
    }

    /// Decodes a fused int4 + int2 residual (both flat) into `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn int4_residual_flat(
        &self,
        g1: &StageGeometry,
        c1: &CudaView<'_, u8>,
        s1: &CudaView<'_, u16>,
        o1: &CudaView<'_, u16>,
        g2: &StageGeometry,
        c2: &CudaView<'_, u8>,
        s2: &CudaView<'_, u16>,
        o2: &CudaView<'_, u16>,
        out: &mut CudaViewMut<'_, u8>,
        ty: OutType,
    ) -> Result<()> {
        if !g1.is_flat()
            || !g2.is_flat()
            || g1.bits != 4
            || g2.bits != 2
            || g1.symmetric
            || g2.symmetric
        {
            return Err(Error::Launch(
                "residual stages are not flat asymmetric 4+2 bit".into(),
            ));
        }
        Self::check(g1, s1.len(), o1.len(), c1.len())?;
        Self::check(g2, s2.len(), o2.len(), c2.len())?;
        let n = (g1.rows * g1.cols) as u64;
        if out.len() < n as usize * ty.size() {
            return Err(Error::Launch("output buffer too small".into()));
        }
        let f = self.func(&format!("int4res_flat_{}", ty.suffix()))?;
        let (gr1, gr2) = (g1.group as u32, g2.group as u32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(c1)
            .arg(s1)
            .arg(o1)
            .arg(&gr1)
            .arg(c2)
            .arg(s2)
            .arg(o2)
            .arg(&gr2)
            .arg(out)
            .arg(&n);
        // SAFETY: matches `int4res_flat_*`; both stages checked against their geometry.
        unsafe { b.launch(grid(n.div_ceil(8 * ITEMS))) }.map_err(drv)?;
        Ok(())
    }

    /// Decodes any stage geometry into an f32 buffer (accumulating for residuals).
    pub fn stage_generic(
        &self,
        g: &StageGeometry,
        codes: &CudaView<'_, u8>,
        scales: &CudaView<'_, u16>,
        offsets: &CudaView<'_, u16>,
        out: &mut CudaViewMut<'_, f32>,
        accumulate: bool,
    ) -> Result<()> {
        Self::check(g, scales.len(), offsets.len(), codes.len())?;
        let n = (g.rows * g.cols) as u64;
        if out.len() < n as usize {
            return Err(Error::Launch("output buffer too small".into()));
        }
        let f = self.func("stage_generic_f32")?;
        let (rows, cols, group, bits) = (g.rows as u64, g.cols as u64, g.group as u32, g.bits);
        let (sym, acc) = (g.symmetric as i32, accumulate as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(codes)
            .arg(scales)
            .arg(offsets)
            .arg(out)
            .arg(&rows)
            .arg(&cols)
            .arg(&group)
            .arg(&bits)
            .arg(&sym)
            .arg(&acc);
        // SAFETY: matches `stage_generic_f32`; `check` covers every index the kernel computes.
        unsafe { b.launch(grid(n)) }.map_err(drv)?;
        Ok(())
    }

    /// Converts f32 to bf16/f16 (after generic stages).
    pub fn convert(
        &self,
        input: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, u8>,
        ty: OutType,
    ) -> Result<()> {
        let n = input.len() as u64;
        if ty == OutType::F32 || out.len() < input.len() * 2 {
            return Err(Error::Launch(
                "convert needs a 16-bit output of the input's length".into(),
            ));
        }
        let f = self.func(&format!("convert_{}", ty.suffix()))?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(input).arg(out).arg(&n);
        // SAFETY: matches `convert_*`: n inputs, n 16-bit outputs.
        unsafe { b.launch(grid(n)) }.map_err(drv)?;
        Ok(())
    }

    /// Widens bf16 values to f32 (a raw bf16 tensor a delta is added to).
    pub fn bf16_to_f32(
        &self,
        input: &CudaView<'_, u16>,
        out: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let n = input.len() as u64;
        if out.len() < input.len() {
            return Err(Error::Launch(
                "bf16_to_f32 needs an output of the input's length".into(),
            ));
        }
        let f = self.func("bf16_to_f32")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(input).arg(out).arg(&n);
        // SAFETY: matches `bf16_to_f32`: n inputs, n f32 outputs.
        unsafe { b.launch(grid(n)) }.map_err(drv)?;
        Ok(())
    }

    /// Writes fp16 outliers into `out` (element type `ty`).
    pub fn scatter(
        &self,
        idx: &CudaView<'_, u32>,
        val: &CudaView<'_, u16>,
        out: &mut CudaViewMut<'_, u8>,
        ty: OutType,
        n_out: usize,
    ) -> Result<()> {
        let count = idx.len() as u64;
        if val.len() != idx.len() || out.len() < n_out * ty.size() {
            return Err(Error::Launch("outlier arrays disagree".into()));
        }
        if count == 0 {
            return Ok(());
        }
        let f = self.func(&format!("scatter_{}", ty.suffix()))?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(idx).arg(val).arg(out).arg(&count);
        // SAFETY: matches `scatter_*`; indices were checked < n_out by the caller (the
        // codec parser) before upload.
        unsafe { b.launch(grid(count)) }.map_err(drv)?;
        Ok(())
    }

    /// Device-to-device copy bandwidth in bytes moved (read + written) per second,
    /// median of `reps` copies of `bytes`.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64> {
        let src = self.stream.alloc_zeros::<u8>(bytes).map_err(drv)?;
        let mut dst = self.stream.alloc_zeros::<u8>(bytes).map_err(drv)?;
        let ms = self.time_ms(reps, || {
            self.stream.memcpy_dtod(&src, &mut dst).map_err(drv)
        })?;
        Ok(2.0 * bytes as f64 / (ms / 1e3))
    }

    /// Median milliseconds of `reps` runs of `f` on the stream, timed with CUDA events.
    pub fn time_ms(&self, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        f()?; // warm-up
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps.max(1) {
            let a = self
                .ctx
                .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(drv)?;
            let b = self
                .ctx
                .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(drv)?;
            a.record(&self.stream).map_err(drv)?;
            f()?;
            b.record(&self.stream).map_err(drv)?;
            b.synchronize().map_err(drv)?;
            times.push(a.elapsed_ms(&b).map_err(drv)? as f64);
        }
        times.sort_by(|x, y| x.total_cmp(y));
        Ok(times[times.len() / 2])
    }

    /// Waits for the stream.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv)
    }
}
