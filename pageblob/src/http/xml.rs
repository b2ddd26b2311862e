//! The few XML documents the Blob API answers with, written with quick-xml's writer (which
//! escapes text and attribute values).

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::listing::{BlobEntry, ListParams};
use crate::extent_map::PageRange;
use crate::names::needs_encoding_in_xml;
use crate::timestamp::http_date;
use crate::types::{BlobListing, ContainerProperties, LeaseStateName, Metadata, PageRangeList};

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
                if let Some(m) = &list.next_marker {
                    text(w, "NextMarker", m)?;
                }
                Ok(())
            })
            .map(|_| ())
    })
}

/// `<Prefix>`, `<Marker>`, `<MaxResults>` and `<Delimiter>` as the request gave them.
fn echo_params(w: &mut Xml, params: &ListParams) -> std::io::Result<()> {
    if !params.prefix.is_empty() {
        text(w, "Prefix", &params.prefix)?;
    }
    if let Some(m) = &params.marker {
        text(w, "Marker", m)?;
    }
    if let Some(n) = params.max_results_sent {
        text(w, "MaxResults", &n.to_string())?;
    }
    if let Some(d) = &params.delimiter {
        text(w, "Delimiter", d)?;
    }
    Ok(())
}

fn next_marker(w: &mut Xml, next: Option<&str>) -> std::io::Result<()> {
    match next {
        Some(m) => text(w, "NextMarker", m),
        None => w.create_element("NextMarker").write_empty().map(|_| ()),
    }
}

fn metadata(w: &mut Xml, metadata: &Metadata) -> std::io::Result<()> {
    w.create_element("Metadata")
        .write_inner_content(|w| {
            for (name, value) in metadata {
                text(w, name, value)?;
            }
            Ok(())
        })
        .map(|_| ())
}

/// One listed container: its name and properties (and metadata when asked).
#[derive(Debug)]
pub struct ContainerEntry<'a> {
    pub name: &'a str,
    pub properties: ContainerProperties,
}

pub fn container_list(
    service_url: &str,
    params: &ListParams,
    containers: &[ContainerEntry<'_>],
    next: Option<&str>,
    include_metadata: bool,
) -> String {
    document(|w| {
        w.create_element("EnumerationResults")
            .with_attribute(("ServiceEndpoint", service_url))
            .write_inner_content(|w| {
                echo_params(w, params)?;
                w.create_element("Containers").write_inner_content(|w| {
                    for c in containers {
                        w.create_element("Container").write_inner_content(|w| {
                            text(w, "Name", c.name)?;
                            let p = &c.properties;
                            w.create_element("Properties").write_inner_content(|w| {
                                text(w, "Last-Modified", &http_date(p.last_modified))?;
                                text(w, "Etag", &p.etag)?;
                                text(w, "LeaseStatus", "unlocked")?;
                                text(w, "LeaseState", "available")
                            })?;
                            if include_metadata {
                                metadata(w, &p.metadata)?;
                            }
                            Ok(())
                        })?;
                    }
                    Ok(())
                })?;
                next_marker(w, next)
            })
            .map(|_| ())
    })
}

pub fn blob_list(
    service_url: &str,
    container: &str,
    params: &ListParams,
    entries: &[BlobEntry<'_>],
    next: Option<&str>,
    include_metadata: bool,
) -> String {
    document(|w| {
        w.create_element("EnumerationResults")
            .with_attribute(("ServiceEndpoint", service_url))
            .with_attribute(("ContainerName", container))
            .write_inner_content(|w| {
                echo_params(w, params)?;
                w.create_element("Blobs").write_inner_content(|w| {
                    for e in entries {
                        match e {
                            BlobEntry::Blob(b) => blob(w, b, include_metadata)?,
                            BlobEntry::Prefix(p) => {
                                w.create_element("BlobPrefix")
                                    .write_inner_content(|w| name(w, p))?;
                            }
                        }
                    }
                    Ok(())
                })?;
                next_marker(w, next)
            })
            .map(|_| ())
    })
}

/// `<Name>`, percent-encoded with `Encoded="true"` when XML 1.0 cannot carry it.
fn name(w: &mut Xml, name: &str) -> std::io::Result<()> {
    if needs_encoding_in_xml(name) {
        let encoded = utf8_percent_encode(name, NON_ALPHANUMERIC).to_string();
        w.create_element("Name")
            .with_attribute(("Encoded", "true"))
            .write_text_content(BytesText::new(&encoded))
            .map(|_| ())
    } else {
        text(w, "Name", name)
    }
}

fn blob(w: &mut Xml, b: &BlobListing, include_metadata: bool) -> std::io::Result<()> {
    let p = &b.properties;
    w.create_element("Blob")
        .write_inner_content(|w| {
            name(w, &b.name)?;
            if let Some(snap) = &p.snapshot {
                text(w, "Snapshot", snap)?;
            }
            w.create_element("Properties").write_inner_content(|w| {
                let lease_status = if p.lease_state == LeaseStateName::Leased {
                    "locked"
                } else {
                    "unlocked"
                };
                let content_type = p
                    .content
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into());
                for (name, value) in [
                    ("Last-Modified", http_date(p.last_modified)),
                    ("Etag", p.etag.clone()),
                    ("Content-Length", p.size.to_string()),
                    ("Content-Type", content_type),
                ] {
                    text(w, name, &value)?;
                }
                let c = &p.content;
                for (name, value) in [
                    ("Content-Encoding", &c.content_encoding),
                    ("Content-Language", &c.content_language),
                    ("Content-MD5", &c.content_md5),
                    ("Content-Disposition", &c.content_disposition),
                    ("Cache-Control", &c.cache_control),
                ] {
                    if let Some(v) = value {
                        text(w, name, v)?;
                    }
                }
                for (name, value) in [
                    ("x-ms-blob-sequence-number", p.sequence_number.to_string()),
                    ("BlobType", "PageBlob".into()),
                    ("LeaseStatus", lease_status.into()),
                    ("LeaseState", p.lease_state.as_str().into()),
                ] {
                    text(w, name, &value)?;
                }
                if let Some(d) = p.lease_duration {
                    text(w, "LeaseDuration", d.as_str())?;
                }
                if let Some(copy) = &p.copy {
                    text(w, "CopyId", &copy.id)?;
                    text(w, "CopyStatus", &copy.status)?;
                    text(w, "CopySource", &copy.source)?;
                    text(w, "IncrementalCopy", "true")?;
                    if let Some(s) = &copy.destination_snapshot {
                        text(w, "CopyDestinationSnapshot", s)?;
                    }
                    if let Some(t) = copy.completed_at {
                        text(w, "CopyCompletionTime", &http_date(t))?;
                    }
                }
                text(w, "ServerEncrypted", "false")
            })?;
            if include_metadata {
                metadata(w, &p.metadata)?;
            }
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
        let entry = ContainerEntry {
            name: "c<1>",
            properties: ContainerProperties {
                etag: "\"0x1\"".into(),
                last_modified: 0,
                metadata: Metadata::new(),
            },
        };
        let l = container_list(
            "http://h/a?x=1&y=\"2\"",
            &ListParams::default(),
            &[entry],
            None,
            false,
        );
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
            next_marker: Some("1024".into()),
        };
        assert_eq!(
            page_list(&list),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList><PageRange><Start>0</Start><End>511</End></PageRange><ClearRange><Start>512</Start><End>1023</End></ClearRange><NextMarker>1024</NextMarker></PageList>"
        );
    }
}
