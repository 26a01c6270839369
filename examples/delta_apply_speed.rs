//! `delta_exact` apply speed on one core: the coded layout on the CPU's widest
//! instantiation and on the baseline one, the planes layout and a memcpy of the output,
//! interleaved in one run (so that a shared, noisy machine slows them all alike).
//!
//!     cargo run --release --example delta_apply_speed -- ROUNDS [TENSOR...]
//!
//! Reads the fixture pair (`$TENPAK_FIXTURES/models/smollm2-135m` and its `-austen-ft`;
//! `scripts/finetune.sh`), or, with `DELTA_RAW=DIR`, `DIR/NAME.base` and `DIR/NAME.ft`
//! (raw little-endian bf16; `DELTA_DUMP=DIR` writes them, for a machine without the
//! fixtures, such as the GPU host). Prints one line per tensor and codec: bytes, ratio to
//! the bf16 fine-tune, best and median MiB/s of bf16 output, and the ratio to the
//! planes layout measured in the same rounds.

use std::path::PathBuf;
use std::time::Instant;

use tenpak::codec::delta_exact::{DeltaExact, Layout};
use tenpak::codec::{BaseView, DeltaCodec};
use tenpak::dtype::DType;
use tenpak::source::{HfModelDir, TensorSource};

fn raw(path: &PathBuf) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(2)
        .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(40, |s| s.parse().expect("ROUNDS"));
    let mut names: Vec<String> = args.collect();
    if names.is_empty() {
        names = vec![
            "model.layers.10.mlp.gate_proj.weight".into(),
            "model.layers.10.self_attn.q_proj.weight".into(),
            "model.embed_tokens.weight".into(),
        ];
    }
    let pair = |name: &str| -> (Vec<f32>, Vec<f32>) {
        if let Some(dir) = std::env::var_os("DELTA_RAW") {
            let dir = PathBuf::from(dir);
            return (
                raw(&dir.join(format!("{name}.base"))),
                raw(&dir.join(format!("{name}.ft"))),
            );
        }
        let root = std::env::var_os("TENPAK_FIXTURES")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tenpak-fixtures"))
            })
            .expect("TENPAK_FIXTURES or HOME")
            .join("models");
        let b = HfModelDir::open(&root.join("smollm2-135m")).expect("base (scripts/fixtures.sh)");
        let f = HfModelDir::open(&root.join("smollm2-135m-austen-ft"))
            .expect("fine-tune (scripts/finetune.sh)");
        (
            b.read_f32(name).expect("base tensor"),
            f.read_f32(name).expect("fine-tune tensor"),
        )
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    for name in &names {
        let (base, ft) = pair(name);
        if let Some(dir) = std::env::var_os("DELTA_DUMP") {
            for (v, ext) in [(&base, "base"), (&ft, "ft")] {
                let bytes: Vec<u8> = v
                    .iter()
                    .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
                    .collect();
                std::fs::write(PathBuf::from(&dir).join(format!("{name}.{ext}")), bytes)
                    .expect("dump");
            }
            continue;
        }
        let n = base.len();
        let view = BaseView {
            values: &base,
            encoded: None,
        };
        let layouts = [("coded", Layout::Coded), ("planes_l19", Layout::Planes)];
        let encs: Vec<Vec<u8>> = layouts
            .iter()
            .map(|&(_, layout)| {
                DeltaExact {
                    dtype: DType::BF16,
                    level: 19,
                    layout,
                }
                .encode(&ft, &view, 1, n, None)
                .expect("encode")
                .expect("applies")
            })
            .collect();
        // Timed in each round: the coded layout on the CPU's widest instantiation
        // (`tenpak::cpu`), the same on the baseline one, the planes layout, a memcpy.
        let runs = [(0, false), (0, true), (1, false)];
        let mut times = vec![vec![]; runs.len() + 1];
        let mut out = vec![0f32; n];
        let src = vec![1u16; n];
        let mut dst = vec![0u16; n];
        pool.install(|| {
            for _ in 0..rounds {
                for (k, &(e, baseline)) in runs.iter().enumerate() {
                    tenpak::cpu::force_baseline(baseline);
                    let t = Instant::now();
                    tenpak::codec::apply(&encs[e], &view, &mut out).expect("apply");
                    times[k].push(t.elapsed().as_secs_f64());
                    tenpak::cpu::force_baseline(false);
                    assert!(
                        out.iter().zip(&ft).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "not exact"
                    );
                }
                let t = Instant::now();
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&dst);
                times[runs.len()].push(t.elapsed().as_secs_f64());
            }
        });
        let stat = |k: usize| {
            let mut t = times[k].clone();
            t.sort_by(f64::total_cmp);
            (t[0], t[t.len() / 2])
        };
        let mib = |s: f64| 2.0 * n as f64 / s / 1048576.0;
        let gbs = |s: f64| 2.0 * n as f64 / s / 1e9;
        let planes = stat(2);
        let coded_cpu = format!("coded ({})", tenpak::cpu::level_name());
        let labels = [
            coded_cpu.as_str(),
            "coded (baseline)",
            "planes_l19",
            "memcpy_bf16",
        ];
        for (k, label) in labels.iter().enumerate() {
            let (best, median) = stat(k);
            let bytes = runs.get(k).map_or(0, |&(e, _)| encs[e].len());
            println!(
                "{name} | {label} | {bytes} bytes | {:.4}x bf16 | best {:.0} MiB/s | median {:.0} MiB/s = {:.3} GB/s | median {:.2}x planes | {n} weights, {rounds} rounds",
                bytes as f64 / (2 * n) as f64,
                mib(best),
                mib(median),
                gbs(median),
                planes.1 / median,
            );
        }
    }
}
