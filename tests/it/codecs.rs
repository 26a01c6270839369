//! Codec properties: round trips within each codec's bound on random and adversarial
//! inputs, exact size accounting, and corrupt encodings rejected without panics.

use proptest::prelude::*;
use tenpak::codec::{self, Codec, CodecSpec, Int4, Int4Residual, WithOutliers};
use tenpak::error::{CodecProblem, Corruption};
use tenpak::Error;

use crate::util::randn;

/// fp16 has an 11-bit significand: a stored scale or offset may be off by this much, relatively.
const F16_REL: f32 = 1.0 / 1024.0;

fn sse(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum()
}

/// Max |w - ŵ| that round-to-nearest INT4 (asymmetric, min/max fit) allows for one group:
/// half a step, plus the fp16 rounding of scale and offset.
fn rtn_bound(group: &[f32]) -> f32 {
    let lo = group.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = group.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let step = (hi - lo) / 15.0;
    step / 2.0 + (lo.abs() + 15.0 * step) * F16_REL * 2.0 + 1e-7
}

fn round_trip(c: &dyn Codec, w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let enc = c.encode(w, rows, cols, None).expect("encode");
    assert_eq!(
        enc.len(),
        c.encoded_len(rows, cols),
        "{}: size accounting",
        c.describe()
    );
    codec::decode_vec(&enc).expect("decode")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn rtn_int4_within_half_step(rows in 1usize..6, cols in 1usize..300, group in 8usize..200, seed in 0u64..1000, scale in 1e-4f32..10.0) {
        let w = randn(rows * cols, seed, scale);
        let c = Int4::new(group, false, 0).expect("codec");
        let d = round_trip(&c, &w, rows, cols);
        for r in 0..rows {
            for g in (0..cols).step_by(group) {
                let a = r * cols + g;
                let b = r * cols + (g + group).min(cols);
                let bound = rtn_bound(&w[a..b]);
                for i in a..b {
                    prop_assert!((w[i] - d[i]).abs() <= bound, "elem {i}: {} vs {} (bound {bound})", w[i], d[i]);
                }
            }
        }
    }

    #[test]
    fn refinement_never_increases_error(rows in 1usize..5, cols in 8usize..400, group in 8usize..160, seed in 0u64..1000, sym in any::<bool>()) {
        let w = randn(rows * cols, seed, 0.05);
        let rtn = Int4::new(group, sym, 0).expect("codec");
        let refined = Int4::new(group, sym, 5).expect("codec");
        let e0 = sse(&w, &round_trip(&rtn, &w, rows, cols));
        let e1 = sse(&w, &round_trip(&refined, &w, rows, cols));
        prop_assert!(e1 <= e0 * (1.0 + 1e-6) + 1e-12, "refined {e1} > rtn {e0}");
    }

    #[test]
    fn residual_beats_int4_alone(rows in 1usize..4, cols in 16usize..300, seed in 0u64..1000) {
        let w = randn(rows * cols, seed, 1.0);
        let e4 = sse(&w, &round_trip(&Int4::new(16, false, 5).expect("c"), &w, rows, cols));
        let e6 = sse(&w, &round_trip(&Int4Residual::new(16, 16, 5).expect("c"), &w, rows, cols));
        prop_assert!(e6 <= e4, "residual {e6} vs int4 {e4}");
    }

    #[test]
    fn truncated_or_corrupt_encodings_error_never_panic(cols in 8usize..64, cut in 0usize..2000, flip in 0usize..2000, seed in 0u64..100) {
        let w = randn(3 * cols, seed, 1.0);
        for spec in [CodecSpec::int4(8), CodecSpec::int4_residual(8, 8), CodecSpec { outlier_fraction: 0.05, ..CodecSpec::int4(8) }] {
            let enc = spec.build().expect("build").encode(&w, 3, cols, None).expect("encode");
            let cut = cut % enc.len();
            let truncated = matches!(
                codec::decode_vec(&enc[..cut]),
                Err(Error::CorruptEncoding { .. })
            );
            prop_assert!(truncated);
            let mut bad = enc.clone();
            bad.push(0);
            let trailing = matches!(
                codec::decode_vec(&bad),
                Err(Error::CorruptEncoding {
                    problem: Corruption::Length { .. },
                    ..
                })
            );
            prop_assert!(trailing, "trailing byte accepted");
            let mut bad = enc.clone();
            let i = flip % 16;
            bad[i] ^= 0xA5;
            let _ = codec::decode_vec(&bad); // may decode to garbage, must not panic
            let mut out = vec![0f32; 3 * cols + 1];
            let wrong_len = matches!(
                codec::decode(&enc, &mut out),
                Err(Error::CorruptEncoding {
                    problem: Corruption::Length { what: "weights", .. },
                    ..
                })
            );
            prop_assert!(wrong_len);
        }
    }
}

