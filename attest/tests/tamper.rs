//! Damage that a crash cannot explain is an error naming the line, never skipped.

mod common;

use std::fs;

use common::{hex_digest, line, measurement};
use mint_attest::{parse_log, Error, MeasurementLog, MAX_LINE_LEN};

/// Writes `text` as a log file and opens it, expecting `Error::Corrupt`; returns the inner
/// error, after checking that the file was left as it was.
fn open_corrupt(text: &str) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    fs::write(&path, text).unwrap();
    let error = match MeasurementLog::open(&path) {
        Err(Error::Corrupt {
            path: named,
            source,
        }) => {
            assert_eq!(named, path);
            *source
        }
        other => panic!("expected Corrupt, got {other:?}"),
    };
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        text,
        "evidence untouched"
    );
    error
}

#[test]
fn corrupt_middle_line_names_its_line() {
    let text = line(0, 23, &hex_digest(0)) + "{\"index\":1,\"pcr\n" + &line(2, 23, &hex_digest(2));
    match open_corrupt(&text) {
        Error::Json { line: 2, .. } => {}
        other => panic!("expected Json at line 2, got {other:?}"),
    }
}

#[test]
fn corrupt_middle_line_before_a_torn_tail_is_still_an_error() {
    // Only one append is ever in flight, so only one line may be torn.
    let text = line(0, 23, &hex_digest(0)) + "garbage\n" + "{\"index\":2";
    let error = open_corrupt(&text);
    assert!(matches!(error, Error::Json { line: 2, .. }), "{error:?}");
}

#[test]
fn skipped_index_is_an_error() {
    let text =
        line(0, 23, &hex_digest(0)) + &line(1, 23, &hex_digest(1)) + &line(3, 23, &hex_digest(3));
    let error = open_corrupt(&text);
    assert!(
        matches!(
            error,
            Error::IndexGap {
                line: 3,
                expected: 2,
                found: 3
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "line 3: index 3 where 2 was expected (indices are 0-based and consecutive)"
    );
}

#[test]
fn deleted_first_entry_is_an_error() {
    let text = line(1, 23, &hex_digest(1)) + &line(2, 23, &hex_digest(2));
    let error = open_corrupt(&text);
    assert!(
        matches!(
            error,
            Error::IndexGap {
                line: 1,
                expected: 0,
                found: 1
            }
        ),
        "{error:?}"
    );
}

#[test]
fn duplicated_entry_is_an_error() {
    let first = line(0, 23, &hex_digest(0));
    let error = open_corrupt(&(first.clone() + &first));
    assert!(
        matches!(
            error,
            Error::IndexGap {
                line: 2,
                expected: 1,
                found: 0
            }
        ),
        "{error:?}"
    );
}

#[test]
fn bad_digests_are_errors() {
    for bad in [
        hex_digest(1)[..62].to_string(),       // too short
        hex_digest(1) + "00",                  // too long
        hex_digest(0xab).to_uppercase(),       // not the canonical spelling
        format!("{}zz", &hex_digest(1)[..62]), // not hex
        String::new(),
    ] {
        let text = line(0, 23, &hex_digest(0)) + &line(1, 23, &bad);
        match open_corrupt(&text) {
            Error::BadDigest { line: 2, digest } => assert_eq!(digest, bad),
            other => panic!("expected BadDigest at line 2 for {bad:?}, got {other:?}"),
        }
    }
}

#[test]
fn pcr_out_of_range_is_an_error() {
    for pcr in [24, 255, 256, u64::MAX] {
        let text = line(0, pcr, &hex_digest(0));
        let error = open_corrupt(&text);
        assert!(
            matches!(error, Error::PcrOutOfRange { line: 1, pcr: p } if p == pcr),
            "{error:?}"
        );
    }
}

#[test]
fn overlong_line_is_an_error() {
    let long = format!("{{\"name\":\"{}\"}}\n", "x".repeat(MAX_LINE_LEN));
    let text = line(0, 23, &hex_digest(0)) + &long + &line(1, 23, &hex_digest(1));
    let error = open_corrupt(&text);
    assert!(
        matches!(error, Error::LineTooLong { line: 2, len } if len == long.len() - 1),
        "{error:?}"
    );
}

#[test]
fn overlong_unterminated_tail_is_not_a_tear() {
    // An append never writes more than MAX_LINE_LEN + 1 bytes, so this is not a crash.
    let text = line(0, 23, &hex_digest(0)) + &"x".repeat(MAX_LINE_LEN + 1);
    let error = open_corrupt(&text);
    assert!(
        matches!(error, Error::LineTooLong { line: 2, .. }),
        "{error:?}"
    );
}

#[test]
fn well_formed_last_line_that_breaks_a_rule_is_corruption_not_a_tear() {
    let cases = [
        (
            line(0, 23, &hex_digest(0)) + &line(5, 23, &hex_digest(5)),
            "IndexGap",
        ),
        (
            line(0, 23, &hex_digest(0)) + &line(1, 23, "beef"),
            "BadDigest",
        ),
        (line(0, 23, &hex_digest(0)) + "{\"index\":1}\n", "Json"),
    ];
    for (text, want) in cases {
        let error = open_corrupt(&text);
        assert_eq!(error.line(), Some(2), "{want}: {error:?}");
        assert!(format!("{error:?}").starts_with(want), "{want}: {error:?}");
    }
}

#[test]
fn unknown_fields_are_refused() {
    let text = line(0, 23, &hex_digest(0)).replace("\"unix_time\"", "\"extra\":1,\"unix_time\"")
        + &line(1, 23, &hex_digest(1));
    let error = open_corrupt(&text);
    assert!(matches!(error, Error::Json { line: 1, .. }), "{error:?}");
}

#[test]
fn display_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    fs::write(
        &path,
        line(0, 23, &hex_digest(0)) + &line(1, 99, &hex_digest(1)),
    )
    .unwrap();
    let error = MeasurementLog::open(&path).unwrap_err();
    assert_eq!(error.line(), Some(2));
    assert_eq!(
        error.to_string(),
        format!("measurement log {} is corrupt", path.display())
    );
    let cause = std::error::Error::source(&error).unwrap().to_string();
    assert_eq!(cause, "line 2: PCR 99 is out of range 0..=23");
}

#[test]
fn parse_log_agrees_with_open() {
    // The fleet verifier parses bytes it received; it must reach the same verdicts.
    let text = line(0, 23, &hex_digest(0)) + "not json\n" + &line(2, 23, &hex_digest(2));
    assert!(matches!(
        parse_log(text.as_bytes()),
        Err(Error::Json { line: 2, .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut log = MeasurementLog::open(dir.path().join("m.jsonl")).unwrap();
    log.append(measurement(0)).unwrap();
    let bytes = fs::read(log.path()).unwrap();
    assert_eq!(parse_log(&bytes).unwrap().entries, log.entries());
}
