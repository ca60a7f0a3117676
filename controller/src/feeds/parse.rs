//! Parsers for the blocklist formats public feeds publish.
//!
//! Every parser returns the entries it understood plus a count and sample of the lines it did
//! not; whether that is acceptable is decided by the sanity checks, not here.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::rules::{ipv4_line_fast, normalize_cidr};

/// How a feed's body is laid out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeedFormat {
    /// One IP or CIDR per line; `#` and `;` start comments (also trailing ones).
    Plain,
    /// FireHOL `.netset`/`.ipset`: plain lines with `#` comment headers.
    Netset,
    /// Spamhaus DROP JSON: one object per line with `cidr`, then a metadata object.
    SpamhausJson,
    /// DShield `block.txt`: tab-separated start, end, netblock (prefix length), ...
    Dshield,
    /// Comma-separated values; the address is in `column` (0-based).
    Csv,
    /// iptoasn.com `ip2asn-v4.tsv`/`ip2asn-v6.tsv`: address ranges with their AS and country
    /// (a table: see [`super::table`]).
    Ip2asn,
    /// MaxMind GeoLite2-ASN-Blocks-IPv4/IPv6.csv: networks with their AS (a table).
    #[serde(rename = "geolite2-asn")]
    Geolite2Asn,
    /// MaxMind GeoLite2-Country-Blocks-IPv4/IPv6.csv, with the country codes from
    /// GeoLite2-Country-Locations-en.csv (`locations_url`) (a table).
    #[serde(rename = "geolite2-country")]
    Geolite2Country,
}

impl std::fmt::Display for FeedFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain => "plain",
            Self::Netset => "netset",
            Self::SpamhausJson => "spamhaus-json",
            Self::Dshield => "dshield",
            Self::Csv => "csv",
            Self::Ip2asn => "ip2asn",
            Self::Geolite2Asn => "geolite2-asn",
            Self::Geolite2Country => "geolite2-country",
        })
    }
}

/// A line that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BadLine {
    pub line: usize,
    pub text: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub entries: Vec<IpNet>,
    /// Lines that held data (not blank, not comments).
    pub data_lines: usize,
    pub bad_lines: usize,
    /// The first few bad lines, for error messages.
    pub bad_samples: Vec<BadLine>,
}

const BAD_SAMPLES: usize = 5;

impl Parsed {
    /// Counts a bad line and keeps the first few (with their numbers) for messages.
    pub fn bad(&mut self, line: usize, text: &str) {
        self.bad_lines += 1;
        if self.bad_samples.len() < BAD_SAMPLES {
            self.bad_samples.push(BadLine {
                line,
                text: text.chars().take(120).collect(),
            });
        }
    }
}

/// Options of the CSV format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvOptions {
    pub column: usize,
    pub skip_header: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            column: 0,
            skip_header: true,
        }
    }
}

/// Parses `body` in `format`. A table format (ip2asn, geolite2-*) selects its rows by ASN or
/// country, so it goes through [`super::table::parse`] with the feed's selection; here it
/// selects nothing (and a geolite2-country row, without its locations, is a bad line).
pub fn parse(format: &FeedFormat, body: &str, csv: &CsvOptions) -> Parsed {
    match format {
        FeedFormat::Plain | FeedFormat::Netset => parse_plain(body),
        FeedFormat::SpamhausJson => parse_spamhaus_json(body),
        FeedFormat::Dshield => parse_dshield(body),
        FeedFormat::Csv => parse_csv(body, csv),
        FeedFormat::Ip2asn | FeedFormat::Geolite2Asn | FeedFormat::Geolite2Country => {
            super::table::parse(format, body, &super::table::Selection::default(), None)
        }
    }
}

fn strip_comment(line: &str) -> &str {
    let end = line.find(['#', ';']).unwrap_or(line.len());
    line[..end].trim()
}

/// The entry of a plain-list line: its first word before any `#` or `;` comment, or `None` for
/// a blank or comment-only line. Some lists put extra columns after the address
/// ("1.2.3.4  some text"), so only the first word counts.
fn plain_entry(line: &str) -> Option<&str> {
    // A byte scan for the usual ASCII line (a million per big feed); any other byte before the
    // word ends goes the Unicode-aware way, which may count it as whitespace.
    let bytes = line.as_bytes();
    let mut start = None;
    for (at, &byte) in bytes.iter().enumerate() {
        match byte {
            b'#' | b';' => return start.map(|s| &line[s..at]),
            // The ASCII characters `char::is_whitespace` accepts.
            b' ' | b'\t' | b'\n' | b'\x0B' | b'\x0C' | b'\r' => {
                if let Some(s) = start {
                    return Some(&line[s..at]);
                }
            }
            0x80.. => return strip_comment(line).split_whitespace().next(),
            _ => {
                start.get_or_insert(at);
            }
        }
    }
    start.map(|s| &line[s..])
}

