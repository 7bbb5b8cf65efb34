//! HTML escaping for the pages the binaries serve (the balancer-manager, the demo app):
//! whatever a request, a map or an agent sent is text, never markup.

/// `text` with the characters that mean something in HTML element content and attribute
/// values replaced by their entities.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
