//! `xdpwall flows [-f]` and `xdpwall drops`: what the datapath flagged and sampled.

use std::collections::HashMap;

use super::{ClientArgs, Output, print_json, print_json_line};
use crate::api::types::FlowView;

/// `addr:port`, `[v6]:port`, or the address alone for protocols without ports.
fn endpoint(addr: &str, port: u16) -> String {
    match port {
        0 => addr.to_string(),
        p if addr.contains(':') => format!("[{addr}]:{p}"),
        p => format!("{addr}:{p}"),
    }
}

fn print_flow(flow: &FlowView) {
    println!(
        "{:<42}{:<42}{:<7}{:<7}{:<10}{:<6}{:>10}{:>12}  {}",
        endpoint(&flow.src, flow.sport),
        endpoint(&flow.dst, flow.dport),
        flow.proto,
        flow.reason,
        flow.rule,
        flow.action,
        flow.packets,
        flow.bytes,
        flow.last_seen,
    );
}

/// `xdpwall flows [-f]`: one listing, or follow by polling and printing what is new or grew.
pub(super) async fn flows(follow: bool, limit: usize, client: &ClientArgs) -> anyhow::Result<()> {
    let api = client.client()?;
    let json = client.output == Output::Json;
    let header = || {
        println!(
            "{:<42}{:<42}{:<7}{:<7}{:<10}{:<6}{:>10}{:>12}  LAST SEEN",
            "SOURCE", "DESTINATION", "PROTO", "REASON", "RULE", "ACTION", "PACKETS", "BYTES"
        )
    };
    if !follow {
        let list = api.flows(limit).await?;
        if json {
            return print_json(&list);
        }
        header();
        for flow in &list.flows {
            print_flow(flow);
        }
        if list.events_lost > 0 {
            println!(
                "({} flow events lost to a full ring buffer; their flows are listed from the kernel's table)",
                list.events_lost
            );
        }
        return Ok(());
    }
    if !json {
        header();
    }
    let mut seen: HashMap<(String, u16, String, u16, String), u64> = HashMap::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let list = api.flows(limit).await?;
        // Oldest activity first, so the newest line ends up at the bottom.
        for flow in list.flows.iter().rev() {
            let key = (
                flow.src.clone(),
                flow.sport,
                flow.dst.clone(),
                flow.dport,
                flow.proto.clone(),
            );
            if seen.get(&key) == Some(&flow.packets) {
                continue;
            }
            seen.insert(key, flow.packets);
            if json {
                print_json_line(flow)?;
            } else {
                print_flow(flow);
            }
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
}

/// `xdpwall drops`: sampled ingress drops, newest first.
pub(super) async fn drops(limit: usize, client: &ClientArgs) -> anyhow::Result<()> {
    let api = client.client()?;
    let list = api.drops(limit).await?;
    if client.output == Output::Json {
        return print_json(&list);
    }
    println!(
        "sampling 1 in {}; {} sampled, {} lost (ring buffer full)",
        list.sample_rate, list.sampled, list.lost
    );
    println!(
        "{:<25}{:<42}{:<42}{:<8}{:>6}  VERDICT",
        "AT", "SOURCE", "DESTINATION", "PROTO", "RULE"
    );
    for d in &list.drops {
        println!(
            "{:<25}{:<42}{:<42}{:<8}{:>6}  {}",
            d.at,
            endpoint(&d.src, d.sport),
            endpoint(&d.dst, d.dport),
            d.proto,
            d.rule,
            d.verdict
        );
    }
    Ok(())
}
