//! The Pareto plot of an optimization: bits per weight (x) against PPL change over the
//! source (y), one labelled point per candidate, the frontier drawn through the points
//! nothing beats on both axes, the chosen one ringed. Plain SVG, no dependencies.

use std::fmt::Write;

use super::Decision;

const W: f64 = 760.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Nice" tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut v = vec![];
    let mut t = (lo / step).floor() * step;
    while t <= hi + step * 1e-6 {
        if t >= lo - step * 1e-6 {
            v.push(t);
        }
        t += step;
    }
    v
}

/// The plot as an SVG document. `title` goes on top (the model's name).
pub fn pareto_svg(d: &Decision, title: &str) -> String {
    let pts: Vec<(f64, f64, &str, bool, bool)> = d
        .rows
        .iter()
        .map(|r| {
            let chosen = d
                .chosen
                .as_ref()
                .is_some_and(|(c, _)| *c == r.measured.candidate);
            (
                r.measured.bits_per_weight,
                r.ppl_delta_pct,
                r.measured.candidate.as_str(),
                r.on_frontier,
                chosen,
            )
        })
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0f64, f64::MIN);
    for &(x, y, ..) in &pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    // One far-off point (a budget that broke the model) would flatten the rest: above
    // three times the next largest change, the axis stops and that point sits on the top
    // edge, its value in its label.
    let mut ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
    ys.sort_by(|a, b| b.total_cmp(a));
    if let [top, next, ..] = ys[..] {
        if next > 0.0 && top > 3.0 * next {
            y1 = next * 1.3;
        }
    }
    let cap = y1;
    if pts.is_empty() {
        (x0, x1, y1) = (0.0, 16.0, 1.0);
    }
    let padx = ((x1 - x0) * 0.08).max(0.25);
    let pady = ((y1 - y0) * 0.1).max(0.5);
    let (x0, x1, y0, y1) = (x0 - padx, x1 + padx, y0 - pady, y1 + pady);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let sy = |y: f64| H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    // Axes, grid and ticks.
    for t in ticks(x0, x1) {
        let x = sx(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{t}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 16.0
        );
    }
    for t in ticks(y0, y1) {
        let y = sy(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{t}%</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/>"##,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">bits per weight (every stored byte counted)</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">PPL change vs source (same windows)</text>"#,
        (TOP + H - BOTTOM) / 2.0
    );
    // The frontier, left to right.
    let mut front: Vec<(f64, f64)> = pts
        .iter()
        .filter(|p| p.3)
        .map(|p| (sx(p.0), sy(p.1.min(cap))))
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    if front.len() > 1 {
        let path: Vec<String> = front
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2" stroke-dasharray="6 3"/>"##,
            path.join(" ")
        );
    }
    // Labels placed where they overlap no earlier one (approximate text boxes).
    let mut placed: Vec<(f64, f64, f64, f64)> = vec![];
    for &(x, y, name, on, chosen) in &pts {
        let clipped = y > cap;
        let (px, py) = (sx(x), sy(y.min(cap)));
        let fill = if on { "#1f77b4" } else { "#aaa" };
        let _ = writeln!(
            s,
            r#"<circle cx="{px:.1}" cy="{py:.1}" r="5" fill="{fill}"><title>{}: {x:.3} bits/weight, {y:+.2}%</title></circle>"#,
            esc(name)
        );
        if chosen {
            let _ = writeln!(
                s,
                r##"<circle cx="{px:.1}" cy="{py:.1}" r="11" fill="none" stroke="#d62728" stroke-width="2.5"/>"##
            );
        }
        let mut label = name.to_string();
        if clipped {
            label.push_str(&format!(" ({y:+.0}% ↑)"));
        }
        if chosen {
            label.push_str(" (chosen)");
        }
        let width = 6.5 * label.chars().count() as f64;
        let spot = [
            (8.0, -8.0),
            (8.0, 16.0),
            (-8.0 - width, -8.0),
            (-8.0 - width, 16.0),
            (8.0, -22.0),
            (8.0, 30.0),
            (-8.0 - width, -22.0),
            (-8.0 - width, 30.0),
        ]
        .into_iter()
        .map(|(dx, dy)| (px + dx, py + dy))
        .find(|&(lx, ly)| {
            !placed
                .iter()
                .any(|&(ax, ay, aw, _)| lx < ax + aw && ax < lx + width && (ly - ay).abs() < 13.0)
        })
        .unwrap_or((px + 8.0, py - 8.0));
        placed.push((spot.0, spot.1, width, 13.0));
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="{}">{}</text>"##,
            spot.0,
            spot.1,
            if chosen { "#d62728" } else { "#333" },
            esc(&label)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#1f77b4">- - frontier</text>"##,
        W - RIGHT,
        TOP + 4.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_cover_the_range() {
        let t = ticks(2.7, 16.3);
        assert!(t.first().is_some_and(|&a| a >= 2.7) && t.last().is_some_and(|&b| b <= 16.3));
        assert!(t.len() >= 3 && t.len() <= 12, "{t:?}");
    }
}
