//! The run as an SVG timeline that reads without the report beside it: RPO over simulated time
//! (the y-axis in minutes with labelled ticks), one line per disk in its own colour and dash
//! pattern (drawn a pixel or two apart, so equal lines do not hide each other), each RPO target
//! as a dashed line, fault bands (WAN outage, slow WAN, storage storm, refused deletes, churn
//! burst) and fault instants (host crash, agent restart, wrong certificate, clock skew), the
//! vault's jobs as markers above the plot (a circle when the job succeeded, a cross when it
//! failed; the job's name in its `<title>` tooltip), and a legend naming every line, band and
//! marker the picture holds.

use std::fmt::Write as _;

use crate::report::{FaultSpan, Job, Report};
use crate::xml_text::escaped as escape;

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 74.0;
const RIGHT: f64 = 24.0;
/// Title, then up to three rows of job markers.
const TOP: f64 = 68.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const PLOT_H: f64 = 260.0;
const MARKER_ROWS: usize = 3;
const MARKER_ROW_H: f64 = 11.0;
/// Markers closer than this share a row only if nothing else is free.
const MARKER_GAP: f64 = 11.0;
const LEGEND_TOP: f64 = TOP + PLOT_H + 48.0;
const LEGEND_ROW_H: f64 = 18.0;
/// Rough width of a character at the legend's font size (11 px sans-serif).
const CHAR_W: f64 = 6.4;
/// Disk colours: no red or green, which the job markers and host crashes use.
const DISK_COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
];
/// Dash patterns, cycled with a period prime to the colours' so pairs repeat late.
const DISK_DASHES: [&str; 5] = ["", "8 3", "3 2", "10 3 2 3", "1 2"];
/// How far apart (px) lines of consecutive disks are drawn.
const DISK_OFFSET: f64 = 1.5;
const OK_COLOUR: &str = "#2ca02c";
const FAILED_COLOUR: &str = "#d62728";
const TARGET_COLOUR: &str = "#222222";
const TARGET_DASH: &str = "12 4";

/// How one kind of fault is drawn and what the legend calls it.
struct FaultStyle {
    legend: &'static str,
    /// Band fill, or an instant's line colour.
    colour: &'static str,
    /// An instant's dash pattern (bands have none).
    dash: &'static str,
}

fn fault_style(kind: &str) -> FaultStyle {
    let style = |legend, colour, dash| FaultStyle {
        legend,
        colour,
        dash,
    };
    match kind {
        "wan_down" => style("WAN outage", "#f4b6b6", ""),
        "wan_degraded" => style("slow WAN", "#fcd9b0", ""),
        "storage_storm" => style("storage storm (503/500)", "#fff0a8", ""),
        "snapshot_pressure" => style("deletes refused", "#d9d2e9", ""),
        "churn_burst" => style("churn burst", "#c9e4ea", ""),
        "host_crash" => style("host crash", "#cc0000", "5 3"),
        "agent_restart" => style("agent restart", "#555555", "2 2"),
        "wrong_certificate" => style("wrong certificate", "#7b1fa2", "9 3"),
        "clock_skew" => style("clock skew", "#8d6e00", "1 3"),
        _ => style("other fault", "#999999", "3 3"),
    }
}

/// A legend entry's sample.
enum Swatch {
    Line {
        colour: &'static str,
        dash: &'static str,
        width: f64,
    },
    Band(&'static str),
    Marker {
        succeeded: bool,
    },
}

struct LegendItem {
    swatch: Swatch,
    text: String,
}

/// Maps simulated minutes and RPO seconds to picture coordinates.
struct Scale {
    minutes: f64,
    /// Top of the y-axis, in minutes of RPO.
    rpo_top_min: f64,
}

impl Scale {
    fn x(&self, minute: f64) -> f64 {
        LEFT + minute.clamp(0.0, self.minutes) / self.minutes * PLOT_W
    }

