//! Encode and decode throughput of the INT4 codecs on one core, beside a plain memcpy of
//! the decoded bytes measured in the same run (the ratio is what to compare across machines).
//!
//!     cargo bench --bench codecs
//!
//! Goals (issue #2): decode ≥ 1e9 weights/s per core; encode with refinement ≥ 2e8.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tenpak::codec::{self, CodecSpec};

const ROWS: usize = 2048;
const COLS: usize = 2048;

fn weights() -> Vec<f32> {
    tenpak::synthetic::weights(ROWS * COLS, 0x2545_F491_4F6C_DD1D, 0.02)
}

fn bench(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let w = weights();
    let n = w.len();
    let mut g = c.benchmark_group("codec_1core");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));

    let src = vec![1f32; n];
    let mut dst = vec![0f32; n];
    g.bench_function("memcpy_f32_output", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });

    let specs = [
        ("int4_g128_refine5", CodecSpec::int4(128)),
        (
            "int4_g128_rtn",
            CodecSpec {
                refine_iters: 0,
                ..CodecSpec::int4(128)
            },
        ),
        ("int4_residual_g16", CodecSpec::int4_residual(16, 16)),
    ];
    for (name, spec) in &specs {
        let codec = spec.build().expect("codec");
        let enc = codec.encode(&w, ROWS, COLS, None).expect("encode");
        g.bench_with_input(BenchmarkId::new("encode", name), &w, |b, w| {
            b.iter(|| {
                pool.install(|| {
                    codec
                        .encode(black_box(w), ROWS, COLS, None)
                        .expect("encode")
                })
            })
        });
        let mut out = vec![0f32; n];
        g.bench_with_input(BenchmarkId::new("decode", name), &enc, |b, enc| {
            b.iter(|| pool.install(|| codec::decode(black_box(enc), &mut out).expect("decode")))
        });
    }
    // Decode only (their encoders are slow single-core): every other codec family, so
    // the table dispatch is measured for each (`-- decode` runs just these and the above).
    let decode_only = [
        ("int3_g128", CodecSpec::int(3, 128)),
        (
            "int4_g128_outliers0.5",
            CodecSpec {
                outlier_fraction: 0.005,
                ..CodecSpec::int4(128)
            },
        ),
        ("calibrated_vq_d2_8b_g64", CodecSpec::vq(2, 8, 64)),
        ("tenpak_x_r8", CodecSpec::tenpak_x(8, 2, 7, 64, 0)),
    ];
    for (name, spec) in &decode_only {
        let enc = spec
            .build()
            .expect("codec")
            .encode(&w, ROWS, COLS, None)
            .expect("encode");
        let mut out = vec![0f32; n];
        g.bench_with_input(BenchmarkId::new("decode", name), &enc, |b, enc| {
            b.iter(|| pool.install(|| codec::decode(black_box(enc), &mut out).expect("decode")))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
