//! JUnit XML reports of runs and swarms, the format CI systems (GitHub Actions reporters,
//! GitLab, Jenkins, Buildkite) read: `<testsuites>` of `<testsuite>`s of `<testcase>`s, each
//! failing case with a `<failure>` (a broken check) or an `<error>` (a run that could not
//! finish). A run is one suite with one case per check; a swarm is one suite per seed, so each
//! seed's checks, its seed, scenario hash, trace hash and the command that reproduces it stay
//! together. Text is escaped and stripped of characters XML 1.0 cannot hold.

use quick_xml::events::{BytesCData, BytesDecl, BytesText, Event};
use quick_xml::Writer;

use crate::report::Report;
use crate::swarm::SeedOutcome;
use crate::xml_text::xml_safe;

/// One `<testcase>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub classname: String,
    pub name: String,
    pub outcome: CaseOutcome,
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseOutcome {
    Passed,
    /// A check that did not hold: its one-line message and the full text.
    Failed {
        message: String,
        text: String,
    },
    /// The run could not finish (a scenario or storage error).
    Error {
        message: String,
        text: String,
    },
}

/// One `<testsuite>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    pub name: String,
    /// Wall seconds.
    pub time: f64,
    pub properties: Vec<(String, String)>,
    pub cases: Vec<Case>,
    /// The run's readable summary, as `<system-out>`.
    pub system_out: Option<String>,
}

impl Suite {
    fn count(&self, failed: bool) -> usize {
        self.cases
            .iter()
            .filter(|c| match c.outcome {
                CaseOutcome::Failed { .. } => failed,
                CaseOutcome::Error { .. } => !failed,
                CaseOutcome::Passed => false,
            })
            .count()
    }
}

/// The facts every failure message repeats, so one case read alone says how to reproduce it.
fn context(
    seed: Option<u64>,
    scenario: &str,
    scenario_hash: Option<&str>,
    reproduce: &str,
) -> String {
    format!(
        "seed: {}\nscenario: {scenario}{}\nreproduce: {reproduce}",
        seed.map_or("the scenario's".into(), |s| s.to_string()),
        scenario_hash.map_or(String::new(), |h| format!(" (sha256 {h})"))
    )
}

/// A run's suite: one case per check, the run's facts as properties and in every failure.
pub fn run_suite(report: &Report, reproduce: &str, wall_secs: f64, summary: Option<&str>) -> Suite {
    let classname = format!("drplane.sim.{}", report.scenario);
    let context = format!(
        "{}\ntrace: {}",
        context(
            Some(report.seed),
            &report.scenario,
            Some(&report.scenario_hash),
            reproduce
        ),
        report.trace_hash
    );
    Suite {
        name: format!("drplane sim run {} (seed {})", report.scenario, report.seed),
        time: wall_secs,
        properties: properties(report, reproduce),
        cases: report
            .checks
            .iter()
            .map(|c| Case {
                classname: classname.clone(),
                name: c.name.clone(),
                outcome: if c.ok {
                    CaseOutcome::Passed
                } else {
                    CaseOutcome::Failed {
                        message: format!("{}: {}", c.name, c.detail),
                        text: format!("check: {}\ndetail: {}\n{context}", c.name, c.detail),
                    }
                },
            })
            .collect(),
        system_out: summary.map(str::to_string),
    }
}

