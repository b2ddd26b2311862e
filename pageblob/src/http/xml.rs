//! The few XML documents the Blob API answers with, written with quick-xml's writer (which
//! escapes text and attribute values).

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use crate::extent_map::PageRange;
use crate::names::needs_encoding_in_xml;
use crate::timestamp::http_date;
use crate::types::{BlobListing, PageRangeList};

type Xml = Writer<Vec<u8>>;

/// A document: the declaration, then what `body` writes.
fn document(body: impl FnOnce(&mut Xml) -> std::io::Result<()>) -> String {
    let mut w = Writer::new(Vec::new());
    // Writing to a Vec cannot fail.
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)))
        .and_then(|()| body(&mut w))
        .expect("XML into memory");
    String::from_utf8(w.into_inner()).expect("XML written from UTF-8 text")
}

/// `<name>text</name>`, the text escaped.
fn text(w: &mut Xml, name: &str, text: &str) -> std::io::Result<()> {
    w.create_element(name)
        .write_text_content(BytesText::new(text))
        .map(|_| ())
}

pub fn error(code: &str, message: &str) -> String {
    document(|w| {
        w.create_element("Error")
            .write_inner_content(|w| {
                text(w, "Code", code)?;
                text(w, "Message", message)
            })
            .map(|_| ())
    })
}

pub fn page_list(list: &PageRangeList) -> String {
    document(|w| {
        w.create_element("PageList")
            .write_inner_content(|w| {
                for PageRange {
                    start,
                    end,
                    cleared,
                } in &list.ranges
                {
                    let tag = if *cleared { "ClearRange" } else { "PageRange" };
                    w.create_element(tag).write_inner_content(|w| {
                        text(w, "Start", &start.to_string())?;
                        text(w, "End", &end.to_string())
                    })?;
                }
                if let Some(m) = list.next_marker {
                    text(w, "NextMarker", &m.to_string())?;
                }
                Ok(())
            })
            .map(|_| ())
    })
}

pub fn container_list(service_url: &str, containers: &[String]) -> String {
    document(|w| {
        w.create_element("EnumerationResults")
            .with_attribute(("ServiceEndpoint", service_url))
            .write_inner_content(|w| {
                w.create_element("Containers").write_inner_content(|w| {
                    for c in containers {
                        w.create_element("Container").write_inner_content(|w| {
                            text(w, "Name", c)?;
                            w.create_element("Properties").write_empty().map(|_| ())
                        })?;
                    }
                    Ok(())
                })?;
                w.create_element("NextMarker").write_empty().map(|_| ())
            })
            .map(|_| ())
    })
}

pub fn blob_list(service_url: &str, container: &str, blobs: &[BlobListing]) -> String {
    document(|w| {
        w.create_element("EnumerationResults")
            .with_attribute(("ServiceEndpoint", service_url))
            .with_attribute(("ContainerName", container))
            .write_inner_content(|w| {
                w.create_element("Blobs").write_inner_content(|w| {
                    for b in blobs {
                        blob(w, b)?;
                    }
                    Ok(())
                })?;
                w.create_element("NextMarker").write_empty().map(|_| ())
            })
            .map(|_| ())
    })
}

fn blob(w: &mut Xml, b: &BlobListing) -> std::io::Result<()> {
    let p = &b.properties;
    w.create_element("Blob")
        .write_inner_content(|w| {
            if needs_encoding_in_xml(&b.name) {
                let encoded = utf8_percent_encode(&b.name, NON_ALPHANUMERIC).to_string();
                w.create_element("Name")
                    .with_attribute(("Encoded", "true"))
                    .write_text_content(BytesText::new(&encoded))?;
            } else {
                text(w, "Name", &b.name)?;
            }
            if let Some(snap) = &p.snapshot {
                text(w, "Snapshot", snap)?;
            }
            w.create_element("Properties").write_inner_content(|w| {
                let lease_status = if p.lease_state.as_str() == "leased" {
                    "locked"
                } else {
                    "unlocked"
                };
                for (name, value) in [
                    ("Last-Modified", http_date(p.last_modified)),
                    ("Etag", p.etag.clone()),
                    ("Content-Length", p.size.to_string()),
                    ("Content-Type", "application/octet-stream".into()),
                    ("x-ms-blob-sequence-number", p.sequence_number.to_string()),
                    ("BlobType", "PageBlob".into()),
                    ("LeaseStatus", lease_status.into()),
                    ("LeaseState", p.lease_state.as_str().into()),
                ] {
                    text(w, name, &value)?;
                }
                Ok(())
            })?;
            Ok(())
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_attributes_are_escaped() {
        let e = error("Bad<Code>", "a & b \"quoted\"");
        assert!(e.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?><Error>"));
        assert!(e.contains("<Code>Bad&lt;Code&gt;</Code>"), "{e}");
        assert!(e.contains("a &amp; b &quot;quoted&quot;"), "{e}");
        let l = container_list("http://h/a?x=1&y=\"2\"", &["c<1>".into()]);
        assert!(
            l.contains("ServiceEndpoint=\"http://h/a?x=1&amp;y=&quot;2&quot;\""),
            "{l}"
        );
        assert!(l.contains("<Name>c&lt;1&gt;</Name>"), "{l}");
    }

    #[test]
    fn a_page_list_names_cleared_ranges_and_the_marker() {
        let list = PageRangeList {
            ranges: vec![
                PageRange {
                    start: 0,
                    end: 511,
                    cleared: false,
                },
                PageRange {
                    start: 512,
                    end: 1023,
                    cleared: true,
                },
            ],
            next_marker: Some(1024),
        };
        assert_eq!(
            page_list(&list),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList><PageRange><Start>0</Start><End>511</End></PageRange><ClearRange><Start>512</Start><End>1023</End></ClearRange><NextMarker>1024</NextMarker></PageList>"
        );
    }
}
