//! SVG charts for the reports (plotters' SVG backend: text is left to the
//! viewer's fonts, so nothing here needs a font library).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

/// One line of a chart: its name and its (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Labels and scale of one chart.
pub struct Axes<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    /// Plot x as log10 (labels show the value itself).
    pub log_x: bool,
    /// Plot y as log10 (labels show the value itself).
    pub log_y: bool,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn label(v: f64, log: bool) -> String {
    let v = if log { 10f64.powf(v) } else { v };
    // A log axis labels only 1, 2 and 5 times a power of ten.
    if log && v > 0.0 {
        let mantissa = v / 10f64.powf(v.log10().floor());
        if ![1.0, 2.0, 5.0, 10.0]
            .iter()
            .any(|m| (mantissa - m).abs() < 0.08 * m)
        {
            return String::new();
        }
    }
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
    .replace(".000", "")
}

/// Draws `series` as lines with points into the SVG file `path`.
pub fn line_chart(path: &Path, axes: &Axes, series: &[Series]) -> anyhow::Result<()> {
    draw(path, (900, 500), |root| plot(root, axes, series))
}

/// Several charts stacked vertically in one SVG file.
pub fn stacked(path: &Path, panels: &[(Axes, Vec<Series>)]) -> anyhow::Result<()> {
    let height = 380 * panels.len().max(1) as u32;
    draw(path, (900, height), |root| {
        for (area, (axes, series)) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
            plot(area, axes, series)?;
        }
        Ok(())
    })
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw(
    path: &Path,
    size: (u32, u32),
    f: impl FnOnce(&Area) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("chart: {e}"))?;
    f(&root)?;
    root.present()
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

fn plot(area: &Area, axes: &Axes, series: &[Series]) -> anyhow::Result<()> {
    let tx = |x: f64| if axes.log_x { x.max(1e-9).log10() } else { x };
    let ty = |y: f64| if axes.log_y { y.max(1e-9).log10() } else { y };
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points() {
        (x0, x1) = (x0.min(tx(x)), x1.max(tx(x)));
        (y0, y1) = (y0.min(ty(y)), y1.max(ty(y)));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if !axes.log_y {
        y0 = y0.min(0.0);
    }
    let pad = |a: f64, b: f64| if b > a { (b - a) * 0.05 } else { 0.5 };
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    let mut chart = ChartBuilder::on(area)
        .caption(axes.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            x0 - px..x1 + px,
            y0 - if axes.log_y { py } else { 0.0 }..y1 + py,
        )
        .map_err(|e| anyhow!("chart: {e}"))?;
    chart
        .configure_mesh()
        .x_desc(axes.x)
        .y_desc(axes.y)
        .x_label_formatter(&|v| label(*v, axes.log_x))
        .y_label_formatter(&|v| label(*v, axes.log_y))
        .draw()
        .map_err(|e| anyhow!("chart: {e}"))?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (tx(x), ty(y))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("chart: {e}"))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if pts.len() <= 40 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| anyhow!("chart: {e}"))?;
        }
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| anyhow!("chart: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axes_label_only_round_values() {
        assert_eq!(label(6.0, true), "1M");
        assert_eq!(label(2e6f64.log10(), true), "2M");
        assert_eq!(label(1.585e6f64.log10(), true), "");
        assert_eq!(label(0.5, false), "0.50");
    }

    #[test]
    fn charts_are_written_as_svg_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let axes = Axes {
            title: "latency vs load",
            x: "offered QPS",
            y: "ms",
            log_x: false,
            log_y: true,
        };
        let series = vec![
            Series {
                name: "p50".into(),
                points: vec![(100.0, 0.4), (200.0, 0.5), (400.0, 2.0)],
            },
            Series {
                name: "p99".into(),
                points: vec![(100.0, 1.0), (200.0, 1.5), (400.0, 20.0)],
            },
        ];
        line_chart(&path, &axes, &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        for text in ["latency vs load", "offered QPS", "p50", "p99"] {
            assert!(svg.contains(text), "{text} missing");
        }
        // Empty series still give a chart, not an error.
        line_chart(&path, &axes, &[]).unwrap();
        assert_eq!(label(6.0, true), "1M");
        assert_eq!(label(0.25, false), "0.25");
    }
}
