//! PNG charts with plotters' bitmap backend. Text is drawn with DejaVu Sans
//! compiled into the program (plotters' `ab_glyph` feature), so no system
//! font or fontconfig is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 6] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registering can only fail on a font that does not parse.
        let _ = register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e:?}")
}

/// One series of values, one per group (`None`: no bar).
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

/// Grouped bars: one group per entry of `groups`, one bar per series, the
/// value written above each bar.
pub fn bars(path: &Path, title: &str, y_label: &str, groups: &[String], series: &[Series]) -> anyhow::Result<()> {
    fonts();
    let root = BitMapBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |a, b| a.max(*b));
    let top = if max > 0.0 { max * 1.18 } else { 1.0 };
    let n = groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_label)
        .y_label_formatter(&|v| short(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    for (si, s) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let rects: Vec<Rectangle<(f64, f64)>> = s
            .values
            .iter()
            .enumerate()
            .filter_map(|(gi, v)| {
                let v = (*v)?;
                let x0 = gi as f64 + 0.1 + si as f64 * width;
                Some(Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], color.filled()))
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        let labels: Vec<Text<(f64, f64), String>> = s
            .values
            .iter()
            .enumerate()
            .filter_map(|(gi, v)| {
                let v = (*v)?;
                let x = gi as f64 + 0.1 + si as f64 * width + width * 0.46;
                Some(Text::new(
                    short(v),
                    (x, v),
                    (FONT, 12)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                ))
            })
            .collect();
        chart.draw_series(labels).map_err(err)?;
    }
    group_labels(&root, &chart, groups)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn group_labels(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    chart: &ChartContext<
        '_,
        BitMapBackend<'_>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    groups: &[String],
) -> anyhow::Result<()> {
    let style = (FONT, 15)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (i, g) in groups.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(g.clone(), (x, y + 8), style.clone()))
            .map_err(err)?;
    }
    Ok(())
}

/// Lines over a logarithmic x axis (rule counts).
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    xs: &[usize],
    series: &[Series],
) -> anyhow::Result<()> {
    fonts();
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |a, b| a.max(*b));
    let (lo, hi) = (
        *xs.first().unwrap_or(&1) as f64 * 0.8,
        *xs.last().unwrap_or(&10) as f64 * 1.25,
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..(max * 1.25).max(1.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| short(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    for (si, s) in series.iter().enumerate() {
        let color = COLORS[(si + 1) % COLORS.len()];
        let style = if si % 2 == 0 {
            color.stroke_width(2)
        } else {
            color.mix(0.6).stroke_width(2)
        };
        let points: Vec<(f64, f64)> = xs
            .iter()
            .zip(&s.values)
            .filter_map(|(x, v)| v.map(|v| (*x as f64, v)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), style))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// 1234567 → "1.23M", 0.5 → "0.50".
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
