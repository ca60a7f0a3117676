//! `xdpwall block|allow add|rm|ls` and `xdpwall lookup`.

use super::{ClientArgs, Output, RuleCommand, print_json, wire_name};
use crate::{
    api::types::{RuleBody, RuleFilter},
    rules::{Action, normalize_cidr},
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
        } => {
            let body = RuleBody {
                cidr,
                action: Some(action),
                list,
                ttl,
                reason,
                force,
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
                "{:<8}{:<44}{:<14}{:<8}{:<22}REASON",
                "ID", "CIDR", "LIST", "SOURCE", "EXPIRES"
            );
            for r in &rules.rules {
                println!(
                    "{:<8}{:<44}{:<14}{:<8}{:<22}{}",
                    r.id,
                    r.cidr,
                    r.list,
                    r.source.as_str(),
                    r.expires_at.as_deref().unwrap_or("never"),
                    r.reason
                );
            }
            Ok(())
        }
    }
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
    Ok(())
}
