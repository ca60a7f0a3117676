//! Prefix-to-ASN and prefix-to-country tables the user provides (iptoasn.com's `ip2asn`,
//! MaxMind's GeoLite2 ASN and Country CSVs), and the [`Selection`] that picks the prefixes to
//! act on: a prefix is selected when its ASN is in `asn` or its country is in `country`.
//!
//! A table lists the whole address space; only the selected rows become entries. Every data
//! line is still read in full, so a broken table shows up as bad lines (and is refused by the
//! sanity checks) whatever the selection.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::parse::{FeedFormat, Parsed};
use crate::rules::normalize_cidr;

/// ISO 3166-1 alpha-2 codes (officially assigned, as Debian's iso-codes lists them), plus `XK`
/// (Kosovo), which is user-assigned but used by MaxMind and iptoasn.com alike.
const COUNTRY_CODES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG \
    BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW \
    CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL \
    GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE \
    KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM \
    MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH \
    PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS \
    ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG \
    VI VN VU WF WS YE YT ZA ZM ZW XK";

/// A country as two upper-case ASCII letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Two ASCII letters in either case, as tables write them; `None` for anything else
    /// (iptoasn.com writes `None` and `Unknown` for unassigned space).
    fn from_table(text: &str) -> Option<Self> {
        match text.as_bytes() {
            &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// A code from the config: case-insensitive, and it must be an assigned ISO 3166-1 code.
    pub fn from_config(text: &str) -> Result<Self, String> {
        Self::from_table(text.trim())
            .filter(|code| {
                COUNTRY_CODES
                    .split_whitespace()
                    .any(|c| c == code.to_string())
            })
            .ok_or_else(|| {
                format!(
                    "{text:?} is not an ISO 3166-1 alpha-2 country code (two letters, e.g. \"NL\"; \
                     the United Kingdom is \"GB\")"
                )
            })
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.0).expect("ASCII letters"))
    }
}

/// Which rows of a table a feed acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub asns: BTreeSet<u32>,
    pub countries: BTreeSet<CountryCode>,
}

impl Selection {
    /// AS 0 is iptoasn.com's "Not routed": never selected, whatever its country.
    fn selects(&self, asn: Option<u32>, country: Option<CountryCode>) -> bool {
        asn != Some(0)
            && (asn.is_some_and(|a| self.asns.contains(&a))
                || country.is_some_and(|c| self.countries.contains(&c)))
    }

    pub fn is_empty(&self) -> bool {
        self.asns.is_empty() && self.countries.is_empty()
    }
}

impl fmt::Display for Selection {
    /// `asn=64500,64501 country=DE,NL`: also what the last good copy records, so a changed
    /// selection is noticed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let asns: Vec<String> = self.asns.iter().map(u32::to_string).collect();
        let countries: Vec<String> = self.countries.iter().map(ToString::to_string).collect();
        write!(f, "asn={} country={}", asns.join(","), countries.join(","))
    }
}

/// GeoLite2-Country-Locations: the country code of each geoname id (`None` for a continent
/// or other place without one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locations {
    codes: HashMap<u32, Option<CountryCode>>,
}

impl Locations {
    /// Parses `geoname_id,locale_code,continent_code,continent_name,country_iso_code,...`.
    /// The file is small and comes from the same release as the blocks, so any line that
    /// does not parse refuses it, with its number.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut codes = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with("geoname_id") {
                continue;
            }
            let fields: Vec<&str> = CsvFields::new(line).collect();
            let (Some(id), Some(code)) = (fields.first(), fields.get(4)) else {
                return Err(format!("line {}: {raw:?} has fewer than 5 fields", i + 1));
            };
            let Ok(id) = id.parse::<u32>() else {
                return Err(format!("line {}: {raw:?}: bad geoname_id", i + 1));
            };
            let code = match *code {
                "" => None,
                code => Some(
                    CountryCode::from_table(code)
                        .ok_or_else(|| format!("line {}: {raw:?}: bad country_iso_code", i + 1))?,
                ),
            };
            codes.insert(id, code);
        }
        if codes.values().all(Option::is_none) {
            return Err("no country codes in it (is it GeoLite2-Country-Locations-en.csv?)".into());
        }
        Ok(Self { codes })
    }
}

/// Whether `format` is one of the table formats (selected by ASN or country).
pub fn is_table(format: &FeedFormat) -> bool {
    matches!(
        format,
        FeedFormat::Ip2asn | FeedFormat::Geolite2Asn | FeedFormat::Geolite2Country
    )
}

/// Parses a table in `format`, keeping the rows `selection` picks. A `geolite2-country` table
/// needs `locations`; without them no row has a country, so each is a bad line.
pub fn parse(
    format: &FeedFormat,
    body: &str,
    selection: &Selection,
    locations: Option<&Locations>,
) -> Parsed {
    let mut out = Parsed::default();
    for (i, raw) in body.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("network,") {
            continue;
        }
        out.data_lines += 1;
        let row = match format {
            FeedFormat::Ip2asn => ip2asn_row(line, selection, &mut out.entries),
            FeedFormat::Geolite2Asn => geolite2_asn_row(line, selection, &mut out.entries),
            FeedFormat::Geolite2Country => {
                geolite2_country_row(line, selection, locations, &mut out.entries)
            }
            _ => Err(()),
        };
        if row.is_err() {
            out.bad(i + 1, raw);
        }
    }
    out
}

