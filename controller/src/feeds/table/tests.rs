//! Unit tests of the table formats: range → CIDR conversion, each parser, the selection.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use ipnet::{Ipv4Subnets, Ipv6Subnets};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use super::*;

fn nets(parsed: &Parsed) -> Vec<String> {
    parsed.entries.iter().map(ToString::to_string).collect()
}

fn cidrs(first: &str, last: &str) -> Vec<String> {
    let mut out = Vec::new();
    Range::new(first.parse().unwrap(), last.parse().unwrap())
        .unwrap()
        .push_cidrs(&mut out);
    out.iter().map(ToString::to_string).collect()
}

fn select(asns: &[u32], countries: &[&str]) -> Selection {
    Selection {
        asns: asns.iter().copied().collect(),
        countries: countries
            .iter()
            .map(|c| CountryCode::from_config(c).unwrap())
            .collect(),
    }
}

#[test]
fn ranges_become_the_fewest_covering_prefixes() {
    assert_eq!(cidrs("1.0.0.0", "1.0.0.255"), ["1.0.0.0/24"]);
    assert_eq!(cidrs("192.0.2.7", "192.0.2.7"), ["192.0.2.7/32"]);
    assert_eq!(
        cidrs("10.0.0.1", "10.0.0.6"),
        ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
    );
    assert_eq!(
        cidrs("203.0.113.64", "203.0.113.130"),
        ["203.0.113.64/26", "203.0.113.128/31", "203.0.113.130/32"]
    );
    // The edges of the space: no overflow past the last address.
    assert_eq!(cidrs("0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
    assert_eq!(
        cidrs("255.255.255.254", "255.255.255.255"),
        ["255.255.255.254/31"]
    );
    assert_eq!(cidrs("128.0.0.0", "255.255.255.255"), ["128.0.0.0/1"]);
    assert_eq!(
        cidrs("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ["::/0"]
    );
    assert_eq!(
        cidrs("::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").len(),
        128
    );
    assert_eq!(
        cidrs("2001:200::", "2001:200:ffff:ffff:ffff:ffff:ffff:ffff"),
        ["2001:200::/32"]
    );
    assert_eq!(
        cidrs("2001:db8::ff", "2001:db8::200"),
        ["2001:db8::ff/128", "2001:db8::100/120", "2001:db8::200/128"]
    );
    // Reversed and mixed ranges are no ranges.
    assert!(Range::new("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap()).is_none());
    assert!(Range::new("10.0.0.1".parse().unwrap(), "::1".parse().unwrap()).is_none());
}

#[test]
fn range_conversion_equals_ipnets_subnets_on_random_ranges() {
    let mut rng = StdRng::seed_from_u64(20261206);
    for _ in 0..20_000 {
        let (a, b) = (rng.random::<u32>(), rng.random::<u32>());
        let (first, last) = if rng.random_range(0..4) == 0 {
            // Short ranges, where alignment matters most.
            (a, a.saturating_add(rng.random_range(0..600)))
        } else {
            (a.min(b), a.max(b))
        };
        let mut got = Vec::new();
        Range::V4(first, last).push_cidrs(&mut got);
        let want: Vec<IpNet> = Ipv4Subnets::new(Ipv4Addr::from(first), Ipv4Addr::from(last), 0)
            .map(IpNet::V4)
            .collect();
        assert_eq!(got, want, "{first}..={last}");

        let (a, b) = (rng.random::<u128>(), rng.random::<u128>());
        let (first, last) = (a.min(b), a.max(b));
        let mut got = Vec::new();
        Range::V6(first, last).push_cidrs(&mut got);
        let want: Vec<IpNet> = Ipv6Subnets::new(Ipv6Addr::from(first), Ipv6Addr::from(last), 0)
            .map(IpNet::V6)
            .collect();
        assert_eq!(got, want, "{first:x}..={last:x}");
    }
}

const IP2ASN: &str = "0.0.0.0\t0.255.255.255\t0\tNone\tNot routed\n\
1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n\
1.0.4.0\t1.0.5.255\t38803\tau\tWPL-AS-AP Wirefreebroadband Pty Ltd\n\
1.0.6.0\t1.0.7.255\t38803\tAU\tWPL-AS-AP Wirefreebroadband Pty Ltd\n\
5.0.0.0\t5.0.0.9\t0\tNL\tNot routed\n\
2001:200::\t2001:200:ffff:ffff:ffff:ffff:ffff:ffff\t2500\tJP\tWIDE-BB WIDE Project\n\
2001:218::\t2001:218:3fff:ffff:ffff:ffff:ffff:ffff\t2914\tUS\tNTT-LTD-2914\n";

#[test]
fn ip2asn_selects_by_asn_or_country() {
    let parsed = parse(&FeedFormat::Ip2asn, IP2ASN, &select(&[13335], &[]), None);
    assert_eq!(nets(&parsed), ["1.0.0.0/24"]);
    assert_eq!((parsed.data_lines, parsed.bad_lines), (7, 0));

    // A country in either case, in the table or the config; both families.
    let parsed = parse(
        &FeedFormat::Ip2asn,
        IP2ASN,
        &select(&[], &["au", "JP"]),
        None,
    );
    assert_eq!(nets(&parsed), ["1.0.4.0/23", "1.0.6.0/23", "2001:200::/32"]);
    // ASN or country: the union.
    let parsed = parse(&FeedFormat::Ip2asn, IP2ASN, &select(&[2914], &["US"]), None);
    assert_eq!(nets(&parsed), ["1.0.0.0/24", "2001:218::/34"]);
    // Nothing selected: every line still read.
    let parsed = parse(&FeedFormat::Ip2asn, IP2ASN, &select(&[64500], &[]), None);
    assert!(parsed.entries.is_empty());
    assert_eq!(parsed.data_lines, 7);
}

#[test]
fn ip2asn_never_selects_as_0() {
    // 5.0.0.0-5.0.0.9 is "Not routed" but tagged NL: AS 0 wins over the country.
    let parsed = parse(&FeedFormat::Ip2asn, IP2ASN, &select(&[], &["NL"]), None);
    assert!(parsed.entries.is_empty(), "{:?}", nets(&parsed));
    let mut all = select(&[], &[]);
    all.asns.insert(0);
    let parsed = parse(&FeedFormat::Ip2asn, IP2ASN, &all, None);
    assert!(parsed.entries.is_empty(), "{:?}", nets(&parsed));
}

#[test]
fn ip2asn_counts_bad_lines_whoever_they_belong_to() {
    let body = "1.0.0.0\t1.0.0.255\t13335\tUS\tok\n\
                1.0.1.255\t1.0.1.0\t13335\tUS\treversed\n\
                1.0.2.0\t::1\t13335\tUS\tmixed families\n\
                1.0.3.0\t1.0.3.255\tAS13335\tUS\tnot a number\n\
                1.0.4.0 1.0.4.255 13335 US spaces, not tabs\n\
                1.0.5.0\t1.0.5.256\t64500\tUS\tbad end, another AS\n\
                \n\
                # a comment\n";
    let parsed = parse(&FeedFormat::Ip2asn, body, &select(&[13335], &[]), None);
    assert_eq!(nets(&parsed), ["1.0.0.0/24"]);
    assert_eq!((parsed.data_lines, parsed.bad_lines), (6, 5));
    let lines: Vec<usize> = parsed.bad_samples.iter().map(|b| b.line).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6]);
}

const GEOLITE2_ASN: &str = "network,autonomous_system_number,autonomous_system_organization\n\
1.0.0.0/24,13335,CLOUDFLARENET\n\
1.0.4.0/22,38803,\"Gtelecom Pty Ltd, Australia\"\n\
2001:200::/32,2500,\"WIDE Project\"\n\
1.0.8.0/21,not-a-number,X\n\
1.0.16.0/33,64500,X\n";

#[test]
fn geolite2_asn_selects_by_asn() {
    let parsed = parse(
        &FeedFormat::Geolite2Asn,
        GEOLITE2_ASN,
        &select(&[38803, 2500], &[]),
        None,
    );
    assert_eq!(nets(&parsed), ["1.0.4.0/22", "2001:200::/32"]);
    // The header is not data; the last two lines are bad.
    assert_eq!((parsed.data_lines, parsed.bad_lines), (5, 2));
    assert_eq!(parsed.bad_samples[0].line, 5);
}

const LOCATIONS: &str = "geoname_id,locale_code,continent_code,continent_name,country_iso_code,country_name,is_in_european_union\n\
1835841,en,AS,Asia,KR,\"Korea, Republic of\",0\n\
2750405,en,EU,Europe,NL,Netherlands,1\n\
2921044,en,EU,Europe,DE,Germany,1\n\
6255148,en,EU,Europe,,,0\n";

const GEOLITE2_COUNTRY: &str = "network,geoname_id,registered_country_geoname_id,represented_country_geoname_id,is_anonymous_proxy,is_satellite_provider,is_anycast\n\
1.0.0.0/24,2750405,2750405,,0,0,\n\
1.0.1.0/24,,2750405,,0,0,\n\
1.0.2.0/24,2921044,2750405,,0,0,\n\
1.0.3.0/24,6255148,6255148,,0,0,\n\
1.0.4.0/24,,,,1,0,\n\
2001:db8:5::/48,1835841,1835841,,0,0,\n\
1.0.5.0/24,999,999,,0,0,\n";

#[test]
fn geolite2_country_takes_codes_from_the_locations() {
    let locations = Locations::parse(LOCATIONS).unwrap();
    let parsed = parse(
        &FeedFormat::Geolite2Country,
        GEOLITE2_COUNTRY,
        &select(&[], &["nl", "KR"]),
        Some(&locations),
    );
    // 1.0.1.0/24 has no geoname_id: its registered country counts. 1.0.2.0/24 is located in
    // DE though registered in NL. A continent (1.0.3.0/24) and no place at all (1.0.4.0/24)
    // select nothing; an id the locations do not know (999) is a bad line.
    assert_eq!(
        nets(&parsed),
        ["1.0.0.0/24", "1.0.1.0/24", "2001:db8:5::/48"]
    );
    assert_eq!((parsed.data_lines, parsed.bad_lines), (7, 1));
    assert_eq!(parsed.bad_samples[0].line, 8);

    let parsed = parse(
        &FeedFormat::Geolite2Country,
        GEOLITE2_COUNTRY,
        &select(&[], &["DE"]),
        Some(&locations),
    );
    assert_eq!(nets(&parsed), ["1.0.2.0/24"]);

    // Without locations every row with a place is a bad line, so the table is refused.
    let parsed = parse(
        &FeedFormat::Geolite2Country,
        GEOLITE2_COUNTRY,
        &select(&[], &["NL"]),
        None,
    );
    assert!(parsed.entries.is_empty());
    assert_eq!(parsed.bad_lines, 6);
}

#[test]
fn locations_that_do_not_parse_are_refused_with_the_line() {
    assert!(
        Locations::parse("<html><body>403</body></html>\n")
            .unwrap_err()
            .contains("line 1")
    );
    let err =
        Locations::parse("geoname_id,x\n2750405,en,EU,Europe,NLD,Netherlands,1\n").unwrap_err();
    assert!(
        err.contains("line 2") && err.contains("country_iso_code"),
        "{err}"
    );
    let err = Locations::parse("6255148,en,EU,Europe,,,0\n").unwrap_err();
    assert!(err.contains("no country codes"), "{err}");
}

#[test]
fn config_country_codes_are_iso_and_case_insensitive() {
    assert_eq!(CountryCode::from_config("nl").unwrap().to_string(), "NL");
    assert_eq!(CountryCode::from_config(" Gb ").unwrap().to_string(), "GB");
    assert_eq!(CountryCode::from_config("xk").unwrap().to_string(), "XK");
    for bad in ["UK", "NLD", "N", "", "1A", "ZZ", "EU"] {
        let err = CountryCode::from_config(bad).unwrap_err();
        assert!(err.contains("ISO 3166-1"), "{bad}: {err}");
    }
    assert_eq!(
        select(&[64501, 64500], &["nl", "DE"]).to_string(),
        "asn=64500,64501 country=DE,NL"
    );
}

#[test]
fn csv_fields_keep_quoted_commas() {
    let fields: Vec<&str> = CsvFields::new("a, \"b,c\" ,,d").collect();
    assert_eq!(fields, ["a", "b,c", "", "d"]);
    assert_eq!(CsvFields::new("").collect::<Vec<_>>(), [""]);
}

/// The parse time of a synthetic iptoasn-v4-sized table (500,000 rows), printed, not asserted:
/// `cargo test --release -p xdpwall --lib feeds::table::tests::parse_time -- --ignored --nocapture`
#[test]
#[ignore = "a measurement; run it in release mode"]
fn parse_time_of_a_500k_line_table() {
    let mut body = String::with_capacity(500_000 * 50);
    for i in 0..500_000u32 {
        // Ranges of 256 addresses from 1.0.0.0, some unaligned; one AS in 50 is selected.
        let first = (1u32 << 24) + i * 256 + (i % 7);
        let last = first + 255 - (i % 7);
        let asn = 64_500 + i % 50;
        body.push_str(&format!(
            "{}\t{}\t{asn}\tNL\tSOME-AS-{asn} Some Network B.V.\n",
            Ipv4Addr::from(first),
            Ipv4Addr::from(last)
        ));
    }
    let selection = select(&[64_500], &[]);
    let start = Instant::now();
    let parsed = parse(&FeedFormat::Ip2asn, &body, &selection, None);
    let elapsed = start.elapsed();
    assert_eq!((parsed.data_lines, parsed.bad_lines), (500_000, 0));
    // One row in 50 selected; the unaligned ones take several prefixes each.
    assert!(parsed.entries.len() > 10_000, "{}", parsed.entries.len());
    println!(
        "ip2asn: {} lines ({:.1} MB) parsed in {elapsed:?}, {} entries selected",
        parsed.data_lines,
        body.len() as f64 / 1e6,
        parsed.entries.len()
    );
}
