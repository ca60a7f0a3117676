//! The ipset and nftables brackets of the feed bench: the scripts they read, how one
//! repetition of each is measured, and how their sets are counted and probed.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, anyhow};
use ipnet::Ipv4Net;

use super::{
    guards::{BaselineNetns, Stop},
    measure::{check_full_load, count_check, membership_check},
    results::{Phase, SizeResult},
    workload::{Workload, entry_text},
};
use crate::System;

pub(super) const IPSET_SET: &str = "xwbench";
/// The set the churn is restored into before it is swapped in.
pub(super) const IPSET_NEW_SET: &str = "xwbench-new";
const NFT_TABLE: &str = "xwbench";
const NFT_SET: &str = "feed";

/// `create` options of the ipset sets: maxelem with room to spare, and a hashsize near a
/// quarter of the entries so restores do not spend their time growing the hash (the
/// favourable setting for the baseline).
pub(super) fn ipset_create_options(entries: usize) -> String {
    let maxelem = (entries * 2).max(65_536);
    let hashsize = (entries / 4).next_power_of_two().max(1024);
    format!("family inet hashsize {hashsize} maxelem {maxelem}")
}

/// The `ipset restore` file that creates `set` and adds `list` to it.
pub(super) fn ipset_restore_script(set: &str, create_options: &str, list: &[Ipv4Net]) -> String {
    let mut script = String::with_capacity(list.len() * 28 + 128);
    let _ = writeln!(script, "create {set} hash:net {create_options}");
    for net in list {
        let _ = writeln!(script, "add {set} {}", entry_text(net));
    }
    script
}

/// The `nft -f` file that creates the table and the interval set holding `list`, in one
/// transaction.
pub(super) fn nft_load_script(list: &[Ipv4Net]) -> String {
    let mut script = String::with_capacity(list.len() * 18 + 256);
    let _ = writeln!(script, "table ip {NFT_TABLE} {{");
    let _ = writeln!(script, "\tset {NFT_SET} {{");
    let _ = writeln!(script, "\t\ttype ipv4_addr");
    let _ = writeln!(script, "\t\tflags interval");
    let _ = writeln!(script, "\t\tauto-merge");
    let _ = writeln!(script, "\t\telements = {{");
    for net in list {
        let _ = writeln!(script, "\t\t\t{},", entry_text(net));
    }
    let _ = writeln!(script, "\t\t}}\n\t}}\n}}");
    script
}

/// The `nft -f` file applying the churn in one transaction: the withdrawn elements deleted,
/// the new ones added.
pub(super) fn nft_churn_script(withdrawn: &[Ipv4Net], arrived: &[Ipv4Net]) -> String {
    let join = |list: &[Ipv4Net]| list.iter().map(entry_text).collect::<Vec<_>>().join(", ");
    format!(
        "delete element ip {NFT_TABLE} {NFT_SET} {{ {} }}\nadd element ip {NFT_TABLE} {NFT_SET} {{ {} }}\n",
        join(withdrawn),
        join(arrived)
    )
}

/// The `nft -f` file replacing the set's contents in one transaction: flush, then add the
/// whole new list (the alternative to deleting and adding single elements).
pub(super) fn nft_replace_script(list: &[Ipv4Net]) -> String {
    let mut script = String::with_capacity(list.len() * 18 + 128);
    let _ = writeln!(script, "flush set ip {NFT_TABLE} {NFT_SET}");
    let _ = writeln!(script, "add element ip {NFT_TABLE} {NFT_SET} {{");
    for net in list {
        let _ = writeln!(script, "\t{},", entry_text(net));
    }
    let _ = writeln!(script, "}}");
    script
}

/// Full load with `ipset restore`; churn the way scripts usually do it: restore the whole new
/// list into a new set, swap it in, destroy the old one. Then (untimed) destroys the set.
pub(super) fn measure_ipset(
    netns: &BaselineNetns,
    workload: &Workload,
    rep: usize,
    limit: Duration,
    result: &mut SizeResult,
) -> Result<(), Stop> {
    let load = netns.run(
        "ipset restore (full load)",
        "ipset",
        &["restore"],
        Some(&workload.ipset_full),
        limit,
    )?;
    result
        .full
        .record(rep, System::Ipset, Phase::Total, load.elapsed);
    check_full_load(result, rep, System::Ipset, workload, || {
        ipset_len(netns, limit)
    });

    let restore = netns.run(
        "ipset restore (churn: the new set)",
        "ipset",
        &["restore"],
        Some(&workload.ipset_churn),
        limit,
    )?;
    let swap = netns.run(
        "ipset swap",
        "ipset",
        &["swap", IPSET_SET, IPSET_NEW_SET],
        None,
        limit,
    )?;
    let destroy = netns.run(
        "ipset destroy (the old set)",
        "ipset",
        &["destroy", IPSET_NEW_SET],
        None,
        limit,
    )?;
    result
        .churn
        .record(rep, System::Ipset, Phase::Restore, restore.elapsed);
    result.churn.record(
        rep,
        System::Ipset,
        Phase::Swap,
        swap.elapsed + destroy.elapsed,
    );
    result.churn.record(
        rep,
        System::Ipset,
        Phase::Total,
        restore.elapsed + swap.elapsed + destroy.elapsed,
    );
    if rep == 0 {
        result.checks.push(count_check(
            System::Ipset,
            "after the churn",
            workload.entries(),
            ipset_len(netns, limit),
        ));
        let test =
            |net: &Ipv4Net| netns.succeeds("ipset", &["test", IPSET_SET, &entry_text(net)], limit);
        result.checks.push(membership_check(
            System::Ipset,
            "after the churn",
            workload,
            test(&workload.lists.arrived[0]),
            test(&workload.lists.withdrawn[0]),
        ));
    }

    netns.run(
        "ipset destroy (between repetitions)",
        "ipset",
        &["destroy", IPSET_SET],
        None,
        limit,
    )?;
    Ok(())
}

