//! A zone file's text, whatever it holds: parsed, and if accepted, prepared for
//! serving. Never a panic; every refusal an error naming the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use svcdns::dns::{zone_file, Zones};

fuzz_target!(|text: &str| {
    if let Ok(spec) = zone_file::parse(text, Path::new("fuzz.yaml"), 5, None) {
        let _ = Zones::new(&[spec]);
    }
});