/// Bodies from this size on are parsed in two halves on two threads (when there are two
/// CPUs): a million-line feed takes ~60 ms on one core of a small virtual machine.
const PLAIN_SPLIT_BYTES: usize = 1 << 20;

fn parse_plain(body: &str) -> Parsed {
    let (mut parsed, runs) = parse_plain_runs(body, |entries| entries);
    parsed.entries = runs.concat();
    parsed
}

/// A plain body parsed in one run of lines, or in two halves on two threads from
/// [`PLAIN_SPLIT_BYTES`] on (when there are two CPUs). Each run's entries go to `finish` on
/// the thread that parsed them, so a caller's own work on them (a list sorts and sifts its
/// entries) runs on both CPUs too; its results come back in body order. The answered
/// [`Parsed`] has the whole body's counts and first bad lines (numbered as one pass numbers
/// them) and no entries.
pub fn parse_plain_runs<T: Send>(
    body: &str,
    finish: impl Fn(Vec<IpNet>) -> T + Sync,
) -> (Parsed, Vec<T>) {
    let run = |text: &str| {
        let (mut parsed, lines) = parse_plain_lines(text);
        let entries = std::mem::take(&mut parsed.entries);
        (parsed, lines, finish(entries))
    };
    if body.len() < PLAIN_SPLIT_BYTES || crate::cpus() < 2 {
        let (parsed, _, done) = run(body);
        return (parsed, vec![done]);
    }
    // Cut after a line break, so no line is split.
    let middle = body.len() / 2;
    let cut = body.as_bytes()[middle..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(body.len(), |at| middle + at + 1);
    let (head, tail) = body.split_at(cut);
    let ((mut out, head_lines, head_done), (rest, _, tail_done)) = std::thread::scope(|scope| {
        let rest = scope.spawn(|| run(tail));
        let out = run(head);
        (out, rest.join().expect("the parser does not panic"))
    });
    out.data_lines += rest.data_lines;
    out.bad_lines += rest.bad_lines;
    // The second half's line numbers continue from the first half's.
    let room = BAD_SAMPLES.saturating_sub(out.bad_samples.len());
    out.bad_samples
        .extend(rest.bad_samples.into_iter().take(room).map(|bad| BadLine {
            line: bad.line + head_lines,
            ..bad
        }));
    (out, vec![head_done, tail_done])
}

/// [`parse_plain`] on one run of whole lines (numbered from 1), and how many lines it had.
fn parse_plain_lines(body: &str) -> (Parsed, usize) {
    let bytes = body.as_bytes();
    let mut out = Parsed::default();
    // Room for lines of 16 bytes ("203.0.113.200/32" is 17 with its line break): a million-line
    // list grows its entries once or not at all instead of twenty times.
    out.entries.reserve(bytes.len() / 16);
    let mut lines = 0;
    let mut at = 0;
    while at < bytes.len() {
        lines += 1;
        // The plain IPv4 line in one pass; anything else the general way below.
        if let Some((net, taken)) = ipv4_line_fast(&bytes[at..]) {
            out.data_lines += 1;
            out.entries.push(IpNet::V4(net));
            at += taken;
            continue;
        }
        // The line as `str::lines` gives it: without its `\n`, or `\r\n`.
        let (raw, next) = match bytes[at..].iter().position(|&b| b == b'\n') {
            Some(end) => {
                let raw = &body[at..at + end];
                (raw.strip_suffix('\r').unwrap_or(raw), at + end + 1)
            }
            None => (&body[at..], bytes.len()),
        };
        at = next;
        let Some(token) = plain_entry(raw) else {
            continue;
        };
        out.data_lines += 1;
        match normalize_cidr(token) {
            Ok(net) => out.entries.push(net),
            Err(_) => out.bad(lines, raw),
        }
    }
    (out, lines)
}

fn parse_spamhaus_json(body: &str) -> Parsed {
    let mut out = Parsed::default();
    for (i, raw) in body.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        out.data_lines += 1;
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            out.bad(i + 1, raw);
            continue;
        };
        match value.get("cidr").and_then(|c| c.as_str()) {
            Some(cidr) => match normalize_cidr(cidr) {
                Ok(net) => out.entries.push(net),
                Err(_) => out.bad(i + 1, raw),
            },
            // The trailing {"type":"metadata",...} object is not an entry.
            None if value.get("type").and_then(|t| t.as_str()) == Some("metadata") => {
                out.data_lines -= 1
            }
            None => out.bad(i + 1, raw),
        }
    }
    out
}

