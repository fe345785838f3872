//! Log output: JSON lines for containers (one object per event, fields at
//! the top level), human text on a terminal. Always on stderr, so that the
//! stdout of `keygen` stays clean for piping.
//!
//! Fields hold what clients send (user names, key comments, certificate key
//! IDs, destinations). JSON escapes them; for the text format, [`EscapedFields`]
//! does, in every field and the message, whichever call site logged them: no
//! event can span two lines or rewrite the terminal it is shown on.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level, with
/// targets and levels (`info,bastion_sshd=debug`). A plain target filter, not `EnvFilter`,
/// whose regex engine weighed 350 KiB in the binary and is not needed for that.
pub fn init(format: Option<LogFormat>) {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() { LogFormat::Text } else { LogFormat::Json });
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    // The metrics count the audit events whatever RUST_LOG says (`metrics`).
    let counting = crate::metrics::CountingLayer.with_filter(Targets::new().with_target("audit", LevelFilter::INFO));
    let registry = tracing_subscriber::registry().with(counting);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(EscapedFields)
                    .with_target(false)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .init(),
    }
}

/// The text format's fields, as tracing-subscriber's `DefaultFields` writes
/// them (`message name=value …`), with control characters escaped in every
/// value and in the message.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'w> MakeVisitor<Writer<'w>> for EscapedFields {
    type Visitor = EscapedVisitor<'w>;

    fn make_visitor(&self, writer: Writer<'w>) -> Self::Visitor {
        EscapedVisitor { writer, first: true, result: Ok(()) }
    }
}

/// Writes one event's (or span's) fields for [`EscapedFields`].
pub struct EscapedVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for EscapedVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"))
        } else {
            self.record_debug(field, &value)
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // Metadata of `log` records (russh's), which the formatter shows already.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let separator = if std::mem::take(&mut self.first) { "" } else { " " };
        let ansi = self.writer.has_ansi_escapes();
        self.result = (|| {
            self.writer.write_str(separator)?;
            if name != "message" {
                let name = name.strip_prefix("r#").unwrap_or(name);
                match ansi {
                    // DefaultFields' styles: the name in italics, a dimmed `=`.
                    true => write!(self.writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?,
                    false => write!(self.writer, "{name}=")?,
                }
            }
            write!(Escaping(&mut self.writer), "{value:?}")
        })();
    }
}

impl VisitOutput<fmt::Result> for EscapedVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for EscapedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Passes text through with every character that could end, rewrite or
/// disguise a log line replaced by a visible escape (see [`escaped`]).
struct Escaping<W>(W);

impl<W: fmt::Write> fmt::Write for Escaping<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in text.char_indices() {
            if let Some(escape) = escaped(c) {
                self.0.write_str(&text[plain..i])?;
                escape.write_to(&mut self.0)?;
                plain = i + c.len_utf8();
            }
        }
        self.0.write_str(&text[plain..])
    }
}

/// How an unsafe character is written.
enum Escape {
    Named(&'static str),
    Byte(char),
    Unicode(char),
}

impl Escape {
    fn write_to(self, out: &mut impl fmt::Write) -> fmt::Result {
        match self {
            Escape::Named(s) => out.write_str(s),
            Escape::Byte(c) => write!(out, "\\x{:02x}", u32::from(c)),
            Escape::Unicode(c) => write!(out, "\\u{{{:x}}}", u32::from(c)),
        }
    }
}

/// `\n`, `\r`, `\t`; other C0 controls (ESC included) and DEL as `\xNN`; C1
/// controls (NEL U+0085 included), the Unicode line and paragraph separators
/// and the bidirectional controls (which make a line display as other text)
/// as `\u{…}`. Everything else, backslashes included, is written as is.
fn escaped(c: char) -> Option<Escape> {
    match c {
        '\n' => Some(Escape::Named("\\n")),
        '\r' => Some(Escape::Named("\\r")),
        '\t' => Some(Escape::Named("\\t")),
        '\0'..='\x1f' | '\x7f' => Some(Escape::Byte(c)),
        '\u{80}'..='\u{9f}'
        | '\u{2028}'
        | '\u{2029}'
        | '\u{061c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}' => Some(Escape::Unicode(c)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn escape(text: &str) -> String {
        let mut out = String::new();
        write!(Escaping(&mut out), "{text}").unwrap();
        out
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("ops\nFAKE event=auth.accepted"), r"ops\nFAKE event=auth.accepted");
        assert_eq!(escape("a\rb\tc\0d\x07e\x08f\x0bg\x0ch\x7fi"), r"a\rb\tc\x00d\x07e\x08f\x0bg\x0ch\x7fi");
        assert_eq!(escape("\x1b[2K\x1b]0;title\x07"), r"\x1b[2K\x1b]0;title\x07");
        assert_eq!(escape("\u{85}\u{9b}31m"), r"\u{85}\u{9b}31m");
        assert_eq!(escape("x\u{2028}y\u{2029}z"), r"x\u{2028}y\u{2029}z");
        assert_eq!(escape("user\u{202e}nimda"), r"user\u{202e}nimda");
        // Printable text, multi-byte or not, and backslashes, pass unchanged.
        assert_eq!(escape(r"ops@laptop é ü 東京 \n"), r"ops@laptop é ü 東京 \n");
        assert_eq!(escape(""), "");
        // Every C0 and C1 control is escaped.
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            assert!(!escape(&format!("a{c}b")).contains(c), "{c:?}");
        }
    }

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// One event logged the ways call sites log: Display (`%`), Debug (`?`),
    /// a plain &str and a formatted message; what the text format writes.
    fn logged(ansi: bool) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(ansi)
            .with_target(false)
            .fmt_fields(EscapedFields)
            .finish();
        let user = "ops\nFAKE event=auth.accepted\r\x1b[2K";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                event = "tunnel.refused",
                user = %user,
                comment = ?user,
                destination = user,
                r#type = %"a\nb",
                "tunnel to {user} refused\nFAKE too"
            );
        });
        let bytes = buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn an_event_is_one_line_whatever_its_fields_hold() {
        let text = logged(false);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'));
        assert!(!text.trim_end().chars().any(|c| c.is_control()), "{text:?}");
        assert!(
            text.contains(
                r#"tunnel to ops\nFAKE event=auth.accepted\r\x1b[2K refused\nFAKE too event="tunnel.refused""#
            ),
            "{text}"
        );
        assert!(text.contains(r" user=ops\nFAKE event=auth.accepted\r\x1b[2K comment="), "{text}");
        // Debug and &str values were quoted and escaped by Rust already; not escaped twice.
        assert!(text.contains(r#" comment="ops\nFAKE event=auth.accepted\r\u{1b}[2K" destination=""#), "{text}");
        assert!(text.contains(r" type=a\nb"), "{text}");

        // With colours, the only escape characters are the formatter's own styles.
        let text = logged(true);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(!text.contains("\x1b[2K") && !text.contains('\r'), "{text:?}");
        assert!(text.contains("\x1b[3muser\x1b[0m\x1b[2m=\x1b[0mops\\nFAKE"), "{text:?}");
    }
}
