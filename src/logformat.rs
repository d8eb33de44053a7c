//! The agent's JSON log lines, keyed as upstream's are (Go's `log/slog` JSON handler): `time`
//! (RFC 3339, UTC, nanoseconds), `level` (`DEBUG`, `INFO`, `WARN`, `ERROR`) and `msg`, then the
//! event's own fields. Log-based alerts and parsers written for upstream read these lines unchanged.

use std::fmt::{self, Write as _};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event as one JSON object on one line.
#[derive(Debug, Default, Clone, Copy)]
pub struct SlogJson;

/// The key of the message, and the keys a field of the same name would hide.
const RESERVED: [&str; 3] = ["time", "level", "msg"];

impl<S, N> FormatEvent<S, N> for SlogJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let line = line(jiff::Timestamp::now(), event);
        writer.write_str(&line)
    }
}

/// The line for `event` logged at `time`, with its trailing newline.
fn line(time: jiff::Timestamp, event: &Event<'_>) -> String {
    let mut fields = Fields::default();
    event.record(&mut fields);
    let mut out = String::with_capacity(128);
    out.push_str("{\"time\":");
    push_json(&mut out, &Value::String(format!("{time:.9}")));
    out.push_str(",\"level\":");
    push_json(
        &mut out,
        &Value::String(level_name(*event.metadata().level()).to_owned()),
    );
    out.push_str(",\"msg\":");
    push_json(&mut out, &Value::String(fields.message.unwrap_or_default()));
    for (key, value) in &fields.rest {
        out.push(',');
        // A field named like one of the line's own keys keeps its value under `fields.NAME`.
        let key = if RESERVED.contains(&key.as_str()) {
            format!("fields.{key}")
        } else {
            key.clone()
        };
        push_json(&mut out, &Value::String(key));
        out.push(':');
        push_json(&mut out, value);
    }
    out.push_str("}\n");
    out
}

fn push_json(out: &mut String, value: &Value) {
    // Writing a `Value` into a `String` cannot fail; `Display` of a Value is its compact JSON.
    let _ = write!(out, "{value}");
}

/// slog's names of the levels; trace, which slog does not have, is named as slog names a level
/// below `DEBUG`.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "DEBUG-4",
    }
}

/// An event's message and its other fields, in the order they were given.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    rest: Vec<(String, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.rest.push((field.name().to_owned(), value));
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    fn logged(f: impl FnOnce()) -> Vec<serde_json::Map<String, Value>> {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(SlogJson)
            .with_writer(out.clone())
            .with_max_level(Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().expect("the log").clone()).expect("UTF-8");
        text.lines()
            .map(|l| match serde_json::from_str(l) {
                Ok(Value::Object(map)) => map,
                other => panic!("{l:?} is not a JSON object: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn lines_carry_time_level_and_msg_as_upstream_does() {
        let lines = logged(|| {
            tracing::info!(node = "n1", pods = 3, forced = false, "drained node");
            tracing::warn!(error = %"lock held", "waiting");
        });
        let [drained, waiting] = lines.as_slice() else {
            panic!("two lines: {lines:?}")
        };
        assert_eq!(drained["level"], "INFO");
        assert_eq!(drained["msg"], "drained node");
        assert_eq!(drained["node"], "n1");
        assert_eq!(drained["pods"], 3);
        assert_eq!(drained["forced"], false);
        let time = drained["time"].as_str().expect("a time string");
        let parsed: jiff::Timestamp = time.parse().unwrap_or_else(|e| panic!("{time}: {e}"));
        assert!(time.ends_with('Z'), "{time}");
        assert!(parsed.as_second() > 1_700_000_000, "{time}");
        assert_eq!(waiting["level"], "WARN");
        assert_eq!(waiting["error"], "lock held");
    }

    #[test]
    fn every_level_is_named_as_slog_names_it() {
        let lines = logged(|| {
            tracing::error!("e");
            tracing::debug!("d");
            tracing::trace!("t");
        });
        let levels: Vec<_> = lines
            .iter()
            .map(|l| l["level"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(levels, ["ERROR", "DEBUG", "DEBUG-4"]);
    }

    #[test]
    fn a_field_named_like_a_key_of_the_line_does_not_replace_it() {
        let lines = logged(|| tracing::info!(time = "later", level = 7, msg = "field", "the message"));
        let [line] = lines.as_slice() else {
            panic!("one line: {lines:?}")
        };
        assert_eq!(line["msg"], "the message");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields.time"], "later");
        assert_eq!(line["fields.level"], 7);
        assert_eq!(line["fields.msg"], "field");
        assert!(line["time"].as_str().is_some_and(|t| t != "later"));
    }

    #[test]
    fn quotes_and_newlines_in_a_message_stay_inside_one_line() {
        let lines = logged(|| tracing::info!(reason = "a \"b\"\nc", "two\nlines"));
        let [line] = lines.as_slice() else {
            panic!("one line: {lines:?}")
        };
        assert_eq!(line["msg"], "two\nlines");
        assert_eq!(line["reason"], "a \"b\"\nc");
    }
}