fn parse_dshield(body: &str) -> Parsed {
    let mut out = Parsed::default();
    for (i, raw) in body.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("Start") {
            continue;
        }
        out.data_lines += 1;
        let mut fields = line.split('\t').map(str::trim);
        let (Some(start), Some(_end), Some(len)) = (fields.next(), fields.next(), fields.next())
        else {
            out.bad(i + 1, raw);
            continue;
        };
        match normalize_cidr(&format!("{start}/{len}")) {
            Ok(net) => out.entries.push(net),
            Err(_) => out.bad(i + 1, raw),
        }
    }
    out
}

fn parse_csv(body: &str, options: &CsvOptions) -> Parsed {
    let mut out = Parsed::default();
    let mut header_skipped = !options.skip_header;
    for (i, raw) in body.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !header_skipped {
            header_skipped = true;
            continue;
        }
        out.data_lines += 1;
        let field = line
            .split(',')
            .nth(options.column)
            .map(|f| f.trim().trim_matches('"'));
        match field.map(normalize_cidr) {
            Some(Ok(net)) => out.entries.push(net),
            _ => out.bad(i + 1, raw),
        }
    }
    out
}

/// Whether a body looks like an HTML page (an error or login page served instead of the list).
pub fn looks_like_html(body: &str) -> bool {
    let head: String = body
        .trim_start()
        .chars()
        .take(512)
        .collect::<String>()
        .to_ascii_lowercase();
    head.starts_with('<') || head.contains("<html") || head.contains("<!doctype")
}

#[cfg(test)]
mod tests {
    use rand::{Rng as _, SeedableRng as _};

    use super::*;