/// Full load with one `nft -f` file (table, set and elements in one transaction). Churn two
/// ways, one file each: deleting the withdrawn and adding the new elements (the incremental
/// way), then, as an alternative, flushing the set and adding the whole new list. A churn way
/// that stops is not tried again at this size; the full load still is. Then (untimed) deletes
/// the table.
pub(super) fn measure_nft(
    netns: &BaselineNetns,
    workload: &Workload,
    rep: usize,
    limit: Duration,
    result: &mut SizeResult,
) -> Result<(), Stop> {
    let full_path = workload.nft_full.to_string_lossy();
    let load = netns.run(
        "nft -f (full load)",
        "nft",
        &["-f", &full_path],
        None,
        limit,
    )?;
    result
        .full
        .record(rep, System::Nft, Phase::Total, load.elapsed);
    check_full_load(result, rep, System::Nft, workload, || nft_len(netns, limit));
    for (phase, operation, script, moment) in [
        (
            Phase::Total,
            "nft -f (churn: delete + add element)",
            &workload.nft_churn,
            "after the churn (delete + add element)",
        ),
        (
            Phase::Replace,
            "nft -f (churn: flush set + add the whole list)",
            &workload.nft_replace,
            "after the churn (flush set + add the whole list)",
        ),
    ] {
        if result.churn.is_stopped(System::Nft, phase) {
            continue;
        }
        let path = script.to_string_lossy();
        match netns.run(operation, "nft", &["-f", &path], None, limit) {
            Ok(churn) => {
                result.churn.record(rep, System::Nft, phase, churn.elapsed);
                if rep == 0 {
                    let checks = nft_churn_checks(netns, workload, moment, limit);
                    result.checks.extend(checks);
                }
            }
            Err(stop) => {
                eprintln!("feed bench: nft: {stop}; not tried again at this size");
                result.churn.stop(System::Nft, phase, &stop);
            }
        }
    }

    netns.run(
        "nft delete table (between repetitions)",
        "nft",
        &["delete", "table", "ip", NFT_TABLE],
        None,
        limit,
    )?;
    Ok(())
}

/// That the nft set holds the churned list: its size, an arrived entry in, a withdrawn one out.
fn nft_churn_checks(
    netns: &BaselineNetns,
    workload: &Workload,
    moment: &str,
    limit: Duration,
) -> [String; 2] {
    let get = |net: &Ipv4Net| {
        let element = format!("{{ {} }}", entry_text(net));
        netns.succeeds(
            "nft",
            &["get", "element", "ip", NFT_TABLE, NFT_SET, &element],
            limit,
        )
    };
    [
        count_check(
            System::Nft,
            moment,
            workload.entries(),
            nft_len(netns, limit),
        ),
        membership_check(
            System::Nft,
            moment,
            workload,
            get(&workload.lists.arrived[0]),
            get(&workload.lists.withdrawn[0]),
        ),
    ]
}

/// After a baseline stopped: removes whatever it left in the namespace, best effort (the
/// namespace is deleted at the end anyway).
pub(super) fn clean_baseline(netns: &BaselineNetns, system: System, limit: Duration) {
    let _ = match system {
        // Without a name: every set, and in this namespace all sets are ours.
        System::Ipset => netns.exec("ipset", &["destroy"], None, limit),
        System::Nft => netns.exec("nft", &["flush", "ruleset"], None, limit),
        System::Xdpwall => return,
    };
}

/// Entries of the ipset set, from the terse listing.
fn ipset_len(netns: &BaselineNetns, limit: Duration) -> anyhow::Result<usize> {
    let listing = netns
        .run(
            "ipset list",
            "ipset",
            &["list", IPSET_SET, "-terse"],
            None,
            limit,
        )
        .map_err(|stop| anyhow!("{stop}"))?;
    listing
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Number of entries:"))
        .and_then(|n| n.trim().parse().ok())
        .context("no \"Number of entries\" in ipset list -terse")
}

/// Elements of the nft set, counted in the text listing (`elements = { a, b, … }`).
fn nft_len(netns: &BaselineNetns, limit: Duration) -> anyhow::Result<usize> {
    let listing = netns
        .run(
            "nft list set",
            "nft",
            &["list", "set", "ip", NFT_TABLE, NFT_SET],
            None,
            limit,
        )
        .map_err(|stop| anyhow!("{stop}"))?;
    let Some((_, after)) = listing.stdout.split_once("elements = {") else {
        // An empty set has no elements line at all.
        return Ok(0);
    };
    let elements = after
        .split_once('}')
        .map(|(inside, _)| inside)
        .context("unterminated elements list in nft list set")?;
    Ok(elements.split(',').filter(|e| !e.trim().is_empty()).count())
}
