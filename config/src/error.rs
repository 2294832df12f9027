//! Errors of this crate: one enum, each variant naming what failed and where.

use std::fmt;
use std::path::PathBuf;

/// Why a configuration could not be loaded, parsed, validated or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist, where one is required ([`crate::Config::load_existing`]).
    #[error("config file {} does not exist", path.display())]
    Missing {
        /// The path that was looked up.
        path: PathBuf,
    },

    /// The file exists but could not be read.
    #[error("cannot read config file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },

    /// The file is larger than any sensible configuration; refused before reading it whole.
    #[error("{origin} is {size} bytes; a config file may be at most {limit} bytes")]
    TooLarge {
        /// The file (or other origin) refused.
        origin: String,
        /// Its size in bytes (for a file that keeps growing, at least this many).
        size: u64,
        /// The limit, [`crate::MAX_CONFIG_BYTES`].
        limit: u64,
    },

    /// The file is not UTF-8, so it cannot be TOML.
    #[error("{origin}: not valid UTF-8 at line {line}, column {column}")]
    NotUtf8 {
        /// The file (or other origin).
        origin: String,
        /// 1-based line of the first invalid byte.
        line: usize,
        /// 1-based column (in characters) of the first invalid byte.
        column: usize,
    },

    /// The text is not valid TOML, or does not fit the configuration's types (an unknown
    /// key, a wrong type, a missing required key).
    #[error("{}", render_parse(origin, *line, *column, key.as_deref(), message))]
    Parse {
        /// The file (or other origin).
        origin: String,
        /// 1-based line of the offending text, when the parser reported a position.
        line: Option<usize>,
        /// 1-based column (in characters) of the offending text.
        column: Option<usize>,
        /// Dotted path of the offending key, such as `trust.treshold`, when it could be
        /// determined.
        key: Option<String>,
        /// What is wrong, as the TOML parser or the type said it.
        message: String,
        /// The parser's error, whose display quotes the offending line.
        #[source]
        source: Box<toml::de::Error>,
    },

    /// The configuration parsed, but some values are unusable. Lists every problem found.
    #[error("{origin}: {}", render_problems(problems))]
    Invalid {
        /// The file (or other origin).
        origin: String,
        /// Every problem found, in the order of the sections.
        problems: Vec<Problem>,
    },

    /// The configuration could not be rendered as TOML (a path that is not UTF-8, or a number
    /// that TOML cannot hold).
    #[error("cannot render the configuration as TOML")]
    Render {
        /// The serializer's error.
        #[source]
        source: toml::ser::Error,
    },
}

/// One problem found by [`crate::Config::validate`].
///
/// Displays as the key followed by the reason, for example
/// `trust.threshold = 3 but only 2 keys are listed`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    /// Dotted path of the key at fault, such as `trust.threshold` or `trust.keys[1]`.
    pub key: String,
    /// What is wrong with it, phrased to follow the key.
    pub reason: String,
}

impl Problem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.key, self.reason)
    }
}

fn render_parse(
    origin: &str,
    line: Option<usize>,
    column: Option<usize>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut out = origin.to_owned();
    if let Some(line) = line {
        out.push_str(&format!(": line {line}"));
        if let Some(column) = column {
            out.push_str(&format!(", column {column}"));
        }
    }
    if let Some(key) = key {
        out.push_str(&format!(": key `{key}`"));
    }
    out.push_str(": ");
    out.push_str(message);
    out
}

fn render_problems(problems: &[Problem]) -> String {
    let mut out = match problems.len() {
        1 => "invalid configuration: ".to_owned(),
        n => format!("invalid configuration, {n} problems: "),
    };
    for (i, problem) in problems.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&problem.to_string());
    }
    out
}
