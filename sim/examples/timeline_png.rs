//! Render a scenario's timeline to PNG with resvg (the renderer the timeline test uses):
//! `cargo run -p sim --release --example timeline_png -- OUT.png [SCENARIO.toml]` (default: the
//! embedded quickstart). docs/quickstart-timeline.png is made this way.

use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: timeline_png OUT.png [SCENARIO.toml]")?;
    let text = match args.next() {
        Some(path) => std::fs::read_to_string(path)?,
        None => sim::QUICKSTART.to_string(),
    };
    let scenario = sim::Scenario::parse(&text)?;
    let report = sim::run(&scenario, scenario.seed)?;
    let mut options = usvg::Options::default();
    options.fontdb_mut().load_system_fonts();
    let tree = usvg::Tree::from_str(&sim::timeline::svg(&report), &options)?;
    let size = tree.size().to_int_size();
    let mut pixmap = Pixmap::new(size.width(), size.height()).ok_or("empty picture")?;
    resvg::render(&tree, Transform::default(), &mut pixmap.as_mut());
    pixmap.save_png(&out)?;
    println!("{out}: {} x {}", size.width(), size.height());
    Ok(())
}
