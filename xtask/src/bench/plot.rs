//! One figure per workload, like the Hermes paper's: p90 latency against achieved throughput,
//! one line per setup, as SVG and PNG. Latency is on a log scale: the setups differ by orders of
//! magnitude at low load, and every line turns upwards at saturation.
use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};

use super::{deploy::Setup, plan::P90_LIMIT_MS, point::Point, workload::Workload};

/// Debian's fonts-dejavu-core.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1160, 640);
/// Room right of the chart for the legend, which inside it would hide the lines' steep ends.
const LEGEND_WIDTH: u32 = 190;
/// The p90 limit's line.
const GRAY: RGBColor = RGBColor(120, 120, 120);
/// Colours that stay distinct for colour-blind readers (Okabe and Ito), one per setup, in the
/// order of [`Setup::ALL`].
const COLORS: [RGBColor; 7] = [
    RGBColor(0, 0, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(204, 121, 167),
    RGBColor(0, 158, 115),
    RGBColor(230, 159, 0),
];

/// Makes the font available to plotters, which draws text with fonts registered at run time.
pub fn load_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (install Debian's fonts-dejavu-core)"))?;
    // plotters keeps registered fonts for the rest of the process and wants them 'static.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a font that plotters can read"))
}

/// Writes `<workload>.svg` and `<workload>.png` into `dir`. Needs [`load_font`] first.
pub fn draw(dir: &Path, workload: Workload, points: &[Point]) -> anyhow::Result<()> {
    let lines = lines(workload, points);
    let svg = dir.join(format!("{}.svg", workload.name()));
    chart(
        SVGBackend::new(&svg, SIZE).into_drawing_area(),
        workload,
        &lines,
    )
    .map_err(|e| anyhow!("drawing {}: {e}", svg.display()))?;
    let png = dir.join(format!("{}.png", workload.name()));
    chart(
        BitMapBackend::new(&png, SIZE).into_drawing_area(),
        workload,
        &lines,
    )
    .map_err(|e| anyhow!("drawing {}: {e}", png.display()))
}

/// One setup's points under the workload, in the order of the offered rates.
struct Line<'a> {
    setup: Setup,
    color: RGBColor,
    points: Vec<&'a Point>,
}

fn lines(workload: Workload, points: &[Point]) -> Vec<Line<'_>> {
    Setup::ALL
        .iter()
        .zip(COLORS)
        .map(|(&setup, color)| {
            let mut mine: Vec<&Point> = points.iter().filter(|p| p.is(setup, workload)).collect();
            mine.sort_by(|a, b| a.offered.total_cmp(&b.offered));
            Line {
                setup,
                color,
                points: mine,
            }
        })
        .filter(|line| !line.points.is_empty())
        .collect()
}

fn chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    workload: Workload,
    lines: &[Line<'_>],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let all = || lines.iter().flat_map(|line| line.points.iter());
    let x_max = all().map(|p| p.achieved).fold(1.0, f64::max) * 1.05;
    // Zero latency cannot be shown on a log scale; the floor is below any real p90.
    let y_min = all()
        .map(|p| p.p90_ms)
        .fold(P90_LIMIT_MS, f64::min)
        .max(0.01)
        / 1.5;
    let y_max = all().map(|p| p.p90_ms).fold(P90_LIMIT_MS, f64::max) * 1.5;

    root.fill(&WHITE)?;
    let (plot_area, legend_area) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(
            format!("{}: {}", workload.name(), workload.description()),
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("achieved throughput (requests/s)")
        .y_desc("p90 latency (ms)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| short(*y))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()?;

    chart.draw_series(DashedLineSeries::new(
        [(0.0, P90_LIMIT_MS), (x_max, P90_LIMIT_MS)],
        8,
        6,
        GRAY.stroke_width(1),
    ))?;
    for line in lines {
        let color = line.color;
        let xy: Vec<(f64, f64)> = line.points.iter().map(|p| (p.achieved, p.p90_ms)).collect();
        chart.draw_series(LineSeries::new(xy.iter().copied(), color.stroke_width(2)))?;
        // Saturated points hollow, the others filled.
        chart.draw_series(line.points.iter().zip(&xy).map(|(point, &at)| {
            let style = if point.saturated {
                color.stroke_width(2)
            } else {
                color.filled()
            };
            Circle::new(at, 4, style)
        }))?;
    }
    legend(&legend_area, lines)?;
    root.present()
}

fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lines: &[Line<'_>],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let font = ("sans-serif", 15);
    let row = |i: usize| 70 + 24 * i as i32;
    for (i, line) in lines.iter().enumerate() {
        let y = row(i);
        area.draw(&PathElement::new(
            [(4, y), (32, y)],
            line.color.stroke_width(3),
        ))?;
        area.draw(&Text::new(line.setup.name(), (40, y - 8), font))?;
    }
    let y = row(lines.len());
    area.draw(&PathElement::new([(4, y), (32, y)], GRAY.stroke_width(1)))?;
    area.draw(&Text::new(
        format!("p90 limit, {P90_LIMIT_MS} ms"),
        (40, y - 8),
        font,
    ))?;
    let y = row(lines.len() + 1);
    area.draw(&Circle::new((18, y), 4, BLACK.stroke_width(2)))?;
    area.draw(&Text::new("saturated", (40, y - 8), font))?;
    Ok(())
}

/// A tick label: as few digits as the magnitude needs.
fn short(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}