    fn y(&self, rpo_secs: f64) -> f64 {
        TOP + PLOT_H - (rpo_secs / 60.0).clamp(0.0, self.rpo_top_min) / self.rpo_top_min * PLOT_H
    }
}

/// A tick step (in the axis' unit) from `steps` giving at most `most` ticks up to `top`.
fn tick_step(top: f64, most: f64, steps: &[f64]) -> f64 {
    steps
        .iter()
        .copied()
        .find(|s| top / s <= most)
        .unwrap_or_else(|| (top / most).ceil())
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// Render `report` as a standalone SVG document.
pub fn svg(report: &Report) -> String {
    let minutes = (report.simulated_hours.max(1) * 60) as f64;
    let highest_secs = report
        .disks
        .iter()
        .flat_map(|d| {
            d.rpo_samples
                .iter()
                .map(|s| s.1)
                .chain(std::iter::once(d.rpo_target_secs))
        })
        .fold(60.0, f64::max);
    let highest_min = highest_secs / 60.0 * 1.05;
    let y_step = tick_step(
        highest_min,
        6.0,
        &[
            0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0, 720.0,
        ],
    );
    let scale = Scale {
        minutes,
        rpo_top_min: (highest_min / y_step).ceil() * y_step,
    };
    let legend = legend_items(report);
    let legend_rows = legend_layout(&legend).last().map_or(0, |(row, _)| row + 1);
    let height = LEGEND_TOP + legend_rows as f64 * LEGEND_ROW_H + 6.0;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Verdana, sans-serif" font-size="11">"#
    );
    let heading = format!(
        "{} — seed {} — trace {}",
        report.scenario,
        report.seed,
        &report.trace_hash[..16.min(report.trace_hash.len())]
    );
    let _ = writeln!(
        out,
        r##"<title>drplane sim timeline: {0}</title>
<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>
<text x="{LEFT}" y="18" font-size="13">{0}</text>"##,
        escape(&heading)
    );
    faults(&mut out, &scale, &report.faults);
    axes(&mut out, &scale, y_step, report.simulated_hours.max(1));
    targets(&mut out, &scale, report);
    disks(&mut out, &scale, report);
    jobs(&mut out, &scale, &report.jobs);
    draw_legend(&mut out, &legend);
    out.push_str("</svg>\n");
    out
}

fn faults(out: &mut String, scale: &Scale, faults: &[FaultSpan]) {
    for f in faults {
        let style = fault_style(&f.kind);
        let (from, to) = (scale.x(f.from_minute), scale.x(f.to_minute));
        let title = if f.to_minute > f.from_minute {
            format!(
                "{}: minutes {}–{}",
                f.label,
                number(f.from_minute),
                number(f.to_minute)
            )
        } else {
            format!("{}: minute {}", f.label, number(f.from_minute))
        };
        if f.to_minute > f.from_minute {
            let _ = writeln!(
                out,
                r#"<rect x="{from:.1}" y="{TOP}" width="{:.1}" height="{PLOT_H}" fill="{}" fill-opacity="0.75"><title>{}</title></rect>"#,
                (to - from).max(1.0),
                style.colour,
                escape(&title)
            );
        } else {
            let _ = writeln!(
                out,
                r#"<line x1="{from:.1}" x2="{from:.1}" y1="{TOP}" y2="{}" stroke="{}" stroke-width="1.5" stroke-dasharray="{}"><title>{}</title></line>"#,
                TOP + PLOT_H,
                style.colour,
                style.dash,
                escape(&title)
            );
        }
    }
}

fn axes(out: &mut String, scale: &Scale, y_step: f64, hours: u64) {
    let bottom = TOP + PLOT_H;
    let right = LEFT + PLOT_W;
    // Horizontal grid and y ticks, in minutes of RPO.
    let ticks = (scale.rpo_top_min / y_step).round() as u64;
    for i in 0..=ticks {
        let v = i as f64 * y_step;
        let y = scale.y(v * 60.0);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{right}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e3e3"/><line x1="{0}" x2="{LEFT}" y1="{y:.1}" y2="{y:.1}" stroke="#333"/><text x="{1}" y="{2:.1}" text-anchor="end">{3} min</text>"##,
            LEFT - 5.0,
            LEFT - 8.0,
            y + 4.0,
            number(v)
        );
    }
    // x ticks every few hours, labelled in simulated minutes.
    let step = tick_step(hours as f64, 12.0, &[1.0, 2.0, 3.0, 6.0, 12.0, 24.0, 48.0]) as u64;
    for h in (0..=hours).step_by(step.max(1) as usize) {
        let x = scale.x((h * 60) as f64);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{bottom}" y2="{0}" stroke="#333"/><text x="{x:.1}" y="{1}" text-anchor="middle">{2}</text>"##,
            bottom + 5.0,
            bottom + 17.0,
            h * 60
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}" stroke="#333"/><line x1="{LEFT}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#333"/>
<text transform="translate(16 {0}) rotate(-90)" text-anchor="middle">RPO (minutes)</text>
<text x="{1}" y="{2}" text-anchor="middle">simulated time (minutes)</text>"##,
        TOP + PLOT_H / 2.0,
        LEFT + PLOT_W / 2.0,
        bottom + 34.0
    );
}

