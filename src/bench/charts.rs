//! SVG charts of benchmark results (plotters): latency against load level, and latency over time with the
//! flips marked.

use super::client::Record;
use super::stats::Summary;
use anyhow::anyhow;
use plotters::prelude::*;
use std::path::Path;

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// p50 and p99 of TTFT, ITL and end-to-end latency against concurrency (one x position per summary).
pub fn latency_vs_load(path: &Path, rows: &[Summary], x_values: &[f64], x_label: &str) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    type Series = (&'static str, fn(&Summary) -> f64, RGBColor);
    let series: [Series; 6] = [
        ("TTFT p50", |s| s.ttft_ms.p50, BLUE),
        ("TTFT p99", |s| s.ttft_ms.p99, CYAN),
        ("ITL p50", |s| s.itl_ms.p50, RED),
        ("ITL p99", |s| s.itl_ms.p99, MAGENTA),
        ("e2e p50", |s| s.e2e_ms.p50, GREEN),
        ("e2e p99", |s| s.e2e_ms.p99, BLACK),
    ];
    let y_max = rows.iter().flat_map(|r| series.iter().map(move |(_, f, _)| f(r))).fold(1.0f64, f64::max) * 1.1;
    let x_max = x_values.iter().copied().fold(1.0f64, f64::max) * 1.3;
    let mut chart = ChartBuilder::on(&root)
        .caption("teal bench serve: latency against load", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0.8f64..x_max).log_scale(), 0f64..y_max)
        .map_err(err)?;
    chart.configure_mesh().x_desc(x_label).y_desc("latency (ms)").draw().map_err(err)?;
    for (name, f, color) in series {
        let pts: Vec<(f64, f64)> = x_values.iter().copied().zip(rows.iter().map(f)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Every request's TTFT and end-to-end latency at its start time, with a vertical line at each flip.
pub fn latency_over_time(path: &Path, records: &[Record], flips: &[f64], title: &str) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let ok: Vec<&Record> = records.iter().filter(|r| r.error.is_none()).collect();
    let x_max = records.iter().map(|r| r.start + r.e2e).fold(1.0f64, f64::max);
    let y_max = ok.iter().map(|r| r.e2e * 1e3).fold(1.0f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(err)?;
    chart.configure_mesh().x_desc("request start (s)").y_desc("latency (ms)").draw().map_err(err)?;
    let flip_color = RGBColor(255, 140, 0);
    chart
        .draw_series(flips.iter().map(|&t| PathElement::new(vec![(t, 0.0), (t, y_max)], flip_color.mix(0.5))))
        .map_err(err)?
        .label("flip")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], flip_color));
    chart
        .draw_series(ok.iter().map(|r| Circle::new((r.start, r.e2e * 1e3), 2, BLACK.filled())))
        .map_err(err)?
        .label("end to end")
        .legend(|(x, y)| Circle::new((x + 8, y), 3, BLACK.filled()));
    chart
        .draw_series(ok.iter().map(|r| Circle::new((r.start, r.ttft * 1e3), 2, BLUE.filled())))
        .map_err(err)?
        .label("time to first token")
        .legend(|(x, y)| Circle::new((x + 8, y), 3, BLUE.filled()));
    let failed: Vec<&Record> = records.iter().filter(|r| r.error.is_some()).collect();
    chart
        .draw_series(failed.iter().map(|r| Cross::new((r.start, 0.0), 5, RED.stroke_width(2))))
        .map_err(err)?
        .label("failed request")
        .legend(|(x, y)| Cross::new((x + 8, y), 4, RED.stroke_width(2)));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)
}
