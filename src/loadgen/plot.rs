//! Saved reports (`wconf-bench --json`) turned into what a reader looks at:
//! a markdown table of every run, `throughput.svg` (operations per second
//! against connections, one line per workload) and `latency.svg` (p50, p99
//! and p999 against connections, one panel per workload), drawn with
//! plotters so anyone can redraw them from the same files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{micros, thousands, Report};
use super::workload::Workload;

/// Reads reports, renders all three files into `out`, and answers their
/// paths. `title` goes above the table: say there how the numbers were made.
pub fn render(files: &[PathBuf], out: &Path, title: &str) -> Result<Vec<PathBuf>, String> {
    let mut reports = Vec::with_capacity(files.len());
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let r: Report = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a report: {e}", f.display()))?;
        reports.push(r);
    }
    reports.sort_by_key(|r| (r.workload, r.connections));
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let table_path = out.join("results.md");
    std::fs::write(&table_path, table(&reports, title))
        .map_err(|e| format!("{}: {e}", table_path.display()))?;
    let throughput_path = out.join("throughput.svg");
    throughput_svg(&reports, &throughput_path, title)?;
    let latency_path = out.join("latency.svg");
    latency_svg(&reports, &latency_path, title)?;
    Ok(vec![table_path, throughput_path, latency_path])
}

fn opt_us(v: Option<f64>) -> String {
    v.map_or("-".into(), micros)
}

fn opt_cores(v: Option<f64>) -> String {
    v.map_or("?".into(), |c| format!("{c:.2}"))
}

/// One row per report, in workload and connection order.
pub fn table(reports: &[Report], title: &str) -> String {
    let mut t = String::new();
    if !title.is_empty() {
        let _ = writeln!(t, "{title}\n");
    }
    t.push_str(
        "| workload | connections | throughput | p50 | p99 | p999 | errors | records/fsync | fsync p50 | CPU cores: bench / wconfd / other | CPU per op: bench / wconfd |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for r in reports {
        let wal = r.daemon.wal.as_ref();
        let _ = writeln!(
            t,
            "| {} | {} | {} {}/s | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} / {} |",
            r.workload.name(),
            r.connections,
            thousands(r.throughput),
            r.unit,
            micros(r.latency_us.p50 as f64),
            micros(r.latency_us.p99 as f64),
            micros(r.latency_us.p999 as f64),
            r.errors.total,
            wal.and_then(|w| w.records_per_sync)
                .map_or("-".into(), |v| format!("{v:.1}")),
            opt_us(wal.and_then(|w| w.sync_p50_us)),
            opt_cores(r.cpu.bench_cores),
            opt_cores(r.cpu.daemon_cores),
            opt_cores(r.cpu.other_cores),
            opt_us(r.cpu.bench_us_per_op),
            opt_us(r.cpu.daemon_us_per_op),
        );
    }
    if let Some(r) = reports.first() {
        let mode = r.rate.map_or("closed loop".to_string(), |v| {
            format!("open loop at {v} ops/s")
        });
        let _ = writeln!(
            t,
            "\n{mode}; {} s measured after {} s warm-up; --keys {} --value-bytes {} \
             --instances {} --write-ratio {}{}{}; latency is per operation (a whole job for `job`, \
             acquire plus write for `contended`); errors count the whole run; records/fsync and \
             fsync p50 are the daemon's `/metrics` over the measured window; CPU in cores \
             (of {}) over the window.",
            r.duration_s,
            r.warmup_s,
            r.params.keys,
            r.params.value_bytes,
            r.params.instances,
            r.params.write_ratio,
            if r.params.read_whole {
                " --read-whole"
            } else {
                ""
            },
            // A job-only flag: the first report is seldom a job's.
            if reports.iter().any(|r| r.params.release_before_close) {
                " --release-before-close (job)"
            } else {
                ""
            },
            r.cpu.cores
        );
    }
    t
}

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

fn by_workload(reports: &[Report]) -> BTreeMap<Workload, Vec<&Report>> {
    let mut m: BTreeMap<Workload, Vec<&Report>> = BTreeMap::new();
    for r in reports {
        m.entry(r.workload).or_default().push(r);
    }
    m
}

/// A log axis range covering `values` with room around them.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 1.0..10.0;
    }
    lo / 2.0..hi * 2.0
}

fn connections_range(reports: &[Report]) -> std::ops::Range<f64> {
    let hi = reports.iter().map(|r| r.connections).max().unwrap_or(1) as f64;
    0.7..hi * 1.5
}

