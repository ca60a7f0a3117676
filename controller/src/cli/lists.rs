//! `xdpwall list replace|ls|show|rm`: named lists.

use std::io::Read as _;

use anyhow::Context as _;

use super::{ClientArgs, ListCommand, Output, print_json};
use crate::{api::types::ListQuery, rules::Action};

pub(super) async fn list(command: ListCommand, client: &ClientArgs) -> anyhow::Result<()> {
    let api = client.client()?;
    match command {
        ListCommand::Replace {
            name,
            file,
            action,
            ttl,
            allow_special,
        } => {
            let action: Action = action
                .parse()
                .map_err(|e| anyhow::anyhow!("--action: {e}"))?;
            let text = read_entries(&file)?;
            let options = ListQuery {
                action: Some(action),
                ttl,
                allow_special: allow_special.then_some(true),
            };
            let result = api.replace_list(&name, &options, text).await?;
            if client.output == Output::Json {
                return print_json(&result);
            }
            let special = match result.excluded_special {
                0 => String::new(),
                n => format!("; {n} in special ranges left out (--allow-special keeps them)"),
            };
            println!(
                "list {}: {} entries (+{} -{}){special}",
                result.list, result.entries, result.inserted, result.removed
            );
            Ok(())
        }
        ListCommand::Ls => {
            let index = api.lists().await?;
            if client.output == Output::Json {
                return print_json(&index);
            }
            if index.lists.is_empty() {
                println!("no lists (`xdpwall list replace NAME FILE` makes one)");
                return Ok(());
            }
            println!(
                "{:<24}{:<8}{:>9}  {:<22}EXPIRES",
                "LIST", "ACTION", "ENTRIES", "UPDATED"
            );
            for l in &index.lists {
                println!(
                    "{:<24}{:<8}{:>9}  {:<22}{}",
                    l.name,
                    l.action.as_str(),
                    l.entries,
                    l.updated,
                    l.expires_at.as_deref().unwrap_or("never")
                );
            }
            Ok(())
        }
        ListCommand::Show { name } => {
            let list = api.list(&name).await?;
            if client.output == Output::Json {
                return print_json(&list);
            }
            println!(
                "# list {} ({}): {} entries ({} IPv4, {} IPv6), updated {}",
                list.summary.name,
                list.summary.action.as_str(),
                list.summary.entries,
                list.ipv4,
                list.ipv6,
                list.summary.updated
            );
            for cidr in &list.cidrs {
                println!("{cidr}");
            }
            Ok(())
        }
        ListCommand::Rm { name } => {
            api.delete_list(&name).await?;
            if client.output != Output::Json {
                println!("list {name} deleted");
            }
            Ok(())
        }
    }
}

/// The entries file, or stdin for `-`.
fn read_entries(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the entries from stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("reading the entries from {file}"))
}