#[test]
fn bits_per_weight_formulas() {
    // 4 bits of codes + 32 bits of fp16 scale/offset per group + the 16-byte header.
    let (rows, cols) = (256, 1024);
    let n = (rows * cols) as f64;
    let header = 128.0 / n;
    for g in [8, 32, 128, 1024] {
        let c = Int4::new(g, false, 5).expect("c");
        assert!((c.bits_per_weight(rows, cols) - (4.0 + 32.0 / g as f64 + header)).abs() < 1e-9);
        let s = Int4::new(g, true, 5).expect("c");
        assert!((s.bits_per_weight(rows, cols) - (4.0 + 16.0 / g as f64 + header)).abs() < 1e-9);
    }
    let r = Int4Residual::new(16, 16, 5).expect("c");
    assert!((r.bits_per_weight(rows, cols) - (6.0 + 4.0 + header)).abs() < 1e-9);
    // Odd group lengths waste half a byte each, and it is counted: 100 cols at g=33 is
    // groups of 33, 33, 33, 1 -> 17+17+17+1 bytes of codes per row.
    let c = Int4::new(33, false, 0).expect("c");
    assert_eq!(c.encoded_len(2, 100), 16 + 2 * 4 * 4 + 2 * 52);
}

#[test]
fn constant_rows_and_zeros_are_exact() {
    let cols = 100;
    let mut w = vec![0.75f32; cols];
    w.extend(vec![0.0; cols]);
    w.extend(vec![-3.5; cols]);
    for spec in [
        CodecSpec::int4(32),
        CodecSpec {
            symmetric: true,
            ..CodecSpec::int4(16)
        },
        CodecSpec::int4_residual(16, 16),
    ] {
        let d = round_trip(spec.build().expect("b").as_ref(), &w, 3, cols);
        assert_eq!(d, w, "{spec:?}");
    }
}

#[test]
fn empty_tensor_round_trips() {
    for spec in [CodecSpec::int4(32), CodecSpec::int4_residual(16, 16)] {
        let c = spec.build().expect("b");
        for (r, k) in [(0, 64), (5, 0)] {
            let d = round_trip(c.as_ref(), &[], r, k);
            assert!(d.is_empty());
        }
    }
}

