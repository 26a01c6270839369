//! `tenpak bench-gpu`: GPU decode checked against the CPU decode and timed, in one run.

use std::path::PathBuf;

/// Arguments of `tenpak bench-gpu` (needs a build with `--features bench-gpu` and a GPU).
///
/// 1. Every kernel (int4 in several group sizes, both modes, ragged rows and odd groups;
///    int4_residual; fp16 outliers) decodes fresh random encodings to f32, bf16 and f16,
///    compared with the CPU decode on every element.
/// 2. Device-to-device copy bandwidth; each decode kernel timed (CUDA events, median) as
///    GB/s of output and as a fraction of the copy bandwidth (bytes written + read).
/// 3. A synthetic Llama-shaped bf16 model is written and packed, then loaded into GPU
///    memory both ways from the page cache: bf16 safetensors (read + copy) vs `.tnpk`
///    (read + verify + copy + decode to bf16).
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Rows of the timing matrix.
    #[arg(long, default_value_t = 16384)]
    pub rows: usize,
    /// Columns of the timing matrix.
    #[arg(long, default_value_t = 16384)]
    pub cols: usize,
    /// Timed repetitions per kernel.
    #[arg(long, default_value_t = 50)]
    pub reps: usize,
    /// Weights of the synthetic model for the load comparison (0 skips it).
    #[arg(long, default_value_t = 1_100_000_000)]
    pub model_params: usize,
    /// Scratch directory for the synthetic model.
    #[arg(long, default_value = "/tmp/tenpak-bench-gpu")]
    pub scratch: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Without the harness compiled in, says how to get it.
#[cfg(not(feature = "bench-gpu"))]
pub fn run(_: Args) -> anyhow::Result<()> {
    anyhow::bail!(
        "this tenpak was built without the GPU benchmark: cargo build --release --features bench-gpu"
    )
}

/// Runs the benchmark.
#[cfg(feature = "bench-gpu")]
pub fn run(a: Args) -> anyhow::Result<()> {
    use std::io::Write;
    use tenpak::gpu::bench::{self, BenchOptions};
    let r = bench::bench(&BenchOptions {
        rows: a.rows,
        cols: a.cols,
        reps: a.reps,
        model_params: a.model_params,
        scratch: a.scratch,
    })?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &r)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "device: {}", r.device)?;
    writeln!(
        out,
        "device-to-device copy: {:.1} GB/s (read + written)\n",
        r.copy_gb_s
    )?;
    writeln!(
        out,
        "| case | out | elements | bit-mismatches | max rel. error |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for c in &r.checks {
        writeln!(
            out,
            "| {} | {} | {} | {} | {:.2e} |",
            c.case, c.out, c.elements, c.mismatched, c.max_rel_error
        )?;
    }
    writeln!(
        out,
        "\n| kernel | ms (median) | output GB/s | moved GB/s | of copy bandwidth |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for t in &r.timings {
        writeln!(
            out,
            "| {} | {:.3} | {:.1} | {:.1} | {:.1}% |",
            t.case,
            t.ms,
            t.out_gb_s,
            t.moved_gb_s,
            t.fraction_of_copy * 100.0
        )?;
    }
    if let Some(l) = &r.load {
        writeln!(
            out,
            "\nwhole-model load into GPU memory ({} weights, from the page cache):",
            l.params
        )?;
        writeln!(out, "| source | bytes | seconds |")?;
        writeln!(out, "|---|---|---|")?;
        writeln!(
            out,
            "| bf16 safetensors (read + copy) | {} | {:.3} |",
            l.safetensors_bytes, l.safetensors_s
        )?;
        writeln!(
            out,
            "| .tnpk (read + verify + copy + decode to bf16) | {} | {:.3} |",
            l.tnpk_bytes, l.tnpk_s
        )?;
        writeln!(
            out,
            "| .tnpk, pinned staging + copy/decode streams | {} | {:.3} |",
            l.tnpk_bytes, l.tnpk_pinned_s
        )?;
        writeln!(
            out,
            "speed-up of .tnpk over bf16 safetensors: {:.2}x",
            l.speedup
        )?;
    }
    Ok(())
}
