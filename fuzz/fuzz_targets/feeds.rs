//! Feed bodies in every format: no panic; every data line is an entry or a bad line; every
//! entry is a canonical network; plain and netset read the same; a second parse agrees.
//!
//! The first byte picks the CSV column (0-3) and whether the CSV header is skipped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xdpwall::{
    feeds::parse::{CsvOptions, FeedFormat, Parsed, parse},
    rules::normalize_cidr,
};

const FORMATS: [FeedFormat; 5] = [
    FeedFormat::Plain,
    FeedFormat::Netset,
    FeedFormat::SpamhausJson,
    FeedFormat::Dshield,
    FeedFormat::Csv,
];

fuzz_target!(|data: &[u8]| {
    let Some((&options, body)) = data.split_first() else {
        return;
    };
    let csv = CsvOptions {
        column: usize::from(options & 3),
        skip_header: options & 4 != 0,
    };
    let body = String::from_utf8_lossy(body);
    let mut results: Vec<Parsed> = Vec::new();
    for format in &FORMATS {
        let parsed = parse(format, &body, &csv);
        assert_eq!(
            parsed.entries.len() + parsed.bad_lines,
            parsed.data_lines,
            "format {format}: an entry or a bad line for every data line"
        );
        assert!(parsed.data_lines <= body.lines().count(), "format {format}");
        assert!(
            parsed.bad_samples.len() <= parsed.bad_lines.min(5),
            "format {format}: {} samples for {} bad lines",
            parsed.bad_samples.len(),
            parsed.bad_lines
        );
        for sample in &parsed.bad_samples {
            assert!(
                (1..=body.lines().count()).contains(&sample.line),
                "format {format}: bad line number {} out of range",
                sample.line
            );
        }
        for net in &parsed.entries {
            assert_eq!(
                normalize_cidr(&net.to_string()),
                Ok(*net),
                "format {format}: entry {net} is not canonical"
            );
        }
        let again = parse(format, &body, &csv);
        assert_eq!(again, parsed, "format {format}: not deterministic");
        results.push(parsed);
    }
    // Netset is plain with comment headers: the same reader.
    assert_eq!(results[0].entries, results[1].entries);
    assert_eq!(results[0].bad_lines, results[1].bad_lines);
});