fn draw_err<E: std::error::Error>(path: &Path) -> impl Fn(E) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// A log-log chart on an SVG.
type LogChart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<LogCoord<f64>, LogCoord<f64>>>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// One series: a line through `points`, a dot on each, and a legend entry.
fn line(
    chart: &mut LogChart,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    label: String,
) -> DrawResult {
    let dots: Vec<_> = points
        .iter()
        .map(|&p| Circle::new(p, 4, color.filled()))
        .collect();
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart.draw_series(dots)?;
    Ok(())
}

fn legend<'a, 'b: 'a>(chart: &mut LogChart<'a, 'b>, position: SeriesLabelPosition) -> DrawResult {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// Characters of the footer's lines, about the width of the plots.
const FOOTER_LINE_CHARS: usize = 150;

/// Writes `title` (how the numbers were made) along the bottom, so a plot
/// seen on its own still says where it comes from, and answers the area
/// above it.
fn footer<'a>(
    root: DrawingArea<SVGBackend<'a>, Shift>,
    title: &str,
) -> Result<DrawingArea<SVGBackend<'a>, Shift>, DrawingAreaErrorKind<std::io::Error>> {
    let mut lines = vec![String::new()];
    for word in title.split(' ') {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + word.len() >= FOOTER_LINE_CHARS {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    let line_px = 14;
    let (_, height) = root.dim_in_pixel();
    let (plot, bottom) = root.split_vertically(height - line_px * lines.len() as u32 - 8);
    for (i, text) in lines.iter().enumerate() {
        bottom.draw(&Text::new(
            text.clone(),
            (10, line_px as i32 * i as i32),
            ("sans-serif", 11).into_font().color(&BLACK.mix(0.7)),
        ))?;
    }
    Ok(plot)
}

fn throughput_svg(reports: &[Report], path: &Path, title: &str) -> Result<(), String> {
    let err = draw_err(path);
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let root = footer(root, title).map_err(&err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("wconfd throughput against connections", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(
            connections_range(reports).log_scale(),
            log_range(reports.iter().map(|r| r.throughput)).log_scale(),
        )
        .map_err(&err)?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("operations per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| thousands(*y))
        .draw()
        .map_err(&err)?;
    for (i, (workload, runs)) in by_workload(reports).into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.throughput > 0.0)
            .map(|r| (r.connections as f64, r.throughput))
            .collect();
        let label = format!("{} ({}/s)", workload.name(), runs[0].unit);
        line(&mut chart, points, color, label).map_err(&err)?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight).map_err(&err)?;
    root.present().map_err(&err)?;
    Ok(())
}

const LATENCY_PANELS_PER_ROW: usize = 2;
const LATENCY_ROW_PX: u32 = 380;
/// The title and the footer above and below the panels.
const LATENCY_TITLE_PX: u32 = 40;

/// Picks one latency percentile out of a report.
type Percentile = fn(&Report) -> u64;

fn latency_svg(reports: &[Report], path: &Path, title: &str) -> Result<(), String> {
    let err = draw_err(path);
    let groups = by_workload(reports);
    // Two panels a row, as many rows as the workloads need.
    let rows = groups.len().div_ceil(LATENCY_PANELS_PER_ROW).max(1);
    let height = LATENCY_TITLE_PX + LATENCY_ROW_PX * rows as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let root = footer(root, title).map_err(&err)?;
    let root = root
        .titled(
            "wconfd latency percentiles against connections",
            ("sans-serif", 22),
        )
        .map_err(&err)?;
    let panels = root.split_evenly((rows, LATENCY_PANELS_PER_ROW));
    let x_range = connections_range(reports);
    for ((workload, runs), area) in groups.iter().zip(panels.iter()) {
        let ms = |us: u64| us as f64 / 1000.0;
        let all = runs
            .iter()
            .flat_map(|r| [r.latency_us.p50, r.latency_us.p99, r.latency_us.p999].map(ms));
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{} (latency per {})",
                    workload.name(),
                    runs[0].unit.trim_end_matches('s')
                ),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range.clone().log_scale(), log_range(all).log_scale())
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc("connections")
            .y_desc("ms")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y}"))
            .draw()
            .map_err(&err)?;
        let series: [(&str, Percentile); 3] = [
            ("p50", |r| r.latency_us.p50),
            ("p99", |r| r.latency_us.p99),
            ("p999", |r| r.latency_us.p999),
        ];
        for (i, (name, get)) in series.into_iter().enumerate() {
            let color = COLORS[i];
            let points: Vec<(f64, f64)> = runs
                .iter()
                .filter(|r| get(r) > 0)
                .map(|r| (r.connections as f64, ms(get(r))))
                .collect();
            line(&mut chart, points, color, name.to_string()).map_err(&err)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft).map_err(&err)?;
    }
    root.present().map_err(&err)?;
    Ok(())
}
