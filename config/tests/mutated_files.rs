//! Corrupted and edited copies of the example file, as a quick deterministic stand-in for the
//! `fuzz/fuzz_targets/config.rs` target: loading never panics, and whatever loads renders to
//! TOML that loads back to the same configuration.

use std::path::Path;

use mint_config::Config;

/// xorshift64*: a reproducible stream without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"{",
    b"}",
    b"=",
    b".",
    b",",
    b"\"",
    b"'",
    b"'''",
    b"\"\"\"",
    b"\n",
    b"#",
    b"\0",
    b"\xff",
    b"\\u0000",
    b"-1",
    b"0",
    b"0o777",
    b"99999999999999999999",
    b"1e400",
    b"nan",
    b"true",
    b"1979-05-27",
    b"\"0666\"",
    b"\"\"",
    b"\"../x\"",
    b"\"0.0.0.0:1\"",
    b"threshold = 9\n",
    b"[mqtt.tls]\n",
    b"cert = \"/c\"\n",
    b"keys_dir = \"\"\n",
    b"id = \"fleet\"\n",
    b"[trust]\n",
    b"\xef\xbb\xbf",
    b"\r\n",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if !out.is_empty() => {
                let at = at.min(out.len() - 1);
                out[at] ^= 1 << rng.below(8);
            }
            1 => {
                let end = (at + rng.below(64)).min(out.len());
                out.drain(at..end);
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            3 => {
                // Repeat a slice: duplicate keys and tables, deep nesting.
                let end = (at + rng.below(32)).min(out.len());
                let piece = out[at..end].to_vec();
                for _ in 0..rng.below(8) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            _ => out.truncate(at),
        }
    }
    out
}

fn check(data: &[u8]) -> bool {
    match Config::from_toml_bytes(data, "mutated.toml") {
        Ok(config) => {
            let text = config
                .to_toml_string()
                .expect("a valid configuration renders");
            let back = Config::from_toml_str(&text, "rendered.toml")
                .unwrap_or_else(|e| panic!("rendered configuration must load: {e}\n{text}"));
            assert_eq!(back, config, "round trip changed the configuration");
            true
        }
        Err(err) => {
            let mut shown = err.to_string();
            let mut cause = std::error::Error::source(&err);
            while let Some(inner) = cause {
                shown.push_str(&inner.to_string());
                cause = inner.source();
            }
            assert!(!shown.is_empty());
            false
        }
    }
}

#[test]
fn mutated_example_files_never_panic_and_round_trip() {
    let example = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("mintd.toml"))
        .expect("example file");
    let mut rng = Rng(0x6d69_6e74_6421_0001);
    let mut loaded = 0;
    let rounds = 10_000;
    for _ in 0..rounds {
        let data = mutate(&mut rng, &example);
        if check(&data) {
            loaded += 1;
        }
    }
    eprintln!("{loaded} of {rounds} mutations loaded");
    // Both paths must have been exercised for the test to mean anything.
    assert!(loaded > 50, "only {loaded} of {rounds} mutations loaded");
    assert!(loaded < rounds, "no mutation was refused");
}