#[test]
fn nan_and_inf_are_rejected_with_their_index() {
    let mut w = randn(256, 1, 1.0);
    for (i, bad) in [(7, f32::NAN), (200, f32::INFINITY), (3, f32::NEG_INFINITY)] {
        let mut v = w.clone();
        v[i] = bad;
        for spec in [
            CodecSpec::int4(32),
            CodecSpec::int4_residual(16, 16),
            CodecSpec {
                outlier_fraction: 0.01,
                ..CodecSpec::int4(32)
            },
        ] {
            match spec.build().expect("b").encode(&v, 4, 64, None) {
                Err(Error::NonFinite { index, .. }) => assert_eq!(index, i),
                other => panic!("{spec:?}: expected NonFinite, got {other:?}"),
            }
        }
    }
    w.truncate(255);
    assert!(matches!(
        Int4::new(32, false, 5).expect("c").encode(&w, 4, 64, None),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn huge_outliers_kept_exactly_by_the_outlier_codec() {
    let cols = 256;
    let mut w = randn(4 * cols, 9, 0.02);
    let spikes = [(5usize, 40.0f32), (300, -55.0), (700, 12.0)];
    for &(i, v) in &spikes {
        w[i] = v;
    }
    let plain = Int4::new(64, false, 5).expect("c");
    let with = WithOutliers::new(Box::new(Int4::new(64, false, 5).expect("c")), 0.005).expect("c");
    let d0 = round_trip(&plain, &w, 4, cols);
    let d1 = round_trip(&with, &w, 4, cols);
    for &(i, v) in &spikes {
        assert_eq!(
            d1[i],
            half::f16::from_f32(v).to_f32(),
            "spike {i} kept as fp16"
        );
    }
    // Without outliers the spike stretches its group's scale and every neighbour suffers.
    let rest = |d: &[f32]| -> f64 {
        (0..w.len())
            .filter(|i| spikes.iter().all(|s| s.0 != *i))
            .map(|i| ((w[i] - d[i]) as f64).powi(2))
            .sum()
    };
    assert!(
        rest(&d1) * 20.0 < rest(&d0),
        "outliers should protect their groups: {} vs {}",
        rest(&d1),
        rest(&d0)
    );
    // Values beyond fp16's range cannot be scaled; the plain codec refuses them.
    let mut big = randn(64, 3, 1.0);
    big[10] = 1e6;
    big[11] = -1e6;
    assert!(matches!(
        plain.encode(&big, 1, 64, None),
        Err(Error::InvalidCodec {
            problem: CodecProblem::ScaleOverflow { .. },
            ..
        })
    ));
}

#[test]
fn importance_shifts_error_to_unimportant_weights() {
    let (rows, cols) = (8, 128);
    let w = randn(rows * cols, 11, 1.0);
    let mut h = vec![1.0f32; w.len()];
    for (i, x) in h.iter_mut().enumerate() {
        if i % cols < 16 {
            *x = 100.0;
        }
    }
    let c = Int4::new(128, false, 8).expect("c");
    let d_plain = codec::decode_vec(&c.encode(&w, rows, cols, None).expect("e")).expect("d");
    let d_imp = codec::decode_vec(&c.encode(&w, rows, cols, Some(&h)).expect("e")).expect("d");
    let err_on = |d: &[f32]| -> f64 {
        (0..w.len())
            .filter(|i| i % cols < 16)
            .map(|i| ((w[i] - d[i]) as f64).powi(2))
            .sum()
    };
    assert!(
        err_on(&d_imp) <= err_on(&d_plain),
        "{} vs {}",
        err_on(&d_imp),
        err_on(&d_plain)
    );
}

#[test]
fn presets_and_bad_parameters() {
    assert_eq!(
        CodecSpec::from_name("int4_g8_fp16", None).expect("p").group,
        8
    );
    assert_eq!(
        CodecSpec::from_name("int4_opt_llama", None)
            .expect("p")
            .group,
        128
    );
    assert_eq!(
        CodecSpec::from_name("int4_residual", None)
            .expect("p")
            .residual_group,
        16
    );
    for (name, g) in [("int4", Some(4)), ("int4", Some(5000))] {
        assert!(
            matches!(
                CodecSpec::from_name(name, g),
                Err(Error::InvalidCodec {
                    problem: CodecProblem::OutOfRange {
                        parameter: "group size",
                        ..
                    },
                    ..
                })
            ),
            "{name} {g:?}"
        );
    }
    match CodecSpec::from_name("int5", None) {
        Err(Error::InvalidCodec {
            codec,
            problem: CodecProblem::UnknownName { known },
        }) => {
            assert_eq!(codec, "int5");
            assert!(known.contains("int4_residual") && known.contains("tenpak_x"));
        }
        other => panic!("int5: {other:?}"),
    }
    assert!(matches!(
        CodecSpec {
            outlier_fraction: 0.9,
            ..CodecSpec::int4(32)
        }
        .build(),
        Err(Error::InvalidCodec {
            problem: CodecProblem::OutOfRange {
                parameter: "outlier fraction",
                ..
            },
            ..
        })
    ));
}

#[test]
fn importance_of_the_wrong_length_is_an_error_for_every_codec() {
    let w = randn(4 * 64, 5, 1.0);
    let short = vec![1.0f32; 100];
    for spec in [
        CodecSpec::int4(32),
        CodecSpec::int4_residual(16, 16),
        CodecSpec {
            outlier_fraction: 0.01,
            ..CodecSpec::int4(32)
        },
    ] {
        assert!(
            matches!(
                spec.build().expect("b").encode(&w, 4, 64, Some(&short)),
                Err(Error::ShapeMismatch { .. })
            ),
            "{spec:?}"
        );
    }
}
