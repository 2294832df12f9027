//! From untrusted bytes to a typed [`Config`], with errors that point at the offending key.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::ConfigError;
use crate::model::Config;
use crate::MAX_CONFIG_BYTES;

/// Deeper than any table in [`Config`]; bounds the walk that looks for an error's key, should
/// the parser ever hand back a deeper tree.
const MAX_KEY_DEPTH: usize = 16;

/// Longest parser message kept in [`ConfigError::Parse`]; a message may quote a value, and
/// one line of log should not become a megabyte.
const MAX_MESSAGE_CHARS: usize = 512;

/// Longest key path kept in [`ConfigError::Parse`].
const MAX_KEY_CHARS: usize = 128;

pub(crate) fn check_size(len: u64, origin: &str) -> Result<(), ConfigError> {
    if len > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            origin: origin.to_owned(),
            size: len,
            limit: MAX_CONFIG_BYTES,
        });
    }
    Ok(())
}

pub(crate) fn utf8<'b>(bytes: &'b [u8], origin: &str) -> Result<&'b str, ConfigError> {
    std::str::from_utf8(bytes).map_err(|err| {
        let valid = &bytes[..err.valid_up_to()];
        // The prefix up to `valid_up_to` is valid UTF-8 by definition.
        let valid = std::str::from_utf8(valid).unwrap_or_default();
        let (line, column) = line_column(valid, valid.len());
        ConfigError::NotUtf8 {
            origin: origin.to_owned(),
            line,
            column,
        }
    })
}

pub(crate) fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    toml::from_str::<Config>(text).map_err(|err| {
        let span = err.span();
        let (line, column) = match &span {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        let message = err.message().trim_end();
        let key = span.and_then(|span| key_at(text, span, message));
        let message = match message {
            "recursion limit" => {
                "recursion limit: keys, tables or arrays are nested too deeply".to_owned()
            }
            message => truncate(message, MAX_MESSAGE_CHARS),
        };
        ConfigError::Parse {
            origin: origin.to_owned(),
            line,
            column,
            key,
            message,
            source: Box::new(err),
        }
    })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.as_bytes().get(..offset).unwrap_or_default();
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |nl| nl + 1);
    let column = match text.get(line_start..offset) {
        Some(s) => s.chars().count() + 1,
        None => offset - line_start + 1,
    };
    (line, column)
}

/// The dotted path of the key whose name or value `span` points into, e.g. `trust.treshold`
/// for an unknown key or `limits.max_files` for a value of the wrong type.
fn key_at(text: &str, span: Range<usize>, message: &str) -> Option<String> {
    // Best effort: even a document with a syntax error yields the part before the error.
    let (root, _) = DeTable::parse_recoverable(text);
    let strict = KeySearch::run(root.get_ref(), span.start, false);
    // An error just past a value (an unterminated string stops at the end of its line)
    // belongs to that value.
    let found = strict.or_else(|| KeySearch::run(root.get_ref(), span.start, true));
    let found = found.map(|path| truncate(&path, MAX_KEY_CHARS));
    match found {
        Some(path) => Some(path),
        // The second of two equal keys never makes it into the tree; name it from its text
        // and the table header above it.
        None if message == "duplicate key" => {
            duplicate_key_path(text, span).map(|path| truncate(&path, MAX_KEY_CHARS))
        }
        None => None,
    }
}

/// `[table]` header above `span` joined with the key text at `span`, for a duplicate key.
fn duplicate_key_path(text: &str, span: Range<usize>) -> Option<String> {
    // From the start of the line, so that a dotted key (`log.level`) is named whole.
    let line_start = text.get(..span.start)?.rfind('\n').map_or(0, |nl| nl + 1);
    let key = text.get(line_start..span.end)?.trim();
    let is_key_text = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '));
    if !is_key_text {
        return None;
    }
    let key: String = key.split('.').map(str::trim).collect::<Vec<_>>().join(".");
    let header = text
        .get(..span.start)?
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('['))
        .map(|line| {
            line.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
        });
    let header_is_plain = |header: &str| {
        !header.is_empty()
            && header
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    Some(match header {
        Some(header) if header_is_plain(header) => format!("{header}.{key}"),
        _ => key,
    })
}