fn properties(report: &Report, reproduce: &str) -> Vec<(String, String)> {
    [
        ("seed", report.seed.to_string()),
        ("scenario", report.scenario.clone()),
        ("scenario_hash", report.scenario_hash.clone()),
        ("trace_hash", report.trace_hash.clone()),
        ("simulated_hours", report.simulated_hours.to_string()),
        ("events", report.events.to_string()),
        ("reproduce", reproduce.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A run that could not finish (or start: an unreadable scenario has no seed yet): one case,
/// `run`, with the error.
pub fn error_suite(scenario: &str, seed: Option<u64>, error: &str, reproduce: &str) -> Suite {
    let mut properties = vec![
        ("scenario".to_string(), scenario.to_string()),
        ("reproduce".to_string(), reproduce.to_string()),
    ];
    if let Some(seed) = seed {
        properties.insert(0, ("seed".into(), seed.to_string()));
    }
    Suite {
        name: format!(
            "drplane sim run {scenario}{}",
            seed.map_or(String::new(), |s| format!(" (seed {s})"))
        ),
        time: 0.0,
        properties,
        cases: vec![Case {
            classname: format!("drplane.sim.{scenario}"),
            name: "run".into(),
            outcome: CaseOutcome::Error {
                message: error.to_string(),
                text: format!("{error}\n{}", context(seed, scenario, None, reproduce)),
            },
        }],
        system_out: None,
    }
}

/// A swarm seed's suite: its checks (or the error that stopped it), and when the seed ran twice
/// one more case for the comparison of the two runs.
pub fn seed_suite(outcome: &SeedOutcome, reproduce: &str) -> Suite {
    let scenario = format!("swarm-{}", outcome.seed);
    let mut suite = match &outcome.report {
        Ok(report) => run_suite(report, reproduce, outcome.wall_secs, None),
        Err(e) => {
            let mut suite = error_suite(&scenario, Some(outcome.seed), e, reproduce);
            suite.time = outcome.wall_secs;
            suite
        }
    };
    suite.name = format!("drplane sim swarm seed {}", outcome.seed);
    if outcome.checked_determinism {
        let differed = outcome
            .failures
            .iter()
            .find(|f| f.starts_with("not deterministic"));
        let hash = outcome
            .report
            .as_ref()
            .ok()
            .map(|r| r.scenario_hash.as_str());
        suite.cases.push(Case {
            classname: format!("drplane.sim.{scenario}"),
            name: "the same report and trace hash when run twice".into(),
            outcome: match differed {
                None => CaseOutcome::Passed,
                Some(d) => CaseOutcome::Failed {
                    message: d.clone(),
                    text: format!(
                        "{d}\n{}",
                        context(Some(outcome.seed), &scenario, hash, reproduce)
                    ),
                },
            },
        });
    }
    suite
}

/// The whole document: `<testsuites name=..>` with totals, then each suite.
pub fn document(name: &str, suites: &[Suite]) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    write_document(&mut w, name, suites).expect("writing XML into memory");
    let mut text = String::from_utf8(w.into_inner()).expect("the writer wrote UTF-8");
    text.push('\n');
    text
}

fn write_document(w: &mut Writer<Vec<u8>>, name: &str, suites: &[Suite]) -> std::io::Result<()> {
    let tests: usize = suites.iter().map(|s| s.cases.len()).sum();
    let failures: usize = suites.iter().map(|s| s.count(true)).sum();
    let errors: usize = suites.iter().map(|s| s.count(false)).sum();
    let time: f64 = suites.iter().map(|s| s.time).sum();
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("testsuites")
        .with_attributes([
            ("name", xml_safe(name).as_ref()),
            ("tests", tests.to_string().as_ref()),
            ("failures", failures.to_string().as_ref()),
            ("errors", errors.to_string().as_ref()),
            ("time", format!("{time:.3}").as_ref()),
        ])
        .write_inner_content(|w| {
            for (id, suite) in suites.iter().enumerate() {
                write_suite(w, id, suite)?;
            }
            Ok(())
        })?;
    Ok(())
}

fn write_suite(w: &mut Writer<Vec<u8>>, id: usize, suite: &Suite) -> std::io::Result<()> {
    w.create_element("testsuite")
        .with_attributes([
            ("name", xml_safe(&suite.name).as_ref()),
            ("id", id.to_string().as_ref()),
            ("tests", suite.cases.len().to_string().as_ref()),
            ("failures", suite.count(true).to_string().as_ref()),
            ("errors", suite.count(false).to_string().as_ref()),
            ("skipped", "0"),
            ("time", format!("{:.3}", suite.time).as_ref()),
        ])
        .write_inner_content(|w| {
            w.create_element("properties").write_inner_content(|w| {
                for (k, v) in &suite.properties {
                    w.create_element("property")
                        .with_attributes([("name", xml_safe(k).as_ref()), ("value", &xml_safe(v))])
                        .write_empty()?;
                }
                Ok(())
            })?;
            for case in &suite.cases {
                write_case(w, case)?;
            }
            if let Some(out) = &suite.system_out {
                w.create_element("system-out")
                    .write_text_content(BytesText::new(&xml_safe(out)))?;
            }
            Ok(())
        })?;
    Ok(())
}

fn write_case(w: &mut Writer<Vec<u8>>, case: &Case) -> std::io::Result<()> {
    let element = w.create_element("testcase").with_attributes([
        ("classname", xml_safe(&case.classname).as_ref()),
        ("name", xml_safe(&case.name).as_ref()),
    ]);
    let (tag, message, text) = match &case.outcome {
        CaseOutcome::Passed => {
            element.write_empty()?;
            return Ok(());
        }
        CaseOutcome::Failed { message, text } => ("failure", message, text),
        CaseOutcome::Error { message, text } => ("error", message, text),
    };
    element.write_inner_content(|w| {
        w.create_element(tag)
            .with_attributes([
                ("message", xml_safe(message).as_ref()),
                ("type", if tag == "failure" { "check" } else { "run" }),
            ])
            .write_inner_content(|w| {
                // CDATA keeps the text as written; a "]]>" inside is split across two sections.
                for (i, part) in xml_safe(text).split("]]>").enumerate() {
                    if i > 0 {
                        w.write_event(Event::CData(BytesCData::new("]]")))?;
                        w.write_event(Event::Text(BytesText::new(">")))?;
                    }
                    w.write_event(Event::CData(BytesCData::new(part)))?;
                }
                Ok(())
            })?;
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(outcome: CaseOutcome) -> Suite {
        Suite {
            name: "s <&> \u{1}".into(),
            time: 1.5,
            properties: vec![("seed".into(), "3".into())],
            cases: vec![
                Case {
                    classname: "c".into(),
                    name: "passes".into(),
                    outcome: CaseOutcome::Passed,
                },
                Case {
                    classname: "c".into(),
                    name: "breaks".into(),
                    outcome,
                },
            ],
            system_out: Some("out ]]> & <".into()),
        }
    }

    #[test]
    fn counts_escapes_and_hostile_text_survive_a_parser() {
        let xml = document(
            "all",
            &[suite(CaseOutcome::Failed {
                message: "m \"q\" \u{0}".into(),
                text: "a ]]> b\nc".into(),
            })],
        );
        assert!(xml.contains(r#"<testsuites name="all" tests="2" failures="1" errors="0""#));
        // Read back with a strict parser: the texts come back as written (controls replaced).
        let mut reader = quick_xml::Reader::from_str(&xml);
        let mut texts = String::new();
        loop {
            match reader.read_event().unwrap() {
                Event::Text(t) => texts.push_str(&t.decode().unwrap()),
                Event::CData(t) => texts.push_str(&String::from_utf8_lossy(&t)),
                Event::GeneralRef(r) => texts.push_str(
                    quick_xml::escape::resolve_predefined_entity(&r.decode().unwrap())
                        .expect("only XML's own entities"),
                ),
                Event::Start(e) | Event::Empty(e) => {
                    for a in e.attributes() {
                        a.unwrap();
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert!(texts.contains("a ]]> b\nc"), "{texts}\n{xml}");
        assert!(texts.contains("out ]]> & <"), "{texts}");
        assert!(!xml.contains('\u{0}') && !xml.contains('\u{1}'));
        let errors = document(
            "x",
            &[suite(CaseOutcome::Error {
                message: "e".into(),
                text: "t".into(),
            })],
        );
        assert!(errors.contains(r#"failures="0" errors="1""#), "{errors}");
    }
}
