//! Mistakes an operator makes while editing: a misspelt key, a wrong type, a value out of a
//! type's range, a key given twice. Each is an error naming the file, the line and column, and
//! the key, never a silently ignored setting.

use mint_config::{Config, ConfigError};

/// The parse error for `text`: (line, column, key, message) and the full display.
fn parse_error(text: &str) -> (Option<usize>, Option<usize>, Option<String>, String, String) {
    match Config::from_toml_str(text, "/etc/mintd/mintd.toml") {
        Err(err @ ConfigError::Parse { .. }) => {
            let display = err.to_string();
            let ConfigError::Parse {
                origin,
                line,
                column,
                key,
                message,
                source,
            } = err
            else {
                unreachable!()
            };
            assert_eq!(origin, "/etc/mintd/mintd.toml");
            // The parser's own report, with the offending line quoted, stays in the chain.
            if let (Some(line), Some(column)) = (line, column) {
                assert!(
                    source.to_string().starts_with(&format!(
                        "TOML parse error at line {line}, column {column}\n"
                    )),
                    "{source}"
                );
            }
            (line, column, key, message, display)
        }
        Err(other) => panic!("expected a parse error, got: {other}"),
        Ok(_) => panic!("expected a parse error, but it loaded:\n{text}"),
    }
}

const TRUST_FIELDS: &str = "expected one of `keys`, `keys_dir`, `threshold`, `fleet_keys`, \
                            `clock_skew_secs`";

#[test]
fn misspelt_key_is_named_with_its_table() {
    let (line, column, key, message, display) =
        parse_error("[device]\nid = \"a\"\n\n[trust]\ntreshold = 2\n");
    assert_eq!((line, column), (Some(5), Some(1)));
    assert_eq!(key.as_deref(), Some("trust.treshold"));
    assert_eq!(message, format!("unknown field `treshold`, {TRUST_FIELDS}"));
    assert_eq!(
        display,
        format!(
            "/etc/mintd/mintd.toml: line 5, column 1: key `trust.treshold`: unknown field \
             `treshold`, {TRUST_FIELDS}"
        )
    );
}

#[test]
fn misspelt_key_in_dotted_and_inline_form() {
    let (line, column, key, message, _) = parse_error("trust.treshold = 2\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(1), Some(7), Some("trust.treshold"))
    );
    assert_eq!(message, format!("unknown field `treshold`, {TRUST_FIELDS}"));

    let (line, column, key, _, _) = parse_error("trust = { threshold = 1, treshold = 2 }\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(1), Some(26), Some("trust.treshold"))
    );
}

#[test]
fn misspelt_section() {
    let (line, column, key, message, _) = parse_error("[trsut]\nthreshold = 2\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(1), Some(2), Some("trsut"))
    );
    assert_eq!(
        message,
        "unknown field `trsut`, expected one of `device`, `paths`, `trust`, `limits`, `update`, \
         `api`, `monitor`, `mqtt`, `attest`, `log`"
    );
}

#[test]
fn misspelt_key_in_a_nested_table() {
    let (line, column, key, message, _) =
        parse_error("[mqtt]\nenabled = true\n[mqtt.tls]\nca = \"/ca.pem\"\ncertificate = \"/c\"\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(5), Some(1), Some("mqtt.tls.certificate"))
    );
    assert_eq!(
        message,
        "unknown field `certificate`, expected one of `ca`, `cert`, `key`"
    );
}

#[test]
fn a_quoted_hostile_key_is_escaped_in_the_message() {
    let (_, _, key, _, _) = parse_error("[trust]\n\"thr\\u001b[2Jeshold\" = 1\n");
    assert_eq!(key.as_deref(), Some("trust.\"thr\\u{1b}[2Jeshold\""));
}

#[test]
fn wrong_type() {
    let (line, column, key, message, display) = parse_error("[limits]\nmax_files = \"many\"\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(2), Some(13), Some("limits.max_files"))
    );
    assert_eq!(message, "invalid type: string \"many\", expected u32");
    assert_eq!(
        display,
        "/etc/mintd/mintd.toml: line 2, column 13: key `limits.max_files`: invalid type: string \
         \"many\", expected u32"
    );
}

#[test]
fn wrong_type_for_a_whole_section() {
    let (line, column, key, message, _) = parse_error("limits = 3\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(1), Some(10), Some("limits"))
    );
    assert_eq!(message, "invalid type: integer `3`, expected struct Limits");
}

#[test]
fn wrong_type_inside_an_array() {
    let (line, column, key, message, _) = parse_error("[trust]\nkeys = [\"/a.pub\", 3]\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(2), Some(19), Some("trust.keys[1]"))
    );
    assert_eq!(message, "invalid type: integer `3`, expected path string");
}

#[test]
fn boolean_written_as_string() {
    let (_, _, key, message, _) = parse_error("[mqtt]\nenabled = \"yes\"\n");
    assert_eq!(key.as_deref(), Some("mqtt.enabled"));
    assert_eq!(message, "invalid type: string \"yes\", expected a boolean");
}

