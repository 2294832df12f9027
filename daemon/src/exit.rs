//! The one place where errors become exit codes, error lines and `{"error": ...}` JSON.

use mint_updater::{BundleError, Check};

use crate::client::ClientError;

/// Exit codes of `mintctl` and `mintd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The operation failed (I/O, bad input, bad arguments' content).
    Failure = 1,
    /// The command line could not be parsed.
    Usage = 2,
    /// A bundle was refused by a verification check.
    Refused = 3,
}

/// The verification check that refused, if the error chain holds a bundle refusal.
pub fn refused_check(err: &anyhow::Error) -> Option<Check> {
    err.chain()
        .find_map(|e| e.downcast_ref::<BundleError>())
        .map(BundleError::check)
        .filter(|c| *c != Check::Io)
}

/// The name of the check that refused, locally or in the daemon (`health`, `quarantine`
/// and every bundle check).
pub fn refusal(err: &anyhow::Error) -> Option<String> {
    refused_check(err).map(|c| c.name().to_owned()).or_else(|| {
        err.chain()
            .find_map(|e| match e.downcast_ref::<ClientError>() {
                Some(ClientError::Api { check: Some(c), .. }) if c != "io" => Some(c.clone()),
                _ => None,
            })
    })
}

/// Exit code for an error.
pub fn code(err: &anyhow::Error) -> Exit {
    if refusal(err).is_some() {
        Exit::Refused
    } else {
        Exit::Failure
    }
}

/// Prints the error (one line, then the cause chain) to stderr, or as JSON to stdout, and
/// returns the exit code.
pub fn report(err: &anyhow::Error, json: bool) -> i32 {
    let check = refusal(err);
    if json {
        let causes: Vec<String> = err.chain().skip(1).map(|e| e.to_string()).collect();
        let body = serde_json::json!({
            "error": err.to_string(),
            "check": check,
            "causes": causes,
        });
        println!("{body}");
    } else {
        eprintln!("error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
    }
    code(err) as i32
}
