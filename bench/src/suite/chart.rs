//! `keyward-bench --chart FILE`: latency (p50, p99) and calls/s against concurrency, for VerifyKey
//! and the no-op RPC, drawn from a suite's report as SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::{
    error::{BenchError, Result},
    suite::report::{Report, Row, Stats},
};

/// One line of the chart: (concurrency, value) points.
struct Line {
    label: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// The lines of both panels: latencies (ms) and rates (calls/s).
fn lines(report: &Report) -> (Vec<Line>, Vec<Line>) {
    let verify: Vec<_> = report.rows.iter().filter(|r| r.scenario == "verify").collect();
    let at =
        |f: &dyn Fn(&Row) -> f64| -> Vec<(f64, f64)> { verify.iter().map(|r| (r.concurrency as f64, f(r))).collect() };
    let noop = |f: &dyn Fn(&Stats) -> f64| -> Vec<(f64, f64)> {
        report.baselines.iter().map(|b| (b.concurrency as f64, (f(&b.noop_before) + f(&b.noop_after)) / 2.0)).collect()
    };
    let latency = vec![
        Line { label: "VerifyKey p50", color: RGBColor(31, 119, 180), points: at(&|r| r.stats.p50_ms) },
        Line { label: "VerifyKey p99", color: RGBColor(214, 39, 40), points: at(&|r| r.stats.p99_ms) },
        Line { label: "no-op p50", color: RGBColor(44, 160, 44), points: noop(&|s| s.p50_ms) },
        Line { label: "no-op p99", color: RGBColor(255, 127, 14), points: noop(&|s| s.p99_ms) },
    ];
    let rate = vec![
        Line { label: "VerifyKey calls/s", color: RGBColor(31, 119, 180), points: at(&|r| r.stats.calls_per_sec) },
        Line { label: "no-op calls/s", color: RGBColor(44, 160, 44), points: noop(&|s| s.calls_per_sec) },
    ];
    (latency, rate)
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Chart(e.to_string())
}

/// Draws one panel; both axes' ranges come from the points (x and, with `log_y`, y logarithmic).
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    lines: &[Line],
    log_y: bool,
) -> Result<()> {
    let points = || lines.iter().flat_map(|l| l.points.iter()).filter(|(_, y)| y.is_finite() && *y > 0.0);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(BenchError::NothingToChart);
    }
    let mut chart = ChartBuilder::on(area);
    chart.caption(title, ("sans-serif", 20)).margin(15).x_label_area_size(40).y_label_area_size(70);
    let x = ((x0 / 1.3).max(0.5)..x1 * 1.3).log_scale();
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart.configure_mesh().x_desc("concurrent calls").y_desc(y_desc).draw().map_err(err)?;
            for l in lines {
                let style = l.color.stroke_width(2);
                let series = l.points.iter().copied().filter(|(_, y)| y.is_finite() && *y > 0.0);
                chart
                    .draw_series(LineSeries::new(series, style).point_size(3))
                    .map_err(err)?
                    .label(l.label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
        }};
    }
    if log_y {
        draw!(chart.build_cartesian_2d(x, (y0 / 1.5..y1 * 1.5).log_scale()).map_err(err)?);
    } else {
        draw!(chart.build_cartesian_2d(x, 0.0..y1 * 1.15).map_err(err)?);
    }
    Ok(())
}

/// Writes the SVG to `path`.
pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let (latency, rate) = lines(report);
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(600);
    panel(&left, "Latency vs concurrency", "ms (log)", &latency, true)?;
    panel(&right, "Throughput vs concurrency", "calls/s", &rate, false)?;
    root.present().map_err(err)
}