#[test]
fn negative_number_for_an_unsigned_field() {
    let (line, column, key, message, _) = parse_error("[limits]\nmax_files = -1\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(2), Some(13), Some("limits.max_files"))
    );
    assert_eq!(message, "invalid value: integer `-1`, expected u32");

    let (_, _, key, message, _) = parse_error("[trust]\nclock_skew_secs = -300\n");
    assert_eq!(key.as_deref(), Some("trust.clock_skew_secs"));
    assert_eq!(message, "invalid value: integer `-300`, expected u64");
}

#[test]
fn number_too_large_for_its_field() {
    let (_, _, key, message, _) = parse_error("[limits]\nmax_files = 4294967296\n");
    assert_eq!(key.as_deref(), Some("limits.max_files"));
    assert_eq!(message, "invalid value: integer `4294967296`, expected u32");

    let (_, _, key, message, _) = parse_error("[mqtt]\nport = 65536\n");
    assert_eq!(key.as_deref(), Some("mqtt.port"));
    assert_eq!(message, "invalid value: integer `65536`, expected u16");
}

#[test]
fn unknown_enum_value() {
    let (line, column, key, message, _) = parse_error("[attest]\nmode = \"TPM\"\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(2), Some(8), Some("attest.mode"))
    );
    assert_eq!(
        message,
        "unknown variant `TPM`, expected one of `auto`, `tpm`, `software`"
    );
}

#[test]
fn socket_mode_that_is_not_octal() {
    for (text, shown) in [
        ("\"abc\"", "\"abc\""),
        ("\"0680\"", "\"0680\""),
        ("\"\"", "\"\""),
        ("\"-660\"", "\"-660\""),
        ("\"07777777\"", "\"07777777\""),
    ] {
        let (_, _, key, message, _) = parse_error(&format!("[api]\nsocket_mode = {text}\n"));
        assert_eq!(key.as_deref(), Some("api.socket_mode"));
        assert_eq!(
            message,
            format!("file mode {shown} is not an octal number like \"0660\"")
        );
    }
}

#[test]
fn socket_mode_that_is_negative_or_huge() {
    let (_, _, key, message, _) = parse_error("[api]\nsocket_mode = -1\n");
    assert_eq!(key.as_deref(), Some("api.socket_mode"));
    assert_eq!(
        message,
        "file mode -1 is out of range; write it like 0o660 or \"0660\""
    );
    let (_, _, _, message, _) = parse_error("[api]\nsocket_mode = 4294967296\n");
    assert_eq!(
        message,
        "file mode 4294967296 is out of range; write it like 0o660 or \"0660\""
    );
    let (_, _, _, message, _) = parse_error("[api]\nsocket_mode = 1.5\n");
    assert_eq!(
        message,
        "invalid type: floating point `1.5`, expected a file mode as an integer (0o660) or an \
         octal string (\"0660\")"
    );
}

#[test]
fn tcp_address_that_does_not_parse() {
    let (_, _, key, message, _) = parse_error("[api]\ntcp = \"localhost:8080\"\n");
    assert_eq!(key.as_deref(), Some("api.tcp"));
    assert_eq!(message, "invalid socket address syntax");
}

#[test]
fn keys_dir_that_is_not_a_string() {
    let (_, _, key, message, _) = parse_error("[trust]\nkeys_dir = false\n");
    assert_eq!(key.as_deref(), Some("trust.keys_dir"));
    assert_eq!(message, "invalid type: boolean `false`, expected a string");
}

#[test]
fn tls_without_its_ca() {
    let (line, column, key, message, _) = parse_error("[mqtt.tls]\ncert = \"/c.pem\"\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(1), Some(1), Some("mqtt.tls"))
    );
    assert_eq!(message, "missing field `ca`");
}

#[test]
fn key_given_twice() {
    let (line, column, key, message, display) =
        parse_error("[trust]\nthreshold = 1\nthreshold = 2\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(3), Some(1), Some("trust.threshold"))
    );
    assert_eq!(message, "duplicate key");
    assert_eq!(
        display,
        "/etc/mintd/mintd.toml: line 3, column 1: key `trust.threshold`: duplicate key"
    );
}

#[test]
fn key_given_twice_at_top_level_in_dotted_form() {
    let (line, _, key, message, _) = parse_error("log.level = \"info\"\nlog.level = \"debug\"\n");
    assert_eq!((line, key.as_deref()), (Some(2), Some("log.level")));
    assert_eq!(message, "duplicate key");
}

#[test]
fn table_given_twice() {
    let (line, column, key, message, _) = parse_error("[trust]\nthreshold = 1\n[trust]\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(3), Some(2), Some("trust"))
    );
    assert_eq!(message, "duplicate key");
}

#[test]
fn value_missing() {
    let (line, column, key, message, _) = parse_error("[device]\nid =\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(2), Some(5), Some("device.id"))
    );
    assert_eq!(
        message,
        "string values must be quoted, expected literal string"
    );
}

#[test]
fn unterminated_string() {
    let (line, column, key, message, _) = parse_error("[device]\nid = \"board\n");
    assert_eq!(
        (line, column, key.as_deref()),
        (Some(2), Some(12), Some("device.id"))
    );
    assert_eq!(message, "invalid basic string, expected `\"`");
}
