//! The few XML documents the Blob API answers with, written directly (escaped).

use crate::extent_map::PageRange;
use crate::timestamp::http_date;
use crate::types::{BlobListing, PageRangeList};

pub const DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>";

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

pub fn error(code: &str, message: &str) -> String {
    format!(
        "{DECLARATION}<Error><Code>{}</Code><Message>{}</Message></Error>",
        escape(code),
        escape(message)
    )
}

pub fn page_list(list: &PageRangeList) -> String {
    let mut s = format!("{DECLARATION}<PageList>");
    for PageRange {
        start,
        end,
        cleared,
    } in &list.ranges
    {
        let tag = if *cleared { "ClearRange" } else { "PageRange" };
        s.push_str(&format!(
            "<{tag}><Start>{start}</Start><End>{end}</End></{tag}>"
        ));
    }
    if let Some(m) = list.next_marker {
        s.push_str(&format!("<NextMarker>{m}</NextMarker>"));
    }
    s.push_str("</PageList>");
    s
}

pub fn container_list(service_url: &str, containers: &[String]) -> String {
    let mut s = format!(
        "{DECLARATION}<EnumerationResults ServiceEndpoint=\"{}\"><Containers>",
        escape(service_url)
    );
    for c in containers {
        s.push_str(&format!(
            "<Container><Name>{}</Name><Properties></Properties></Container>",
            escape(c)
        ));
    }
    s.push_str("</Containers><NextMarker /></EnumerationResults>");
    s
}

pub fn blob_list(service_url: &str, container: &str, blobs: &[BlobListing]) -> String {
    let mut s = format!(
        "{DECLARATION}<EnumerationResults ServiceEndpoint=\"{}\" ContainerName=\"{}\"><Blobs>",
        escape(service_url),
        escape(container)
    );
    for b in blobs {
        let p = &b.properties;
        s.push_str(&format!("<Blob><Name>{}</Name>", escape(&b.name)));
        if let Some(snap) = &p.snapshot {
            s.push_str(&format!("<Snapshot>{}</Snapshot>", escape(snap)));
        }
        s.push_str(&format!(
            "<Properties><Last-Modified>{}</Last-Modified><Etag>{}</Etag><Content-Length>{}</Content-Length><Content-Type>application/octet-stream</Content-Type><x-ms-blob-sequence-number>{}</x-ms-blob-sequence-number><BlobType>PageBlob</BlobType><LeaseStatus>{}</LeaseStatus><LeaseState>{}</LeaseState></Properties></Blob>",
            http_date(p.last_modified),
            escape(&p.etag),
            p.size,
            p.sequence_number,
            if p.lease_state.as_str() == "leased" { "locked" } else { "unlocked" },
            p.lease_state.as_str(),
        ));
    }
    s.push_str("</Blobs><NextMarker /></EnumerationResults>");
    s
}