    fn nets(p: &Parsed) -> Vec<String> {
        p.entries.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn plain_handles_comments_and_both_families() {
        let body = "# header\n; other comment\n198.51.100.7\n203.0.113.0/24 # trailing\n2001:db8::/32 ; note\n\n  192.0.2.5  extra text\nnot-an-ip\n";
        let p = parse(&FeedFormat::Plain, body, &CsvOptions::default());
        assert_eq!(
            nets(&p),
            [
                "198.51.100.7/32",
                "203.0.113.0/24",
                "2001:db8::/32",
                "192.0.2.5/32"
            ]
        );
        assert_eq!(p.data_lines, 5);
        assert_eq!(p.bad_lines, 1);
        assert_eq!(p.bad_samples[0].line, 8);
    }

    #[test]
    fn a_big_plain_body_parses_in_two_halves_like_in_one() {
        let mut body = String::new();
        let mut line = 0;
        while body.len() < 3 * PLAIN_SPLIT_BYTES {
            line += 1;
            match line % 100_000 {
                // Bad lines in both halves: the samples' line numbers must run on across the cut.
                7 if line < 100_000 => body.push_str("not-an-address\n"),
                11 => body.push_str("not-an-address\n"),
                13 => body.push_str("# comment\n"),
                _ => body.push_str(&format!("10.{}.{}.0/24\n", (line >> 8) & 255, line & 255)),
            }
        }
        let halves = parse_plain(&body);
        let (whole, _) = parse_plain_lines(&body);
        assert_eq!(whole.bad_lines, 4);
        assert_eq!(halves.entries, whole.entries);
        assert_eq!(halves.data_lines, whole.data_lines);
        assert_eq!(halves.bad_lines, whole.bad_lines);
        assert_eq!(halves.bad_samples, whole.bad_samples);
        assert_eq!(whole.bad_samples[3].line, 200_011);
    }

    #[test]
    fn the_one_pass_plain_parser_reads_every_body_as_the_line_by_line_rule_does() {
        // The rule written plainly: each line of `str::lines`, its first word before a
        // comment, through `normalize_cidr`; bad lines counted and sampled with their numbers.
        fn by_rule(body: &str) -> (Parsed, usize) {
            let mut out = Parsed::default();
            let mut lines = 0;
            for (i, raw) in body.lines().enumerate() {
                lines = i + 1;
                let Some(token) = strip_comment(raw).split_whitespace().next() else {
                    continue;
                };
                out.data_lines += 1;
                match normalize_cidr(token) {
                    Ok(net) => out.entries.push(net),
                    Err(_) => out.bad(i + 1, raw),
                }
            }
            (out, lines)
        }
        let pieces = [
            "1.2.3.4",
            "10.0.0.0/8",
            "10.1.2.3/8",
            "255.255.255.255/32",
            "0.0.0.0/0",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.4/",
            "1.2.3.4/33",
            "1.2.3.4/032",
            "1.2.3.4/0032",
            "1000.1.1.1",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1.2.3.4#x",
            "1.2.3.4;x",
            "1.2.3.4\r",
            "1.2.3.4\t# c",
            "2001:db8::/32",
            "::ffff:1.2.3.4",
            "::ffff:1.2.3.0/120",
            "# c",
            "",
            " ",
            "x",
            "1.2.3.4/8/8",
            "1.2.3.4x",
            "é",
            "1.2.3.4\u{a0}",
            "\u{2003}1.2.3.4",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(20261207);
        for _ in 0..3_000 {
            let mut body = String::new();
            for _ in 0..rng.random_range(0..8) {
                body.push_str(pieces[rng.random_range(0..pieces.len())]);
                // Mostly `\n`; sometimes `\r\n`; the last line may have no line break.
                match rng.random_range(0..10) {
                    0 => body.push_str("\r\n"),
                    1 => {}
                    _ => body.push('\n'),
                }
            }
            let (want, want_lines) = by_rule(&body);
            let (got, got_lines) = parse_plain_lines(&body);
            assert_eq!(got.entries, want.entries, "{body:?}");
            assert_eq!(got.data_lines, want.data_lines, "{body:?}");
            assert_eq!(got.bad_lines, want.bad_lines, "{body:?}");
            assert_eq!(got.bad_samples, want.bad_samples, "{body:?}");
            assert_eq!(got_lines, want_lines, "{body:?}");
        }
    }

    #[test]
    fn plain_entry_is_the_first_word_before_a_comment() {
        // The rule written plainly: cut the comment, then the first whitespace-separated word.
        fn by_rule(line: &str) -> Option<&str> {
            strip_comment(line).split_whitespace().next()
        }
        let fixed = [
            "",
            " ",
            "#",
            "  # c",
            "1.2.3.4",
            " 1.2.3.4 ",
            "1.2.3.4#c",
            "1.2.3.4;c",
            "\t1.2.3.4\tx",
            "\x0B1.2.3.4\x0C",
            "1.2.3.4\u{a0}x",
            "\u{a0}1.2.3.4",
            "\u{2003}1.2.3.4 #",
            "é#",
            "a\u{3000}b",
            "1.2.3.4\r",
        ];
        for line in fixed {
            assert_eq!(plain_entry(line), by_rule(line), "{line:?}");
        }
        let alphabet = [
            '1', '.', '/', ' ', '\t', '#', ';', '\x0B', '\u{a0}', '\u{2003}', 'é', 'x',
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(20261127);
        for _ in 0..100_000 {
            let len = rng.random_range(0..12);
            let line: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            assert_eq!(plain_entry(&line), by_rule(&line), "{line:?}");
        }
    }

    #[test]
    fn spamhaus_json_skips_metadata() {
        let body = r#"{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}
{"cidr":"2001:db8:1000::/36","sblid":"SBL1","rir":"ripencc"}
{"type":"metadata","timestamp":1732500000,"size":123,"records":2,"copyright":"(c) 2024 The Spamhaus Project SLU","terms":"https://www.spamhaus.org/drop/terms/"}
"#;
        let p = parse(&FeedFormat::SpamhausJson, body, &CsvOptions::default());
        assert_eq!(nets(&p), ["1.10.16.0/20", "2001:db8:1000::/36"]);
        assert_eq!(p.bad_lines, 0);
        assert_eq!(p.data_lines, 2);
    }

    #[test]
    fn dshield_uses_start_and_netblock() {
        let body = "#   DShield.org Recommended Block List\n#\nStart\tEnd\tNetblock\tAttacks\tName\tCountry\temail\n45.148.10.0\t45.148.10.255\t24\t1234\tSOME NET\tNL\tabuse@example.invalid\n80.82.77.0\t80.82.77.255\t24\t99\t\t\t\n";
        let p = parse(&FeedFormat::Dshield, body, &CsvOptions::default());
        assert_eq!(nets(&p), ["45.148.10.0/24", "80.82.77.0/24"]);
    }

    #[test]
    fn csv_picks_the_column_and_skips_the_header() {
        let body = "first_seen,ip,port\n2026-11-20,198.51.100.7,23\n2026-11-20,\"203.0.113.9\",445\n2026-11-20,bogus,1\n";
        let p = parse(
            &FeedFormat::Csv,
            body,
            &CsvOptions {
                column: 1,
                skip_header: true,
            },
        );
        assert_eq!(nets(&p), ["198.51.100.7/32", "203.0.113.9/32"]);
        assert_eq!(p.bad_lines, 1);
    }

    #[test]
    fn html_is_recognised() {
        assert!(looks_like_html(
            "\n<!DOCTYPE html><html><body>503</body></html>"
        ));
        assert!(looks_like_html("<html>"));
        assert!(!looks_like_html("# list\n198.51.100.7\n"));
    }
}
