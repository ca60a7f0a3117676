//! PNG plots: nanoseconds per packet on the receiving CPU over list size (both axes log), one
//! line per system (lower is better). Text is drawn with ab_glyph
//! from DejaVu Sans (Debian's fonts-dejavu-core, installed by `cargo xtask setup`), registered
//! at run time, so no fontconfig is needed.

use std::{path::Path, sync::OnceLock};

use anyhow::{Context as _, anyhow};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

use super::{Family, SizeResult, Workload, summary};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

const PALETTE: [RGBColor; 10] = [
    RGBColor(120, 120, 120),
    RGBColor(0, 0, 0),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn register_sans() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = FONT_PATHS
                .iter()
                .find(|p| Path::new(p).exists())
                .ok_or_else(|| {
                    "DejaVuSans.ttf not found: install fonts-dejavu-core (cargo xtask setup)"
                        .to_string()
                })?;
            let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
            // plotters keeps the font for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a usable font"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

pub(crate) fn draw(
    path: &Path,
    workload: Workload,
    family: Family,
    results: &[SizeResult],
) -> anyhow::Result<()> {
    register_sans()?;
    let Some(first) = results.first() else {
        return Ok(());
    };
    // Per system: (size, median ns per packet on the receiving CPU) where measured.
    let series: Vec<(&str, Vec<(f64, f64)>)> = (0..first.systems.len())
        .map(|i| {
            let points = results
                .iter()
                .filter_map(|s| {
                    let r = s.systems.get(i)?;
                    let values: Vec<f64> = r.samples(workload).iter().map(|x| x.rx_ns).collect();
                    summary(&values).map(|(med, _, _)| (s.size as f64, med))
                })
                .collect();
            (first.systems[i].system.label(), points)
        })
        .collect();
    let max_size = results.iter().map(|s| s.size).max().unwrap_or(1).max(10) as f64;
    let costs = || series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
    let max_cost = costs().fold(0.0f64, f64::max).max(10.0) * 1.4;
    let min_cost = costs()
        .fold(f64::MAX, f64::min)
        .min(max_cost / 2.0)
        .max(1.0)
        / 1.4;

    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let title = format!(
        "Receiving CPU per packet, {} ({})",
        workload.label(),
        match workload {
            Workload::Hit => "dropped",
            Workload::Miss => "passed through",
        }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (0.8f64..max_size * 1.25).log_scale(),
            (min_cost..max_cost).log_scale().with_key_points(vec![
                10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
            ]),
        )
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "list size ({} prefixes, log scale)",
            family.label()
        ))
        .y_desc("ns per packet (median, log scale; lower is better)")
        .x_label_formatter(&|x| format_size(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    for (i, (label, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e:?}"))?
            .label(*label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present()
        .map_err(|e| anyhow!("{e:?}"))
        .with_context(|| format!("writing {}", path.display()))
}

fn format_size(x: f64) -> String {
    match x {
        x if x >= 1e6 => format!("{:.0}M", x / 1e6),
        x if x >= 1e3 => format!("{:.0}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}
