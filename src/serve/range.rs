//! HTTP range semantics (RFC 9110 §14 and §13.1.5), independent of any server framework,
//! so the CLI's file server and the registry answer ranges the same way.

/// What to send for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// 200 with the whole representation.
    Full,
    /// 206 with bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decides how to answer a GET given its `Range` and `If-Range` headers, the current
/// strong entity tag (quoted, e.g. `"abc"`) and the representation length.
///
/// - no `Range`, a unit other than `bytes`, invalid syntax, or several ranges: the whole
///   representation (a server MAY ignore Range, §14.2; multipart answers are not offered);
/// - `If-Range` that does not match the strong tag exactly (or is a date): the whole
///   representation (§13.1.5);
/// - `a-b`, `a-` and suffix `-n`: the satisfiable part, clamped to the length; a first
///   position at or past the end, or `-0`, is unsatisfiable (416).
pub fn decide(range: Option<&str>, if_range: Option<&str>, etag: &str, len: u64) -> RangeDecision {
    let Some(range) = range else {
        return RangeDecision::Full;
    };
    if let Some(ir) = if_range {
        if ir.trim() != etag || etag.starts_with("W/") {
            return RangeDecision::Full;
        }
    }
    let Some((unit, spec)) = range.split_once('=') else {
        return RangeDecision::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeDecision::Full;
    }
    let spec = spec.trim();
    let Some((a, b)) = spec.split_once('-') else {
        return RangeDecision::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            None => RangeDecision::Full,
            Some(0) => RangeDecision::Unsatisfiable,
            Some(_) if len == 0 => RangeDecision::Unsatisfiable,
            Some(n) => RangeDecision::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        },
        (first, "") => match num(first) {
            None => RangeDecision::Full,
            Some(f) if f >= len => RangeDecision::Unsatisfiable,
            Some(f) => RangeDecision::Partial {
                start: f,
                end: len - 1,
            },
        },
        (first, last) => match (num(first), num(last)) {
            (Some(f), Some(l)) if f <= l => {
                if f >= len {
                    RangeDecision::Unsatisfiable
                } else {
                    RangeDecision::Partial {
                        start: f,
                        end: l.min(len - 1),
                    }
                }
            }
            _ => RangeDecision::Full,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::RangeDecision::*;
    use super::*;

    const E: &str = "\"tag\"";

    #[test]
    fn rfc9110_examples() {
        let d = |r: &str| decide(Some(r), None, E, 10000);
        assert_eq!(d("bytes=0-499"), Partial { start: 0, end: 499 });
        assert_eq!(
            d("bytes=500-999"),
            Partial {
                start: 500,
                end: 999
            }
        );
        assert_eq!(
            d("bytes=-500"),
            Partial {
                start: 9500,
                end: 9999
            }
        );
        assert_eq!(
            d("bytes=9500-"),
            Partial {
                start: 9500,
                end: 9999
            }
        );
        assert_eq!(d("bytes=0-0"), Partial { start: 0, end: 0 });
        assert_eq!(
            d("bytes=9000-20000"),
            Partial {
                start: 9000,
                end: 9999
            }
        );
        assert_eq!(
            d("bytes=-20000"),
            Partial {
                start: 0,
                end: 9999
            }
        );
        assert_eq!(d("bytes=10000-"), Unsatisfiable);
        assert_eq!(d("bytes=10000-10005"), Unsatisfiable);
        assert_eq!(d("bytes=-0"), Unsatisfiable);
        assert_eq!(d("bytes=5-1"), Full, "invalid range is ignored");
        assert_eq!(
            d("bytes=0-1,5-6"),
            Full,
            "multiple ranges: whole representation"
        );
        assert_eq!(d("items=0-1"), Full);
        assert_eq!(d("bytes=x-1"), Full);
        assert_eq!(d("bytes=+1-2"), Full);
        assert_eq!(decide(None, None, E, 10), Full);
        assert_eq!(decide(Some("bytes=-5"), None, E, 0), Unsatisfiable);
    }

    #[test]
    fn if_range() {
        assert_eq!(
            decide(Some("bytes=0-1"), Some(E), E, 10),
            Partial { start: 0, end: 1 }
        );
        assert_eq!(decide(Some("bytes=0-1"), Some("\"other\""), E, 10), Full);
        assert_eq!(
            decide(
                Some("bytes=0-1"),
                Some("Sat, 29 Oct 1994 19:43:31 GMT"),
                E,
                10
            ),
            Full
        );
    }
}