/// Each distinct RPO target with the disks it applies to, lowest first.
fn distinct_targets(report: &Report) -> Vec<(f64, Vec<String>)> {
    let mut targets: Vec<(f64, Vec<String>)> = Vec::new();
    for d in &report.disks {
        let name = format!("{}/{}", d.vm, d.disk);
        match targets.iter_mut().find(|(t, _)| *t == d.rpo_target_secs) {
            Some((_, names)) => names.push(name),
            None => targets.push((d.rpo_target_secs, vec![name])),
        }
    }
    targets.sort_by(|a, b| a.0.total_cmp(&b.0));
    targets
}

fn targets(out: &mut String, scale: &Scale, report: &Report) {
    for (secs, names) in distinct_targets(report) {
        let y = scale.y(secs);
        let label = format!("RPO target {} min", number(secs / 60.0));
        let _ = writeln!(
            out,
            r#"<g><title>{0} (two copy intervals) for {1}</title><line x1="{LEFT}" x2="{2}" y1="{y:.1}" y2="{y:.1}" stroke="{TARGET_COLOUR}" stroke-width="1.2" stroke-dasharray="{TARGET_DASH}"/><text x="{3}" y="{4:.1}" text-anchor="end" fill="{TARGET_COLOUR}">{0}</text></g>"#,
            escape(&label),
            escape(&names.join(", ")),
            LEFT + PLOT_W,
            LEFT + PLOT_W - 4.0,
            y - 4.0
        );
    }
}

/// ` stroke-dasharray="…"`, or nothing for a solid line.
fn dash_attribute(dash: &str) -> String {
    if dash.is_empty() {
        String::new()
    } else {
        format!(r#" stroke-dasharray="{dash}""#)
    }
}

fn disk_style(i: usize) -> (&'static str, &'static str) {
    (
        DISK_COLOURS[i % DISK_COLOURS.len()],
        DISK_DASHES[i % DISK_DASHES.len()],
    )
}

fn disks(out: &mut String, scale: &Scale, report: &Report) {
    for (i, d) in report.disks.iter().enumerate() {
        let (colour, dash) = disk_style(i);
        let lift = DISK_OFFSET * (i % 4) as f64;
        let points: Vec<String> = d
            .rpo_samples
            .iter()
            .map(|(m, r)| format!("{:.1},{:.1}", scale.x(*m), scale.y(*r) - lift))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6"{} points="{}"><title>{}/{}: RPO, largest {:.0} s</title></polyline>"#,
            dash_attribute(dash),
            points.join(" "),
            escape(&d.vm),
            escape(&d.disk),
            d.max_rpo_secs
        );
    }
}

fn jobs(out: &mut String, scale: &Scale, jobs: &[Job]) {
    let mut row_ends = [f64::NEG_INFINITY; MARKER_ROWS];
    for job in jobs {
        let x = scale.x(job.started_minute as f64);
        let row = row_ends
            .iter()
            .position(|end| x - end >= MARKER_GAP)
            .unwrap_or(MARKER_ROWS - 1);
        row_ends[row] = x;
        let y = TOP - 8.0 - row as f64 * MARKER_ROW_H;
        let title = format!(
            "{} {} at minute {} ({} s): {} — {}",
            job.name,
            job.vm,
            job.started_minute,
            job.seconds,
            if job.succeeded { "succeeded" } else { "failed" },
            job.detail
        );
        let colour = if job.succeeded {
            OK_COLOUR
        } else {
            FAILED_COLOUR
        };
        let _ = writeln!(
            out,
            r#"<g><title>{}</title><line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="{colour}" stroke-opacity="0.3"/>{}</g>"#,
            escape(&title),
            TOP + PLOT_H,
            marker(x, y, job.succeeded)
        );
    }
}

/// A job marker centred on (x, y): a filled circle when the job succeeded, a cross when not.
fn marker(x: f64, y: f64, succeeded: bool) -> String {
    if succeeded {
        format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="4.5" fill="{OK_COLOUR}"/>"#)
    } else {
        let r = 4.5;
        format!(
            r#"<path d="M{:.1} {:.1}L{:.1} {:.1}M{:.1} {:.1}L{:.1} {:.1}" stroke="{FAILED_COLOUR}" stroke-width="2.5"/>"#,
            x - r,
            y - r,
            x + r,
            y + r,
            x - r,
            y + r,
            x + r,
            y - r
        )
    }
}

