//! Fuzz `mintd.toml` loading: any bytes must give a `Config` or a `ConfigError`, never a panic,
//! a stack overflow or an unbounded allocation; a configuration that loads must render to TOML
//! that loads back to the same configuration (what `mintctl config check --print` relies on).
//!
//! Run: `cargo fuzz run config fuzz/corpus/config` (seed the corpus with config/mintd.toml).

#![no_main]

use libfuzzer_sys::fuzz_target;
use mint_config::Config;

fuzz_target!(|data: &[u8]| {
    match Config::from_toml_bytes(data, "fuzz.toml") {
        Ok(config) => {
            let text = match config.to_toml_string() {
                Ok(text) => text,
                Err(err) => panic!("a valid configuration must render: {err}"),
            };
            match Config::from_toml_str(&text, "rendered.toml") {
                Ok(back) => assert_eq!(back, config, "round trip changed the configuration"),
                Err(err) => panic!("a rendered configuration must load: {err}\n{text}"),
            }
        }
        Err(err) => {
            // Displaying the error and its whole cause chain must not panic either.
            let mut shown = err.to_string();
            let mut cause = std::error::Error::source(&err);
            while let Some(inner) = cause {
                shown.push_str(&inner.to_string());
                cause = inner.source();
            }
            std::hint::black_box(shown);
        }
    }
});
