//! Hostile or broken files: not UTF-8, too large (or lying about their size), nested deep
//! enough to overflow a recursive parser, NUL bytes, numbers no field can hold. Each is refused
//! with an exact error; none panics, overflows the stack or reads without bound.

use std::io::Write;
use std::path::Path;

use mint_config::{Config, ConfigError, MAX_CONFIG_BYTES};

fn parse_error(text: &str) -> (Option<usize>, Option<usize>, Option<String>, String) {
    match Config::from_toml_str(text, "hostile.toml") {
        Err(ConfigError::Parse {
            line,
            column,
            key,
            message,
            ..
        }) => (line, column, key, message),
        Err(other) => panic!("expected a parse error, got: {other}"),
        Ok(_) => panic!("expected a parse error, but it loaded"),
    }
}

/// Run `f` on a thread with a small stack, so that unbounded recursion would crash the test.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic, no stack overflow")
}

// ---- encoding ----

#[test]
fn invalid_utf8_is_refused_with_its_position() {
    let bytes = b"[device]\nid = \"bo\xffard\"\n";
    let err = Config::from_toml_bytes(bytes, "bad.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad.toml: not valid UTF-8 at line 2, column 9"
    );
}

#[test]
fn invalid_utf8_in_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latin1.toml");
    // "é" in Latin-1, as an editor with the wrong encoding would write it.
    std::fs::write(&path, b"# caf\xe9\n").expect("write");
    let err = Config::load_existing(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: not valid UTF-8 at line 1, column 6", path.display())
    );
}

#[test]
fn utf16_file_is_refused() {
    let utf16: Vec<u8> = "[log]\n"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let mut bytes = vec![0xff, 0xfe];
    bytes.extend(utf16);
    let err = Config::from_toml_bytes(&bytes, "utf16.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "utf16.toml: not valid UTF-8 at line 1, column 1"
    );
}

// ---- size ----

#[test]
fn a_2_mib_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.toml");
    let line = "# padding padding padding padding padding padding padding padding\n";
    let text = line.repeat(2 * 1024 * 1024 / line.len() + 1);
    std::fs::write(&path, &text).expect("write");
    let err = Config::load_existing(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is {} bytes; a config file may be at most 1048576 bytes",
            path.display(),
            text.len()
        )
    );
    // `load` (missing file = defaults) refuses it just the same.
    match Config::load(&path) {
        Err(ConfigError::TooLarge { size, limit, .. }) => {
            assert_eq!((size, limit), (text.len() as u64, MAX_CONFIG_BYTES));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // And so do the in-memory entry points.
    let err = Config::from_toml_str(&text, "big.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "big.toml is {} bytes; a config file may be at most 1048576 bytes",
            text.len()
        )
    );
    let err = Config::from_toml_bytes(text.as_bytes(), "big.toml").unwrap_err();
    assert!(
        matches!(err, ConfigError::TooLarge { size, .. } if size == text.len() as u64),
        "{err:?}"
    );
}

#[test]
fn a_huge_sparse_file_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sparse.toml");
    let file = std::fs::File::create(&path).expect("create");
    // One TiB of holes: reading it whole would take hours and all memory.
    file.set_len(1 << 40).expect("sparse file");
    let started = std::time::Instant::now();
    let err = Config::load_existing(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is 1099511627776 bytes; a config file may be at most 1048576 bytes",
            path.display()
        )
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn a_file_that_lies_about_its_size_is_cut_off() {
    // /dev/zero reports size 0 and never ends; reading stops one byte past the limit.
    let path = Path::new("/dev/zero");
    if !path.exists() {
        return;
    }
    let err = Config::load_existing(path).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/dev/zero is 1048577 bytes; a config file may be at most 1048576 bytes"
    );
}

#[test]
fn exactly_1_mib_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edge.toml");
    let mut text = String::from("[log]\nlevel = \"debug\"\n");
    let filler = MAX_CONFIG_BYTES as usize - text.len();
    text.push('#');
    text.push_str(&"x".repeat(filler - 2));
    text.push('\n');
    assert_eq!(text.len() as u64, MAX_CONFIG_BYTES);
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(text.as_bytes()).expect("write");
    drop(file);
    assert_eq!(
        Config::load_existing(&path).expect("loads").log.level,
        "debug"
    );
}

