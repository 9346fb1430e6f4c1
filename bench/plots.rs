//! PNG plots with plotters' bitmap backend. Text goes through ab_glyph with a TTF read at
//! run time, so no fontconfig is needed.

use std::path::Path;

use anyhow::Context as _;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::report::find;
use crate::run::RunResult;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers DejaVu Sans as "sans-serif"; installs fonts-dejavu-core when it is missing.
pub fn load_font() -> anyhow::Result<()> {
    let find = || FONTS.iter().find(|p| Path::new(p).exists());
    if find().is_none() {
        tracing::warn!("no DejaVu font; trying apt-get install fonts-dejavu-core");
        let _ = std::process::Command::new("apt-get")
            .args(["install", "-y", "-q", "fonts-dejavu-core"])
            .status();
    }
    let path = find().context("no DejaVuSans.ttf: apt-get install fonts-dejavu-core")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))?;
    Ok(())
}

fn color(side: &str) -> RGBColor {
    match side {
        "kcm" => RGBColor(214, 39, 40),
        "jobkeeper" => RGBColor(31, 119, 180),
        _ => RGBColor(120, 120, 120),
    }
}

fn name(side: &str) -> &str {
    match side {
        "kcm" => "KCM",
        "jobkeeper" => "jobkeeper",
        _ => "ceiling",
    }
}

pub fn draw(results: &[RunResult], out: &Path) -> anyhow::Result<()> {
    let mut limits: Vec<&str> = Vec::new();
    let mut workloads: Vec<&str> = Vec::new();
    for r in results {
        if !limits.contains(&r.limit.as_str()) {
            limits.push(&r.limit);
        }
        if !workloads.contains(&r.workload.name.as_str()) {
            workloads.push(&r.workload.name);
        }
    }
    for limit in limits {
        let slug = limit.replace('/', "-");
        latency_cdf(
            results,
            limit,
            &workloads,
            &out.join(format!("latency-cdf-{slug}.png")),
        )?;
        completions(
            results,
            limit,
            &workloads,
            &out.join(format!("completions-{slug}.png")),
        )?;
    }
    Ok(())
}

/// One PNG, a title across the top and one panel per workload; `panel` draws each.
fn panels(
    path: &Path,
    title: &str,
    workloads: &[&str],
    mut panel: impl FnMut(&DrawingArea<BitMapBackend<'_>, Shift>, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let width = 520 * workloads.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title_area, body) = root.split_vertically(40);
    title_area.titled(title, ("sans-serif", 22))?;
    for (area, w) in body
        .split_evenly((1, workloads.len().max(1)))
        .iter()
        .zip(workloads)
    {
        panel(area, w)?;
    }
    root.present()?;
    Ok(())
}

/// The legend's sample line for a side.
fn legend_mark(c: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
}

fn draw_legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

fn latency_cdf(
    results: &[RunResult],
    limit: &str,
    workloads: &[&str],
    path: &Path,
) -> anyhow::Result<()> {
    let title = format!("Pod done → Job status counts it, CDF (client limit {limit})");
    panels(path, &title, workloads, |area, w| {
        let series: Vec<(&str, Vec<f64>)> = ["kcm", "jobkeeper"]
            .iter()
            .filter_map(|side| {
                let r = find(results, limit, w, side)?;
                let mut v: Vec<f64> = r.pod_latency_ms.iter().map(|x| x.max(1.0)).collect();
                v.sort_by(f64::total_cmp);
                (!v.is_empty()).then_some((*side, v))
            })
            .collect();
        let max = series
            .iter()
            .filter_map(|(_, v)| v.last().copied())
            .fold(10.0, f64::max)
            * 1.2;
        let mut chart = ChartBuilder::on(area)
            .caption(w, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((1.0..max).log_scale(), 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("ms (log)")
            .y_desc("fraction of pods")
            .label_style(("sans-serif", 13))
            .draw()?;
        for (side, v) in series {
            let n = v.len() as f64;
            let step = (v.len() / 2000).max(1);
            let points: Vec<(f64, f64)> = v
                .iter()
                .enumerate()
                .filter(|(i, _)| i % step == 0 || *i + 1 == v.len())
                .map(|(i, x)| (*x, (i + 1) as f64 / n))
                .collect();
            let c = color(side);
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))?
                .label(name(side))
                .legend(legend_mark(c));
        }
        draw_legend(&mut chart)
    })
}

fn completions(
    results: &[RunResult],
    limit: &str,
    workloads: &[&str],
    path: &Path,
) -> anyhow::Result<()> {
    let title = format!("Pods counted as succeeded over time (client limit {limit})");
    panels(path, &title, workloads, |area, w| {
        let runs: Vec<&RunResult> = ["kcm", "jobkeeper", "ceiling"]
            .iter()
            .filter_map(|side| find(results, limit, w, side))
            .collect();
        let t_max = runs.iter().map(|r| r.wall_s).fold(1.0, f64::max) * 1.05;
        let n_max = runs
            .iter()
            .map(|r| r.pods_succeeded as f64)
            .fold(1.0, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(area)
            .caption(w, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..n_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first Job was created")
            .y_desc("pods counted")
            .label_style(("sans-serif", 13))
            .draw()?;
        for r in runs {
            let step = (r.completions.len() / 2000).max(1);
            let mut points = vec![(0.0, 0.0)];
            let mut last = 0.0;
            for (i, &(t, n)) in r.completions.iter().enumerate() {
                if i % step == 0 || i + 1 == r.completions.len() {
                    points.push((t, last));
                    points.push((t, n as f64));
                    last = n as f64;
                }
            }
            let c = color(&r.side);
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))?
                .label(name(&r.side))
                .legend(legend_mark(c));
        }
        draw_legend(&mut chart)
    })
}
