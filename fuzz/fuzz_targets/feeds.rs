//! Feed bodies in every format: no panic; every data line is an entry or a bad line; every
//! entry is a canonical network; plain and netset read the same; a second parse agrees.
//! The table formats (ip2asn, geolite2-asn, geolite2-country): no panic; canonical entries;
//! which lines are bad does not depend on the selection; a wider selection keeps every entry
//! of a narrower one; a locations file is parsed or refused, never a panic.
//!
//! The first byte picks the CSV column (0-3), whether the CSV header is skipped, and (bits 3-4)
//! one more AS number for the table selection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xdpwall::{
    feeds::{
        parse::{CsvOptions, FeedFormat, Parsed, parse},
        table::{self, CountryCode, Locations, Selection},
    },
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

    tables(options, &body);
});

const TABLES: [FeedFormat; 3] = [
    FeedFormat::Ip2asn,
    FeedFormat::Geolite2Asn,
    FeedFormat::Geolite2Country,
];

fn tables(options: u8, body: &str) {
    let _ = Locations::parse(body);
    let locations = Locations::parse(include_str!(
        "../../blocklists/fixtures/geolite2_country_locations_lab.csv"
    ))
    .expect("the fixture parses");
    let country = |code| CountryCode::from_config(code).expect("an ISO code");
    let narrow = Selection {
        asns: [64500 + u32::from(options >> 3 & 3)].into(),
        countries: [country("FR")].into(),
    };
    let mut wide = narrow.clone();
    wide.asns.extend([0, 13335, 38803, 64503]);
    wide.countries.extend([country("NL"), country("US"), country("AU")]);
    let lines = body.lines().count();
    for format in &TABLES {
        let small = table::parse(format, body, &narrow, Some(&locations));
        let big = table::parse(format, body, &wide, Some(&locations));
        assert!(small.data_lines <= lines, "format {format}");
        assert!(small.bad_lines <= small.data_lines, "format {format}");
        assert!(small.bad_samples.len() <= small.bad_lines.min(5), "format {format}");
        assert_eq!(
            (small.data_lines, small.bad_lines, &small.bad_samples),
            (big.data_lines, big.bad_lines, &big.bad_samples),
            "format {format}: bad lines depend on the selection"
        );
        for net in &big.entries {
            assert_eq!(
                normalize_cidr(&net.to_string()),
                Ok(*net),
                "format {format}: entry {net} is not canonical"
            );
        }
        let wider: std::collections::BTreeSet<_> = big.entries.iter().collect();
        assert!(
            small.entries.iter().all(|net| wider.contains(net)),
            "format {format}: a wider selection lost an entry"
        );
        assert_eq!(
            table::parse(format, body, &narrow, Some(&locations)),
            small,
            "format {format}: not deterministic"
        );
    }
}
