//! The run as an SVG timeline: RPO over simulated time, one line per disk, with fault bands
//! (WAN outages, storage storms), fault instants (host crash, wrong certificate) and DR jobs.

use std::fmt::Write as _;

use crate::report::Report;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 60.0;
const TOP: f64 = 30.0;
const PLOT_W: f64 = WIDTH - LEFT - 20.0;
const PLOT_H: f64 = HEIGHT - TOP - 60.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// Render `report` as a standalone SVG document.
pub fn svg(report: &Report) -> String {
    let minutes = (report.simulated_hours * 60) as f64;
    let max_rpo = report
        .disks
        .iter()
        .flat_map(|d| d.rpo_samples.iter().map(|s| s.1))
        .fold(60.0, f64::max);
    let x = |m: f64| LEFT + m / minutes * PLOT_W;
    let y = |r: f64| TOP + PLOT_H - r / max_rpo * PLOT_H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="18" font-size="13">{} — seed {} — trace {}</text>"#,
        quick_xml::escape::escape(&report.scenario),
        report.seed,
        &report.trace_hash[..16]
    );
    for (kind, from, to) in &report.faults {
        let colour = if kind == "WAN down" {
            "#f4cccc"
        } else {
            "#fff2cc"
        };
        if to > from {
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{PLOT_H}" fill="{colour}"><title>{}</title></rect>"#,
                x(*from),
                x(*to) - x(*from),
                quick_xml::escape::escape(kind)
            );
        } else {
            let _ = writeln!(
                out,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{TOP}" y2="{1}" stroke="#cc0000" stroke-dasharray="4 3"><title>{2}</title></line>"##,
                x(*from),
                TOP + PLOT_H,
                quick_xml::escape::escape(kind)
            );
        }
    }
    // Axes and labels.
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{0}" stroke="#333"/><line x1="{LEFT}" x2="{1}" y1="{0}" y2="{0}" stroke="#333"/>"##,
        TOP + PLOT_H,
        LEFT + PLOT_W
    );
    let _ = writeln!(
        out,
        r#"<text x="8" y="{TOP}">{max_rpo:.0} s</text><text x="8" y="{0}">RPO</text><text x="{1}" y="{2}">minutes</text>"#,
        TOP + PLOT_H / 2.0,
        LEFT + PLOT_W - 40.0,
        TOP + PLOT_H + 28.0
    );
    for h in 0..=report.simulated_hours {
        let m = (h * 60) as f64;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(m),
            TOP + PLOT_H + 14.0,
            h * 60
        );
    }
    for job in &report.jobs {
        let m = job.started_minute as f64;
        let _ = writeln!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"><title>{} {} ({})</title></circle>"##,
            x(m),
            TOP + 8.0,
            if job.succeeded { "#2ca02c" } else { "#d62728" },
            quick_xml::escape::escape(&job.name),
            quick_xml::escape::escape(&job.vm),
            quick_xml::escape::escape(&job.detail)
        );
    }
    for (i, d) in report.disks.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = d
            .rpo_samples
            .iter()
            .map(|(m, r)| format!("{:.1},{:.1}", x(*m), y(*r)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{}/{}</text>"#,
            LEFT + 10.0 + 150.0 * i as f64,
            HEIGHT - 8.0,
            quick_xml::escape::escape(&d.vm),
            quick_xml::escape::escape(&d.disk)
        );
    }
    out.push_str("</svg>\n");
    out
}
