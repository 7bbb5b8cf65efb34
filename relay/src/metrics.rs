//! The Prometheus text exposition format, written directly: each binary keeps its counters
//! in atomics on its own structures and renders them on scrape.

use std::fmt::{Display, Write as _};

/// A scrape response being written.
#[derive(Default)]
pub struct PromText {
    out: String,
}

impl PromText {
    /// `# HELP` and `# TYPE` lines for a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample; label values are escaped as the format requires.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"");
                for c in value.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_and_escapes_labels() {
        let mut text = PromText::default();
        text.single("up", "gauge", "Whether it runs.", 1);
        text.family("req_total", "counter", "Requests.")
            .sample("req_total", &[("route", "www1")], 3)
            .sample("req_total", &[("route", "a\"b\\c\nd"), ("x", "y")], 4);
        assert_eq!(
            text.finish(),
            "# HELP up Whether it runs.\n# TYPE up gauge\nup 1\n\
             # HELP req_total Requests.\n# TYPE req_total counter\n\
             req_total{route=\"www1\"} 3\nreq_total{route=\"a\\\"b\\\\c\\nd\",x=\"y\"} 4\n"
        );
    }
}
