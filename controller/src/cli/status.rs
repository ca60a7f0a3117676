//! `xdpwall status` and `xdpwall stats`.

use super::{ClientArgs, Output, print_json};

/// `xdpwall status`: version, readiness, interfaces, egress, CrowdSec, kernel fallbacks.
pub(super) async fn status(client: &ClientArgs) -> anyhow::Result<()> {
    let api = client.client()?;
    let status = api.status().await?;
    if client.output == Output::Json {
        return print_json(&status);
    }
    println!("version   {}", status.version);
    println!("ready     {}", status.ready);
    println!("monitor   {}", status.monitor);
    println!("rules     {}", status.rules);
    println!("entries   {}", status.map_entries);
    for iface in &status.interfaces {
        println!(
            "iface     {} (ifindex {}, {})",
            iface.iface, iface.ifindex, iface.mode
        );
    }
    for iface in &status.egress {
        println!(
            "egress    {} (TC egress flagger, {}, {})",
            iface.iface,
            iface.attach,
            if iface.reused {
                "pinned link reused"
            } else {
                "attached"
            }
        );
    }
    if let Some(crowdsec) = &status.crowdsec {
        println!(
            "crowdsec  {} ({} decisions in list {}, last success {}{})",
            crowdsec.state,
            crowdsec.decisions,
            crowdsec.list,
            crowdsec.last_success.as_deref().unwrap_or("never"),
            match &crowdsec.last_error {
                Some(e) if crowdsec.state == "error" => format!("; {e}"),
                _ => String::new(),
            }
        );
    }
    if let Some(syn) = &status.syn_protection {
        if syn.enabled {
            println!(
                "syn       on, ports {:?}: {} SYNs answered with cookies, {} passed to the stack",
                syn.ports, syn.cookies, syn.passed
            );
        } else {
            println!("syn       off");
        }
    }
    if let Some(kernel) = &status.kernel {
        println!("kernel    {}", kernel.release);
        for feature in &kernel.features {
            if let Some(fallback) = &feature.fallback {
                println!(
                    "fallback  no {} (Linux {}): {fallback}",
                    feature.name, feature.since
                );
            }
        }
    }
    Ok(())
}

/// `xdpwall stats`: packets by interface and verdict, then per rule.
pub(super) async fn stats(client: &ClientArgs) -> anyhow::Result<()> {
    let api = client.client()?;
    let stats = api.stats().await?;
    if client.output == Output::Json {
        return print_json(&stats);
    }
    const VERDICTS: [&str; 6] = xdpwall_shared::verdict::NAMES;
    print!("{:<16}", "INTERFACE");
    for v in VERDICTS {
        print!("{v:>12}");
    }
    println!();
    for iface in &stats.interfaces {
        print!("{:<16}", iface.iface);
        for v in VERDICTS {
            print!("{:>12}", iface.packets.get(v).copied().unwrap_or(0));
        }
        println!();
    }
    if !stats.rules.is_empty() {
        println!();
        println!("{:<8}{:>12}{:>14}", "RULE", "PACKETS", "BYTES");
        for rule in &stats.rules {
            println!("{:<8}{:>12}{:>14}", rule.rule, rule.packets, rule.bytes);
        }
    }
    Ok(())
}
