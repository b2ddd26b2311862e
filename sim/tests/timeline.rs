//! The quickstart's timeline as a person sees it: rendered to PNG by a real SVG renderer
//! (resvg, with the system's fonts) without errors, its lines, bands, markers and labels
//! present as pixels, and its legend naming everything it draws.

use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg;

fn quickstart() -> sim::Report {
    let scenario = sim::Scenario::parse(sim::QUICKSTART).unwrap();
    sim::run(&scenario, scenario.seed).unwrap()
}

/// Parse and render an SVG document the way an image viewer would.
fn render(svg: &str) -> (usvg::Tree, Pixmap) {
    let mut options = usvg::Options::default();
    options.fontdb_mut().load_system_fonts();
    assert!(
        !options.fontdb.is_empty(),
        "no system fonts to render text with (.ci/run installs fonts-dejavu-core)"
    );
    let tree = usvg::Tree::from_str(svg, &options).expect("the timeline is valid SVG");
    let size = tree.size().to_int_size();
    let mut pixmap = Pixmap::new(size.width(), size.height()).unwrap();
    resvg::render(&tree, Transform::default(), &mut pixmap.as_mut());
    (tree, pixmap)
}

fn hex(colour: &str) -> [u8; 3] {
    let v = u32::from_str_radix(colour.trim_start_matches('#'), 16).unwrap();
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

/// Pixels within `tolerance` (per channel) of `rgb` in the rectangle `area` (x0, y0, x1, y1).
fn count_near(png: &Pixmap, rgb: [u8; 3], tolerance: u8, area: (u32, u32, u32, u32)) -> usize {
    let (x0, y0, x1, y1) = area;
    let mut n = 0;
    for y in y0..y1.min(png.height()) {
        for x in x0..x1.min(png.width()) {
            let p = png.pixel(x, y).unwrap().demultiply();
            let c = [p.red(), p.green(), p.blue()];
            if c.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= tolerance) {
                n += 1;
            }
        }
    }
    n
}

/// `fill` at `opacity` over white.
fn over_white(fill: &str, opacity: f64) -> [u8; 3] {
    hex(fill).map(|c| (f64::from(c) * opacity + 255.0 * (1.0 - opacity)).round() as u8)
}

/// Every `<text>` element's content, in order (entity references resolved).
fn texts(svg: &str) -> Vec<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(svg);
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) if e.name().as_ref() == b"text" => current = Some(String::new()),
            Event::End(e) if e.name().as_ref() == b"text" => out.extend(current.take()),
            Event::Text(t) => {
                if let Some(c) = &mut current {
                    c.push_str(&t.decode().unwrap());
                }
            }
            Event::GeneralRef(r) => {
                if let Some(c) = &mut current {
                    let name = r.decode().unwrap();
                    c.push_str(quick_xml::escape::resolve_predefined_entity(&name).unwrap());
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

#[test]
fn the_quickstart_timeline_renders_with_a_legend_for_everything_it_draws() {
    let report = quickstart();
    let svg = sim::timeline::svg(&report);
    let (tree, png) = render(&svg);
    let (w, h) = (png.width(), png.height());
    assert_eq!(w, 1000);
    assert!(h > 400, "{h}");
    // Text was laid out with a real font (usvg drops text it has no font for).
    let mut text_nodes = 0;
    let mut stack = vec![tree.root()];
    while let Some(group) = stack.pop() {
        for node in group.children() {
            match node {
                usvg::Node::Group(g) => stack.push(g),
                usvg::Node::Text(t) if !t.flattened().children().is_empty() => text_nodes += 1,
                _ => {}
            }
        }
    }
    let written = svg.matches("<text ").count();
    assert!(written >= 20, "{written}");
    assert_eq!(text_nodes, written, "texts rendered / written");
    let png_bytes = png.encode_png().unwrap();
    let decoded = Pixmap::decode_png(&png_bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (w, h));

    // The legend names each disk, the RPO target, every kind of fault and both job markers.
    let labels = texts(&svg);
    let has = |needle: &str| labels.iter().any(|l| l == needle);
    for d in &report.disks {
        assert!(has(&format!("{}/{} RPO", d.vm, d.disk)), "{labels:?}");
    }
    for needle in [
        "RPO target 10 min",
        "WAN outage",
        "storage storm (503/500)",
        "host crash",
        "wrong certificate",
        "job succeeded",
        "job failed",
        "RPO (minutes)",
    ] {
        assert!(has(needle), "{needle:?} not in {labels:?}");
    }
    // Labelled y ticks in minutes.
    let ticks = labels
        .iter()
        .filter(|l| l.ends_with(" min") && !l.starts_with("RPO"))
        .count();
    assert!(ticks >= 4, "{labels:?}");
    // Each job's name is in its marker's tooltip.
    for job in &report.jobs {
        let title = format!("{} {} at minute {} ", job.name, job.vm, job.started_minute);
        let tag = format!("<title>{}", quick_xml::escape::escape(&title));
        assert!(svg.contains(&tag), "{tag}");
    }
    // No two disks share a colour and dash pattern.
    let styles: Vec<&str> = svg
        .lines()
        .filter(|l| l.starts_with("<polyline"))
        .map(|l| &l[..l.find(" points=").unwrap()])
        .collect();
    assert_eq!(styles.len(), report.disks.len());
    for (i, a) in styles.iter().enumerate() {
        assert!(!styles[i + 1..].contains(a), "two disks drawn alike: {a}");
    }

    // As pixels: the WAN outage band and the storm band, each disk's colour, the green job
    // markers, and dark text beside the y-axis (its tick labels).
    let plot = (74, 68, 976, 328);
    assert!(count_near(&png, over_white("#f4b6b6", 0.75), 3, plot) > 1000);
    assert!(count_near(&png, over_white("#fff0a8", 0.75), 3, plot) > 1000);
    for colour in ["#1f77b4", "#ff7f0e", "#9467bd"] {
        assert!(
            count_near(&png, hex(colour), 40, (0, 0, w, h)) > 50,
            "no {colour} pixels"
        );
    }
    assert!(count_near(&png, hex("#2ca02c"), 30, (0, 30, w, 68)) > 40);
    assert!(count_near(&png, [0, 0, 0], 90, (0, 68, 70, 340)) > 100);
}

#[test]
fn names_from_a_hostile_report_leave_the_timeline_valid_xml() {
    // Scenario files cannot name things with control characters any more; the timeline does
    // not rely on that.
    let text = r#"
name = "x"
duration_hours = 1
[policy]
copy_frequency_secs = 300
[[vm]]
name = "vm"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 6
[[fault]]
kind = "wan_down"
at_minutes = 10
minutes = 5
"#;
    let scenario = sim::Scenario::parse(text).unwrap();
    let mut report = sim::run(&scenario, 1).unwrap();
    report.scenario = "x<y>&\"]]>\u{1}\u{1f}\nz".into();
    report.disks[0].vm = "v\u{0}m".into();
    let svg = sim::timeline::svg(&report);
    assert!(!svg.contains('\u{1}') && !svg.contains('\u{1f}') && !svg.contains('\u{0}'));
    let (tree, _) = render(&svg);
    assert!(tree.size().height() > 300.0);
    assert!(
        texts(&svg)[0].starts_with("x<y>&\"]]>\u{FFFD}\u{FFFD}\nz — seed 1"),
        "{svg}"
    );
    assert!(
        texts(&svg).iter().any(|t| t == "v\u{FFFD}m/os RPO"),
        "{svg}"
    );
}
