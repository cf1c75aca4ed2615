//! `--plot FILE.svg`: latency over time (each call a dot, at when it started) above a
//! histogram of latencies (log-spaced bins, each row's share of its calls), one colour per
//! row of the table.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Row, Sample};

/// The latency range and the run's length, shared by both charts.
#[derive(Clone, Copy)]
struct Span {
    lo: f64,
    hi: f64,
    end: f64,
}

fn err(e: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Dots in the latency-over-time chart, all rows together: the file stays under 200 KB however
/// long the run (each row keeps an even sample of its calls, and every failed one).
const MAX_DOTS: usize = 1500;

/// Draws `rows` into `path` under `heading` (the run's parameters, date and errors);
/// `several`: the legend names each row's clients and size too.
pub(super) fn plot(path: &Path, heading: &str, rows: &[Row], several: bool) -> anyhow::Result<()> {
    let all: Vec<&Sample> = rows.iter().flat_map(|r| &r.samples).collect();
    let lo = all.iter().map(|s| s.ms).fold(f64::MAX, f64::min).max(0.01);
    let span = Span {
        lo,
        hi: all.iter().map(|s| s.ms).fold(0.0, f64::max).max(lo * 2.0),
        end: all.iter().map(|s| s.at).fold(0.0, f64::max).max(0.1),
    };
    let root = SVGBackend::new(path, (1100, 930)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (title, charts) = root.split_vertically(30);
    title
        .draw_text(
            heading,
            &("sans-serif", 15).into_text_style(&title),
            (15, 10),
        )
        .map_err(|e| err(&e))?;
    let (top, bottom) = charts.split_vertically(470);
    over_time(&top, rows, &span, several)?;
    histogram(&bottom, rows, &span, several)?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn over_time(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    rows: &[Row],
    span: &Span,
    several: bool,
) -> anyhow::Result<()> {
    let Span { lo, hi, end } = *span;
    let mut chart = ChartBuilder::on(area)
        .caption("chaserfs bench: latency over time", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end * 1.02, (lo * 0.8..hi * 1.25).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the bench started")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| err(&e))?;
    let per_row = (MAX_DOTS / rows.len().max(1)).max(1);
    for (i, r) in rows.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let every = r.samples.len().div_ceil(per_row).max(1);
        chart
            .draw_series(
                r.samples
                    .iter()
                    .enumerate()
                    .filter(|(k, s)| k % every == 0 || !s.ok)
                    .map(|(_, s)| Circle::new((s.at, s.ms.max(lo)), 2, colour.filled())),
            )
            .map_err(|e| err(&e))?
            .label(r.label(several))
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
    }
    // Upper left: the slow operations (sessions) come last, on the right.
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

fn histogram(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    rows: &[Row],
    span: &Span,
    several: bool,
) -> anyhow::Result<()> {
    const BINS: usize = 40;
    let Span { lo, hi, .. } = *span;
    let ratio = (hi / lo).ln() / BINS as f64;
    let bin_of = |ms: f64| (((ms.max(lo) / lo).ln() / ratio) as usize).min(BINS - 1);
    // Shares rather than counts, so a slow operation's few calls show beside a fast one's many.
    let shares: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![0.0; BINS];
            for s in &r.samples {
                c[bin_of(s.ms)] += 100.0 / r.samples.len() as f64;
            }
            c
        })
        .collect();
    let top_share = shares.iter().flatten().copied().fold(1.0, f64::max);
    let mut hist = ChartBuilder::on(area)
        .caption("latency histogram", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..top_share * 1.1)
        .map_err(|e| err(&e))?;
    hist.configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("% of the operation's calls")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (r, c)) in rows.iter().zip(&shares).enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let centre = |k: usize| lo * ((k as f64 + 0.5) * ratio).exp();
        hist.draw_series(LineSeries::new(
            c.iter().enumerate().map(|(k, n)| (centre(k), *n)),
            colour.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label(r.label(several))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    hist.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}
