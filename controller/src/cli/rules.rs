//! `xdpwall block|allow|limit add|rm|ls` and `xdpwall lookup`.

use super::{ClientArgs, Output, RuleCommand, print_json, wire_name};
use crate::{
    api::types::{RuleBody, RuleFilter},
    rules::{Action, Mode, normalize_cidr},
};

/// `block` or `allow` (`action`) with its subcommand.
pub(super) async fn rule(
    action: Action,
    command: RuleCommand,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let api = client.client()?;
    match command {
        RuleCommand::Add {
            cidr,
            ttl,
            reason,
            list,
            force,
            options,
        } => {
            let body = RuleBody {
                cidr,
                action: Some(action),
                list,
                ttl,
                reason,
                force,
                proto: options.proto,
                sport: options.sport,
                dport: options.dport,
                mode: options.monitor.then_some(Mode::Monitor),
                rate: options.rate,
                burst: options.burst,
                // clap allowed only the two spellings.
                per: options
                    .per
                    .as_deref()
                    .map(|p| p.parse().expect("source or rule")),
            };
            let rule = api.add_rule(&body).await?;
            if client.output == Output::Json {
                print_json(&rule)?;
            } else {
                println!(
                    "{} {} as rule {} (list {})",
                    action, rule.cidr, rule.id, rule.list
                );
            }
            Ok(())
        }
        RuleCommand::Rm { target } => {
            let ids: Vec<u64> = match target.parse::<u64>() {
                Ok(id) => vec![id],
                Err(_) => {
                    let cidr = normalize_cidr(&target)?.to_string();
                    let rules = api.rules(&of_action(action, None)).await?;
                    let ids: Vec<u64> = rules
                        .rules
                        .iter()
                        .filter(|r| r.cidr == cidr)
                        .map(|r| u64::from(r.id))
                        .collect();
                    if ids.is_empty() {
                        anyhow::bail!("no {action} rule for {cidr}");
                    }
                    ids
                }
            };
            for id in ids {
                api.delete_rule(id).await?;
                println!("removed rule {id}");
            }
            Ok(())
        }
        RuleCommand::Ls { list } => {
            let rules = api.rules(&of_action(action, list)).await?;
            if client.output == Output::Json {
                return print_json(&rules);
            }
            println!(
                "{:<8}{:<44}{:<14}{:<8}{:<22}{:<24}{:<9}REASON",
                "ID", "CIDR", "LIST", "SOURCE", "EXPIRES", "SCOPE", "MODE"
            );
            for r in &rules.rules {
                println!(
                    "{:<8}{:<44}{:<14}{:<8}{:<22}{:<24}{:<9}{}",
                    r.id,
                    r.cidr,
                    r.list,
                    r.source.as_str(),
                    r.expires_at.as_deref().unwrap_or("never"),
                    scope_column(r),
                    r.mode.as_str(),
                    r.reason
                );
            }
            Ok(())
        }
    }
}

/// "udp sport 11211", "tcp dport 22 20/s burst 40 per source", "any".
fn scope_column(r: &crate::api::types::RuleView) -> String {
    let scope = crate::rules::Scope {
        proto: r.proto,
        sport: r.sport,
        dport: r.dport,
    };
    let mut text = scope.describe();
    if let Some(rate) = r.rate {
        text = format!(
            "{text} {rate} burst {} per {}",
            r.burst.unwrap_or(1),
            r.per.unwrap_or_default().as_str()
        );
    }
    text
}

/// The rules of `action`, of one list or all.
fn of_action(action: Action, list: Option<String>) -> RuleFilter {
    RuleFilter {
        list,
        action: Some(action),
        ip: None,
    }
}

/// `xdpwall lookup IP`.
pub(super) async fn lookup(ip: &str, client: &ClientArgs) -> anyhow::Result<()> {
    let api = client.client()?;
    let answer = api.lookup(ip).await?;
    if client.output == Output::Json {
        return print_json(&answer);
    }
    let verdict = wire_name(&answer.verdict);
    match &answer.rule {
        Some(rule) => println!(
            "{} {verdict} by rule {} ({} {}, list {})",
            answer.ip, rule.id, rule.action, rule.cidr, rule.list
        ),
        None => println!("{} {verdict} (no rule matches)", answer.ip),
    }
    for rule in &answer.scoped {
        println!(
            "  unless rule {} ({} {}, {}{}) matches the packet",
            rule.id,
            rule.action,
            rule.cidr,
            scope_column(rule),
            if rule.mode == Mode::Monitor {
                ", monitor"
            } else {
                ""
            }
        );
    }
    Ok(())
}