/// `range_start \t range_end \t AS_number \t country_code \t AS_description`.
fn ip2asn_row(line: &str, selection: &Selection, out: &mut Vec<IpNet>) -> Result<(), ()> {
    let mut fields = line.split('\t');
    let (Some(start), Some(end), Some(asn), Some(country)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(());
    };
    let start: IpAddr = start.trim().parse().map_err(|_| ())?;
    let end: IpAddr = end.trim().parse().map_err(|_| ())?;
    let asn: u32 = asn.trim().parse().map_err(|_| ())?;
    // Checked before the selection, so a reversed or mixed range is bad whoever it belongs to.
    let range = Range::new(start, end).ok_or(())?;
    if selection.selects(Some(asn), CountryCode::from_table(country.trim())) {
        range.push_cidrs(out);
    }
    Ok(())
}

/// `network,autonomous_system_number,autonomous_system_organization`.
fn geolite2_asn_row(line: &str, selection: &Selection, out: &mut Vec<IpNet>) -> Result<(), ()> {
    let mut fields = CsvFields::new(line);
    let (Some(network), Some(asn)) = (fields.next(), fields.next()) else {
        return Err(());
    };
    let network = normalize_cidr(network).map_err(|_| ())?;
    let asn: u32 = asn.parse().map_err(|_| ())?;
    if selection.selects(Some(asn), None) {
        out.push(network);
    }
    Ok(())
}

/// `network,geoname_id,registered_country_geoname_id,...`: the country is where the network
/// is (geoname_id), or, when MaxMind leaves that empty, where it is registered.
fn geolite2_country_row(
    line: &str,
    selection: &Selection,
    locations: Option<&Locations>,
    out: &mut Vec<IpNet>,
) -> Result<(), ()> {
    let mut fields = CsvFields::new(line);
    let (Some(network), Some(located), Some(registered)) =
        (fields.next(), fields.next(), fields.next())
    else {
        return Err(());
    };
    let network = normalize_cidr(network).map_err(|_| ())?;
    let id = match (located, registered) {
        ("", "") => None,
        ("", id) | (id, _) => Some(id.parse::<u32>().map_err(|_| ())?),
    };
    let country = match id {
        // A geoname id the locations file does not know: blocks and locations of different
        // releases, which would select the wrong prefixes. Bad, so a mismatch is refused.
        Some(id) => *locations.and_then(|l| l.codes.get(&id)).ok_or(())?,
        None => None,
    };
    if selection.selects(None, country) {
        out.push(network);
    }
    Ok(())
}

/// The fields of one CSV line with their quotes taken off (a quoted field may hold commas).
struct CsvFields<'a> {
    rest: Option<&'a str>,
}

impl<'a> CsvFields<'a> {
    fn new(line: &'a str) -> Self {
        Self { rest: Some(line) }
    }
}

impl<'a> Iterator for CsvFields<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let mut quoted = false;
        for (at, byte) in rest.bytes().enumerate() {
            match byte {
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    self.rest = Some(&rest[at + 1..]);
                    return Some(rest[..at].trim().trim_matches('"'));
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(rest.trim().trim_matches('"'))
    }
}

/// An inclusive address range of one family, first ≤ last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    V4(u32, u32),
    V6(u128, u128),
}

impl Range {
    /// `None` when the ends are of different families or in the wrong order.
    pub fn new(first: IpAddr, last: IpAddr) -> Option<Self> {
        match (first, last) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => Some(Self::V4(a.into(), b.into())),
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => Some(Self::V6(a.into(), b.into())),
            _ => None,
        }
    }

    /// The fewest prefixes covering the range exactly, in address order.
    pub fn push_cidrs(self, out: &mut Vec<IpNet>) {
        match self {
            Self::V4(first, last) => cover(first.into(), last.into(), 32, |addr, len| {
                let addr = Ipv4Addr::from(addr as u32);
                out.push(IpNet::V4(Ipv4Net::new(addr, len).expect("length ≤ 32")));
            }),
            Self::V6(first, last) => cover(first, last, 128, |addr, len| {
                let addr = Ipv6Addr::from(addr);
                out.push(IpNet::V6(Ipv6Net::new(addr, len).expect("length ≤ 128")));
            }),
        }
    }
}

/// Calls `emit(network, length)` for the fewest prefixes of a `width`-bit space covering
/// `first..=last`: at each step the largest block aligned at `first` that does not run past
/// `last`.
fn cover(mut first: u128, last: u128, width: u32, mut emit: impl FnMut(u128, u8)) {
    loop {
        let aligned = first.trailing_zeros().min(width);
        // floor(log2(last - first + 1)), without overflow when the range is the whole space.
        let fits = match (last - first).checked_add(1) {
            Some(count) => 127 - count.leading_zeros(),
            None => 128,
        };
        let bits = aligned.min(fits);
        emit(first, (width - bits) as u8);
        let block_last = if bits == 128 {
            u128::MAX
        } else {
            first | ((1u128 << bits) - 1)
        };
        if block_last >= last {
            return;
        }
        first = block_last + 1;
    }
}

#[cfg(test)]
mod tests;
