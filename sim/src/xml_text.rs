//! Text for the XML documents the simulator writes (the SVG timeline, JUnit reports): names
//! come from scenario files, so characters XML 1.0 cannot hold at all are replaced before the
//! usual escaping.

use std::borrow::Cow;

/// `text` with the characters XML 1.0 cannot hold (C0 controls other than tab, line feed and
/// carriage return; U+FFFE, U+FFFF) replaced by U+FFFD.
pub(crate) fn xml_safe(text: &str) -> Cow<'_, str> {
    let bad = |c: char| {
        (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFE}' || c == '\u{FFFF}'
    };
    if text.chars().any(bad) {
        Cow::Owned(
            text.chars()
                .map(|c| if bad(c) { '\u{FFFD}' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}

/// `text` ready for an XML attribute value or element content.
pub(crate) fn escaped(text: &str) -> String {
    quick_xml::escape::escape(xml_safe(text).as_ref()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_replaced_and_markup_escaped() {
        assert_eq!(escaped("a<\u{1}>&\"\n"), "a&lt;\u{FFFD}&gt;&amp;&quot;\n");
        assert!(matches!(xml_safe("plain"), Cow::Borrowed(_)));
    }
}
