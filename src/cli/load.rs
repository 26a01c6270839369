//! `tenpak load`: fetch, verify and decode tensors into memory without writing them — what
//! an inference host does at start-up — and report how long it took.

use std::io::Write;
use std::time::Instant;

use tenpak::artifact::Selection;

use super::artifact_args::{Opened, SourceArgs};

/// Arguments of `tenpak load`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Only tensors matching these comma-separated globs.
    #[arg(long)]
    pub tensors: Option<String>,
    /// Only these transformer layers: N or A-B.
    #[arg(long)]
    pub layers: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Load into the memory of GPU 0 (a build with `--features cuda`): encodings with a
    /// kernel are uploaded as stored and decoded there; a delta's references and its
    /// `delta_add` of INT4/INT2 decode the base and add the difference on the GPU; the
    /// rest decodes on the CPU and is uploaded.
    #[arg(long)]
    pub gpu: bool,
    /// With --gpu: copy every tensor back and compare it with the CPU decode, bit for bit
    /// in --dtype (exit status 1 on any difference).
    #[arg(long, requires = "gpu")]
    pub check: bool,
    /// Element type in GPU memory: bf16, f16 or f32.
    #[arg(long, default_value = "bf16", requires = "gpu")]
    pub dtype: String,
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let sel =
        Selection::new(a.tensors.as_deref(), a.layers.as_deref()).map_err(anyhow::Error::msg)?;
    let t0 = Instant::now();
    if a.gpu {
        return load_gpu(&a, &sel, a.source.open_model(None)?, t0);
    }
    let art = match a.source.open_model(None)? {
        Opened::Full(art) => *art,
        Opened::Delta(d) => return load_delta(&a, &sel, &d, t0),
    };
    let opened = t0.elapsed().as_secs_f64();
    let chosen = art.select(&sel);
    let mut first: Option<f64> = None;
    let (mut weights, mut encoded) = (0u64, 0u64);
    art.for_each_encoded(&chosen, |t, bytes| {
        encoded += bytes.len() as u64;
        let values = art.decode(t, &bytes)?;
        weights += values.len() as u64;
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        Ok(())
    })?;
    let total = t0.elapsed().as_secs_f64();
    let v = serde_json::json!({
        "location": a.source.location,
        "tensors": chosen.len(),
        "weights": weights,
        "encoded_bytes": encoded,
        "bytes_fetched": art.bytes_fetched(),
        "open_s": opened,
        "time_to_first_tensor_s": first.unwrap_or(total),
        "total_s": total,
        "encoded_mb_per_s": encoded as f64 / 1e6 / total,
        "weights_per_s": weights as f64 / total,
    });
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut out, &v)?;
    } else {
        write!(
            out,
            "loaded {} tensors ({} weights, {} encoded bytes, {} fetched) in {:.3} s; first tensor after {:.3} s; {:.0} MB/s",
            chosen.len(),
            weights,
            encoded,
            art.bytes_fetched(),
            total,
            first.unwrap_or(total),
            encoded as f64 / 1e6 / total
        )?;
    }
    writeln!(out)?;
    Ok(())
}

fn load_delta(
    a: &Args,
    sel: &Selection,
    d: &tenpak::delta::DeltaSource,
    t0: Instant,
) -> anyhow::Result<()> {
    let opened = t0.elapsed().as_secs_f64();
    let chosen = d.delta().select(sel);
    let mut first: Option<f64> = None;
    let mut weights = 0u64;
    for t in &chosen {
        weights += d.tensor(&t.name)?.len() as u64;
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
    }
    let total = t0.elapsed().as_secs_f64();
    let fetched = d.delta().bytes_fetched() + d.base().bytes_fetched();
    let v = serde_json::json!({
        "location": a.source.location,
        "base": d.base().digest(),
        "tensors": chosen.len(),
        "weights": weights,
        "bytes_fetched": fetched,
        "delta_bytes_fetched": d.delta().bytes_fetched(),
        "base_bytes_fetched": d.base().bytes_fetched(),
        "open_s": opened,
        "time_to_first_tensor_s": first.unwrap_or(total),
        "total_s": total,
        "weights_per_s": weights as f64 / total,
    });
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut out, &v)?;
    } else {
        write!(
            out,
            "loaded {} tensors ({} weights) of the delta on its base in {:.3} s; fetched {} delta + {} base bytes; first tensor after {:.3} s",
            chosen.len(),
            weights,
            total,
            d.delta().bytes_fetched(),
            d.base().bytes_fetched(),
            first.unwrap_or(total)
        )?;
    }
    writeln!(out)?;
    Ok(())
}

/// `--gpu`: the whole selection into GPU memory, then (`--check`) every tensor compared
/// with the CPU decode.
fn load_gpu(a: &Args, sel: &Selection, m: Opened, t0: Instant) -> anyhow::Result<()> {
    let dtype = tenpak::dtype::DType::parse(&a.dtype)
        .ok_or_else(|| anyhow::anyhow!("--dtype {}: use bf16, f16 or f32", a.dtype))?;
    let (tensors, paths) = match &m {
        Opened::Full(art) => (tenpak::gpu::load_artifact(art, sel, dtype)?, None),
        Opened::Delta(d) => {
            let (t, p) = tenpak::gpu::load_delta(d, sel, dtype)?;
            (t, Some(p))
        }
    };
    let total = t0.elapsed().as_secs_f64();
    let names: Vec<String> = tensors.names().iter().map(|n| n.to_string()).collect();
    let mut mismatched = 0usize;
    let mut checked = 0usize;
    if a.check {
        for n in &names {
            let want = match &m {
                Opened::Full(art) => art.load_tensor(n)?,
                Opened::Delta(d) => d.tensor(n)?,
            };
            let want = dtype.encode(&want);
            let got = tensors.to_host(n)?;
            if got != want {
                mismatched += 1;
                eprintln!("{n}: the GPU decode differs from the CPU decode");
            }
            checked += 1;
        }
    }
    let v = serde_json::json!({
        "location": a.source.location,
        "device": "gpu 0",
        "dtype": dtype.to_string(),
        "tensors": names.len(),
        "total_s": total,
        "delta_paths": paths,
        "checked": checked,
        "mismatched": mismatched,
    });
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut out, &v)?;
    } else {
        write!(
            out,
            "loaded {} tensors into GPU memory as {dtype} in {total:.3} s",
            names.len()
        )?;
        if let Some(p) = paths {
            write!(
                out,
                "; {} references, {} INT deltas added on the GPU, {} applied on the CPU, {} full",
                p.reference, p.gpu_add, p.cpu_apply, p.full
            )?;
        }
        if a.check {
            write!(
                out,
                "; {checked} checked against the CPU, {mismatched} differ"
            )?;
        }
    }
    writeln!(out)?;
    if mismatched > 0 {
        anyhow::bail!("{mismatched} tensors differ from the CPU decode");
    }
    Ok(())
}
