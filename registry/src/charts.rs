//! The dashboard's charts, drawn as SVG on the server (`plotters`): no script, no
//! third-party request, readable where the page is.

use plotters::prelude::*;

/// One series: a name (shown in the legend) and its points.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points, in x order.
    pub points: Vec<(f64, f64)>,
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// A line chart (with a marker at each point when there are few) as an SVG document
/// sized `w`×`h` (it scales with the page through its viewBox). `None` when there is
/// nothing to draw.
pub fn lines(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Option<String> {
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if all.is_empty() {
        return None;
    }
    let (mut x0, mut x1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if x1 <= x0 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    y0 = y0.min(0.0);
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    y1 += (y1 - y0) * 0.05;
    let (w, h) = (720u32, 300u32);
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        // Integer x ticks only (layers and tensor indices are whole numbers), at most 12;
        // y labels with as many decimals as the tick step needs.
        let x_ticks = ((x1 - x0).round() as usize + 1).clamp(2, 12);
        let step = (y1 - y0) / 10.0;
        let decimals = (-step.log10()).ceil().clamp(0.0, 6.0) as usize;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .x_labels(x_ticks)
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.decimals$}"))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
            if pts.len() <= 64 {
                chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
            }
        }
        if series.len() > 1 || series.first().is_some_and(|s| !s.name.is_empty()) {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }
        root.present()?;
        Ok(())
    })();
    match drawn {
        Ok(()) => Some(svg),
        Err(e) => {
            tracing::warn!("chart {title:?}: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_its_title_and_legend_and_nothing_is_drawn_from_nothing() {
        let s = lines(
            "bits per layer",
            "layer",
            "bits/weight",
            &[
                Series {
                    name: "balanced".into(),
                    points: vec![(0.0, 4.2), (1.0, 4.3), (2.0, 4.1)],
                },
                Series {
                    name: "size".into(),
                    points: vec![(0.0, 3.2), (1.0, 3.3), (2.0, f64::NAN)],
                },
            ],
        )
        .expect("a chart");
        assert!(s.starts_with("<svg"), "{}", &s[..80.min(s.len())]);
        assert!(s.contains("bits per layer") && s.contains("balanced") && s.contains("size"));
        assert!(!s.contains("http://") || s.contains("xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(lines("t", "x", "y", &[]).is_none());
        assert!(lines(
            "t",
            "x",
            "y",
            &[Series {
                name: String::new(),
                points: vec![(0.0, f64::INFINITY)]
            }]
        )
        .is_none());
    }
}