// ---- reading ----

#[test]
fn a_directory_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for err in [
        Config::load(dir.path()).unwrap_err(),
        Config::load_existing(dir.path()).unwrap_err(),
    ] {
        assert_eq!(
            err.to_string(),
            format!("cannot read config file {}", dir.path().display())
        );
        match err {
            ConfigError::Io { path, source } => {
                assert_eq!(path, dir.path());
                assert_eq!(source.kind(), std::io::ErrorKind::IsADirectory);
            }
            other => panic!("expected Io, got {other:?}"),
        }
    }
}

#[test]
fn a_path_through_a_file_is_an_io_error_not_defaults() {
    // /etc/mintd.toml/x: ENOTDIR is not "the file does not exist".
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain");
    std::fs::write(&file, "").expect("write");
    let path = file.join("mintd.toml");
    match Config::load(&path).unwrap_err() {
        ConfigError::Io { path: p, source } => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotADirectory);
        }
        other => panic!("expected Io, got {other:?}"),
    }
}

// ---- nesting ----

#[test]
fn ten_thousand_nested_arrays() {
    let text = format!("a = {}", "[".repeat(10_000));
    let (line, column, key, message) = on_small_stack(move || parse_error(&text));
    assert_eq!((line, column, key), (Some(1), Some(85), None));
    assert_eq!(message, "cannot recurse further; max recursion depth met");
}

