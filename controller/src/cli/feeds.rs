//! `xdpwall feeds ls|sync`.

use super::{ClientArgs, FeedsCommand, Output, print_json, print_json_line, wire_name};

pub(super) async fn feeds(command: FeedsCommand, client: &ClientArgs) -> anyhow::Result<()> {
    let api = client.client()?;
    let list = api.feeds().await?;
    match command {
        FeedsCommand::Ls => {
            if client.output == Output::Json {
                return print_json(&list);
            }
            println!(
                "{:<20}{:<8}{:>9}  {:<22}{:<22}LAST ERROR",
                "FEED", "ACTION", "ENTRIES", "LAST SUCCESS", "LAST ATTEMPT"
            );
            for f in &list.feeds {
                println!(
                    "{:<20}{:<8}{:>9}  {:<22}{:<22}{}",
                    f.name,
                    f.action.as_str(),
                    f.entries,
                    f.last_success.as_deref().unwrap_or("never"),
                    f.last_attempt.as_deref().unwrap_or("never"),
                    f.last_error.as_deref().unwrap_or("")
                );
            }
            Ok(())
        }
        FeedsCommand::Sync { names } => {
            let names: Vec<String> = if names.is_empty() {
                list.feeds.into_iter().map(|f| f.name).collect()
            } else {
                names
            };
            if names.is_empty() {
                println!("no feeds configured");
                return Ok(());
            }
            let mut failed = Vec::new();
            for name in &names {
                match api.sync_feed(name).await {
                    Ok(report) => {
                        if client.output == Output::Json {
                            print_json_line(&report)?;
                        } else {
                            let result = wire_name(&report.result);
                            // The detail only when it says more than the result.
                            let detail = match report.detail.as_str() {
                                "" => String::new(),
                                d if d == result => String::new(),
                                d => format!(": {d}"),
                            };
                            println!(
                                "{name}: {result} ({} entries, +{} -{}){detail}",
                                report.entries, report.inserted, report.removed,
                            );
                        }
                    }
                    Err(e) => {
                        eprintln!("{name}: {e:#}");
                        failed.push(name.clone());
                    }
                }
            }
            if !failed.is_empty() {
                anyhow::bail!(
                    "{} of {} feeds failed: {}",
                    failed.len(),
                    names.len(),
                    failed.join(", ")
                );
            }
            Ok(())
        }
    }
}