/// `text` cut to at most `max` characters, marked with `…` when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Depth-first search of a parsed document for the narrowest key or value span containing a
/// byte offset.
struct KeySearch {
    at: usize,
    /// Also count a span that ends exactly at `at`.
    end_inclusive: bool,
    path: Vec<String>,
    best: Option<(usize, Vec<String>)>,
}

impl KeySearch {
    fn run(root: &DeTable<'_>, at: usize, end_inclusive: bool) -> Option<String> {
        let mut search = KeySearch {
            at,
            end_inclusive,
            path: Vec::new(),
            best: None,
        };
        search.table(root, 0);
        search.best.map(|(_, path)| path.join("."))
    }

    fn table(&mut self, table: &DeTable<'_>, depth: usize) {
        if depth > MAX_KEY_DEPTH {
            return;
        }
        for (key, value) in table.iter() {
            // Error recovery leaves placeholder keys with empty spans behind; a real key,
            // even `""`, always spans its text.
            if key.span().is_empty() {
                continue;
            }
            self.path.push(render_key(key.get_ref()));
            self.consider(key.span());
            self.value(value, depth);
            self.path.pop();
        }
    }

    fn value(&mut self, value: &Spanned<DeValue<'_>>, depth: usize) {
        self.consider(value.span());
        match value.get_ref() {
            DeValue::Table(table) => self.table(table, depth + 1),
            DeValue::Array(items) if depth <= MAX_KEY_DEPTH => {
                for (i, item) in items.iter().enumerate() {
                    // Arrays only ever appear under a key, so the path is never empty.
                    let Some(last) = self.path.last_mut() else {
                        return;
                    };
                    let base_len = last.len();
                    last.push_str(&format!("[{i}]"));
                    self.value(item, depth + 1);
                    if let Some(last) = self.path.last_mut() {
                        last.truncate(base_len);
                    }
                }
            }
            _ => {}
        }
    }

    fn consider(&mut self, span: Range<usize>) {
        let at = self.at;
        // An empty span (end of input) contains its start.
        let contains = span.start <= at
            && (at < span.end || at == span.start || (self.end_inclusive && at == span.end));
        if !contains {
            return;
        }
        let width = span.end - span.start;
        let better = match &self.best {
            None => true,
            // Narrower wins; on a tie the later visited (deeper) path wins.
            Some((best_width, _)) => width <= *best_width,
        };
        if better {
            self.best = Some((width, self.path.clone()));
        }
    }
}

/// A key as it would be written in TOML: bare when it can be, quoted and escaped otherwise,
/// so that a hostile key cannot smuggle control characters into a log line.
fn render_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_characters() {
        let text = "a = 1\né = \"x\" y";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_column(text, 8), (2, 2));
        assert_eq!(line_column(text, text.len()), (2, 10));
        assert_eq!(line_column(text, usize::MAX), (2, 10));
    }

    #[test]
    fn render_key_quotes_what_is_not_bare() {
        assert_eq!(render_key("threshold"), "threshold");
        assert_eq!(render_key("a b"), "\"a b\"");
        assert_eq!(render_key("\u{1b}[31m"), "\"\\u{1b}[31m\"");
        assert_eq!(render_key(""), "\"\"");
    }

    #[test]
    fn check_size_names_size_and_limit() {
        let err = check_size(MAX_CONFIG_BYTES + 1, "x.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.toml is 1048577 bytes; a config file may be at most 1048576 bytes"
        );
        assert!(check_size(MAX_CONFIG_BYTES, "x.toml").is_ok());
    }
}
