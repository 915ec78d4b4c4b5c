//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` lines, then one
//! sample per line, `name{label="value",…} number`.

use std::fmt::Display;
use std::fmt::Write as _;

use super::atomic::HistogramSnapshot;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The type of a metric family, as written on its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A label value escaped for the exposition: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub(crate) fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Builds an exposition. Label values given to it must already be escaped.
pub(crate) struct TextWriter {
    out: String,
}

impl TextWriter {
    pub(crate) fn new() -> Self {
        TextWriter {
            out: String::with_capacity(8 * 1024),
        }
    }

    /// Writes the `# HELP` and `# TYPE` lines of a family. `help` must hold no `\` or newline.
    pub(crate) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(!help.contains(['\\', '\n']));
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// Writes one sample line.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{value}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of one histogram series.
    pub(crate) fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        snapshot: &HistogramSnapshot,
    ) {
        let bucket = format!("{name}_bucket");
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", ""));
        let le = with_le.len() - 1;
        for (bound, count) in &snapshot.cumulative {
            with_le[le].1 = bound;
            self.sample(&bucket, &with_le, count);
        }
        self.sample(&format!("{name}_sum"), labels, Float(snapshot.sum));
        self.sample(&format!("{name}_count"), labels, snapshot.count);
    }

    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// A float written the way Prometheus reads it (`+Inf`, `-Inf`, `NaN` for the special values).
pub(crate) struct Float(pub(crate) f64);

impl Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v == f64::INFINITY {
            f.write_str("+Inf")
        } else if v == f64::NEG_INFINITY {
            f.write_str("-Inf")
        } else {
            write!(f, "{v}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_label_value("plain-name_1"), "plain-name_1");
    }

    #[test]
    fn samples_and_families_are_written_in_the_text_format() {
        let mut w = TextWriter::new();
        w.family("worker_x_total", Kind::Counter, "Things.");
        w.sample("worker_x_total", &[("task", "t"), ("outcome", "ok")], 3);
        w.sample("worker_up", &[], Float(1.5));
        assert_eq!(
            w.finish(),
            "# HELP worker_x_total Things.\n# TYPE worker_x_total counter\n\
             worker_x_total{task=\"t\",outcome=\"ok\"} 3\nworker_up 1.5\n"
        );
    }

    #[test]
    fn special_floats_use_prometheus_spelling() {
        assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Float(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Float(0.25).to_string(), "0.25");
        assert_eq!(Float(2.0).to_string(), "2");
    }
}