/// Every line, band, instant and marker the picture holds, in that order.
fn legend_items(report: &Report) -> Vec<LegendItem> {
    let mut items: Vec<LegendItem> = report
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (colour, dash) = disk_style(i);
            LegendItem {
                swatch: Swatch::Line {
                    colour,
                    dash,
                    width: 1.6,
                },
                text: format!("{}/{} RPO", d.vm, d.disk),
            }
        })
        .collect();
    for (secs, _) in distinct_targets(report) {
        items.push(LegendItem {
            swatch: Swatch::Line {
                colour: TARGET_COLOUR,
                dash: TARGET_DASH,
                width: 1.2,
            },
            text: format!("RPO target {} min", number(secs / 60.0)),
        });
    }
    let mut kinds: Vec<(&str, bool)> = Vec::new();
    for f in &report.faults {
        let band = f.to_minute > f.from_minute;
        if !kinds.contains(&(f.kind.as_str(), band)) {
            kinds.push((f.kind.as_str(), band));
        }
    }
    kinds.sort_by_key(|(_, band)| !band);
    for (kind, band) in kinds {
        let style = fault_style(kind);
        items.push(LegendItem {
            swatch: if band {
                Swatch::Band(style.colour)
            } else {
                Swatch::Line {
                    colour: style.colour,
                    dash: style.dash,
                    width: 1.5,
                }
            },
            text: style.legend.to_string(),
        });
    }
    if !report.jobs.is_empty() {
        for succeeded in [true, false] {
            items.push(LegendItem {
                swatch: Swatch::Marker { succeeded },
                text: format!("job {}", if succeeded { "succeeded" } else { "failed" }),
            });
        }
    }
    items
}

const SWATCH_W: f64 = 26.0;

fn legend_item_width(item: &LegendItem) -> f64 {
    SWATCH_W + 6.0 + item.text.chars().count() as f64 * CHAR_W + 18.0
}

/// (row, x) of each legend item, flowing left to right and wrapping at the right edge.
fn legend_layout(items: &[LegendItem]) -> Vec<(usize, f64)> {
    let mut row = 0;
    let mut x = LEFT;
    items
        .iter()
        .map(|item| {
            let w = legend_item_width(item);
            if x > LEFT && x + w > WIDTH - RIGHT {
                row += 1;
                x = LEFT;
            }
            let at = (row, x);
            x += w;
            at
        })
        .collect()
}

fn draw_legend(out: &mut String, items: &[LegendItem]) {
    for (item, (row, x)) in items.iter().zip(legend_layout(items)) {
        let y = LEGEND_TOP + row as f64 * LEGEND_ROW_H;
        let sample = match &item.swatch {
            Swatch::Line {
                colour,
                dash,
                width,
            } => format!(
                r#"<line x1="{x:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="{width}"{}/>"#,
                x + SWATCH_W,
                dash_attribute(dash)
            ),
            Swatch::Band(fill) => format!(
                r##"<rect x="{x:.1}" y="{:.1}" width="{SWATCH_W}" height="10" fill="{fill}" stroke="#bbbbbb"/>"##,
                y - 5.0
            ),
            Swatch::Marker { succeeded } => marker(x + SWATCH_W / 2.0, y, *succeeded),
        };
        let _ = writeln!(
            out,
            r#"<g class="legend">{sample}<text x="{:.1}" y="{:.1}">{}</text></g>"#,
            x + SWATCH_W + 6.0,
            y + 4.0,
            escape(&item.text)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_steps_keep_the_axis_readable() {
        let steps = [0.5, 1.0, 2.0, 5.0, 10.0];
        assert_eq!(tick_step(2.2, 6.0, &steps), 0.5);
        assert_eq!(tick_step(11.0, 6.0, &steps), 2.0);
        assert_eq!(tick_step(500.0, 6.0, &steps), 84.0);
        assert_eq!(number(2.0), "2");
        assert_eq!(number(0.5), "0.5");
    }

    #[test]
    fn the_legend_wraps_inside_the_picture() {
        let items: Vec<LegendItem> = (0..30)
            .map(|i| LegendItem {
                swatch: Swatch::Band("#fff"),
                text: format!("a rather long legend entry number {i}"),
            })
            .collect();
        let layout = legend_layout(&items);
        assert!(layout.last().unwrap().0 >= 5, "{layout:?}");
        for (item, (_, x)) in items.iter().zip(&layout) {
            assert!(x + legend_item_width(item) <= WIDTH - RIGHT + 0.01);
        }
    }
}