#[test]
fn ten_thousand_nested_arrays_under_a_real_key() {
    let text = format!(
        "[trust]\nkeys = {}{}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let (line, column, _, message) = on_small_stack(move || parse_error(&text));
    assert_eq!((line, column), (Some(2), Some(88)));
    assert_eq!(message, "cannot recurse further; max recursion depth met");
}

#[test]
fn ten_thousand_open_brackets_as_a_header() {
    let text = "[".repeat(10_000);
    let (line, column, key, message) = on_small_stack(move || parse_error(&text));
    assert_eq!((line, column, key), (Some(1), Some(3), None));
    assert_eq!(
        message,
        "unquoted keys cannot be empty, expected letters, numbers, `-`, `_`"
    );
}

#[test]
fn ten_thousand_nested_inline_tables() {
    let text = format!("a = {}", "{b=".repeat(10_000));
    let (line, column, _, message) = on_small_stack(move || parse_error(&text));
    assert_eq!((line, column), (Some(1), Some(245)));
    assert_eq!(message, "cannot recurse further; max recursion depth met");
}

#[test]
fn ten_thousand_dotted_keys() {
    let dotted = vec!["a"; 10_000].join(".");
    for text in [
        format!("{dotted} = 1"),
        format!("[{dotted}]"),
        format!("[[{dotted}]]"),
    ] {
        let (line, column, key, message) = on_small_stack(move || parse_error(&text));
        assert_eq!((line, column, key), (None, None, None));
        assert_eq!(
            message,
            "recursion limit: keys, tables or arrays are nested too deeply"
        );
    }
}

#[test]
fn nesting_at_a_depth_toml_allows_is_refused_by_type() {
    let text = format!(
        "[trust]\nkeys = {}\"/a.pub\"{}",
        "[".repeat(40),
        "]".repeat(40)
    );
    let (line, column, key, message) = parse_error(&text);
    assert_eq!((line, column), (Some(2), Some(9)));
    assert_eq!(key.as_deref(), Some("trust.keys[0]"));
    assert_eq!(message, "invalid type: sequence, expected path string");
}

// ---- bytes no TOML allows ----

#[test]
fn nul_bytes() {
    let (line, column, key, message) = parse_error("[trust]\nthreshold = 1\0\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(2), Some(13), Some("trust.threshold"))
    );
    assert_eq!(
        message,
        "string values must be quoted, expected literal string"
    );

    let (line, column, key, message) = parse_error("[device]\nid = \"a\0b\"\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(2), Some(8), Some("device.id"))
    );
    assert_eq!(
        message,
        "invalid basic string, expected non-double-quote visible characters, `\\`"
    );

    let (line, column, _, message) = parse_error("# comment \0 with a NUL\n");
    assert_eq!((line, column), (Some(1), Some(11)));
    assert_eq!(
        message,
        "invalid comment character, expected printable characters"
    );

    let (line, column, _, message) = parse_error("\0\0\0\0");
    assert_eq!((line, column), (Some(1), Some(5)));
    assert_eq!(message, "key with no value, expected `=`");
}

#[test]
fn escape_sequences_in_values_are_not_replayed_to_the_terminal() {
    let err =
        Config::from_toml_str("[log]\nlevel = \"\\u001b[2J\\u0007\"\n", "t.toml").unwrap_err();
    let shown = err.to_string();
    assert_eq!(
        shown,
        "t.toml: invalid configuration: log.level = \"\\u{1b}[2J\\u{7}\" is not one of error, \
         warn, info, debug, trace"
    );
    assert!(!shown.chars().any(char::is_control));
}

// ---- numbers ----

#[test]
fn integers_larger_than_toml_allows() {
    let (line, column, key, message) =
        parse_error("[limits]\nmax_bundle_bytes = 99999999999999999999999\n");
    assert_eq!((line, column), (Some(2), Some(20)));
    assert_eq!(key.as_deref(), Some("limits.max_bundle_bytes"));
    assert_eq!(
        message,
        "invalid type: integer `99999999999999999999999` as i128, expected u64"
    );
}

#[test]
fn integers_that_fit_u64_but_not_toml_are_read_and_bounded_by_validation() {
    let err = Config::from_toml_str(
        "[limits]\nmax_bundle_bytes = 18446744073709551615\n",
        "t.toml",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "t.toml: invalid configuration: limits.max_bundle_bytes = 18446744073709551615 exceeds \
         1099511627776 (1 TiB)"
    );
}

#[test]
fn huge_hex_integer() {
    let (_, _, key, message) = parse_error("[limits]\nmax_files = 0xffffffffffffffffffffffff\n");
    assert_eq!(key.as_deref(), Some("limits.max_files"));
    assert_eq!(
        message,
        "invalid type: integer `79228162514264337593543950335` as i128, expected u32"
    );
}

#[test]
fn floats_and_specials_for_integer_fields() {
    for (value, shown) in [
        ("1e30", "1000000000000000000000000000000.0"),
        ("inf", "inf"),
        ("-inf", "-inf"),
        ("nan", "NaN"),
        ("-0.0", "-0.0"),
    ] {
        let (_, _, key, message) = parse_error(&format!("[update]\ntrial_seconds = {value}\n"));
        assert_eq!(key.as_deref(), Some("update.trial_seconds"));
        assert_eq!(
            message,
            format!("invalid type: floating point `{shown}`, expected u64")
        );
    }
}

#[test]
fn a_datetime_for_a_string() {
    let (_, _, key, message) = parse_error("[device]\nid = 1979-05-27T07:32:00Z\n");
    assert_eq!(key.as_deref(), Some("device.id"));
    // toml hands a datetime to serde as a one-entry map.
    assert_eq!(message, "invalid type: map, expected a string");
}

// ---- size of what is reported ----

#[test]
fn a_megabyte_long_unknown_key_is_cut_in_the_message() {
    let key = "k".repeat(900_000);
    let text = format!("[trust]\n{key} = 1\n");
    let err = Config::from_toml_str(&text, "long.toml").unwrap_err();
    let shown = err.to_string();
    assert!(shown.len() < 2_000, "{} bytes", shown.len());
    match err {
        ConfigError::Parse { key, message, .. } => {
            let key = key.expect("key");
            assert!(key.starts_with("trust.kkkk"), "{key}");
            assert!(key.ends_with('…'), "{key}");
            assert!(message.starts_with("unknown field `kkkk"), "{message}");
            assert!(message.ends_with('…'), "{message}");
        }
        other => panic!("expected Parse, got {other:?}"),
    }
}
