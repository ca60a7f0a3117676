//! `xdpwall export` and `xdpwall import`: the rules added over the API as a JSON file, for a
//! backup or another host.

use std::{path::Path, time::SystemTime};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{ClientArgs, Output, print_json};
use crate::{
    api::types::{BatchBody, RuleBody, RuleList},
    rules::Mode,
    rules::RuleSource,
};

/// The `format` field of an export file.
const EXPORT_FORMAT: &str = "xdpwall-rules-v1";

/// An export file: batch entries (`POST /v1/rules/batch`) with a format tag.
#[derive(Debug, Serialize, Deserialize)]
struct ExportDocument {
    format: String,
    /// RFC 3339; informational (an import does not read it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    exported_at: String,
    rules: Vec<RuleBody>,
}

/// The export of `rules` (a `GET /v1/rules` answer) at `now`: API rules only, as batch entries
/// (cidr, action, list, reason, ttl = time left); rules already expired are left out.
fn export_document(rules: &RuleList, now: SystemTime) -> anyhow::Result<ExportDocument> {
    let mut out = Vec::new();
    for rule in &rules.rules {
        if rule.source != RuleSource::Api {
            continue;
        }
        let mut entry = RuleBody {
            cidr: rule.cidr.clone(),
            action: Some(rule.action),
            list: Some(rule.list.clone()),
            reason: Some(rule.reason.clone()).filter(|r| !r.is_empty()),
            proto: rule.proto,
            sport: rule.sport,
            dport: rule.dport,
            mode: (rule.mode == Mode::Monitor).then_some(Mode::Monitor),
            rate: rule.rate,
            burst: rule.burst,
            per: rule.per,
            ..RuleBody::default()
        };
        if let Some(expires) = &rule.expires_at {
            let at = humantime::parse_rfc3339(expires)
                .with_context(|| format!("rule {}: bad expires_at {expires:?}", rule.id))?;
            match at.duration_since(now) {
                Ok(left) if left.as_secs() > 0 => {
                    entry.ttl = Some(format!("{}s", left.as_secs()));
                }
                _ => continue,
            }
        }
        out.push(entry);
    }
    Ok(ExportDocument {
        format: EXPORT_FORMAT.to_string(),
        exported_at: humantime::format_rfc3339_seconds(now).to_string(),
        rules: out,
    })
}

/// `xdpwall export [FILE]`.
pub(super) async fn export(file: Option<&Path>, client: &ClientArgs) -> anyhow::Result<()> {
    let api = client.client()?;
    let rules = api.rules(&Default::default()).await?;
    let export = export_document(&rules, SystemTime::now())?;
    // Through a JSON value: sorted keys, as the file has always been written.
    let text = serde_json::to_string_pretty(&serde_json::to_value(&export)?)? + "\n";
    match file {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "exported {} rules to {}",
                export.rules.len(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `xdpwall import FILE`: one all-or-nothing batch.
pub(super) async fn import(file: &Path, client: &ClientArgs) -> anyhow::Result<()> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let document: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    if document.get("format").and_then(serde_json::Value::as_str) != Some(EXPORT_FORMAT) {
        anyhow::bail!(
            "{} is not an xdpwall export (expected \"format\": \"{EXPORT_FORMAT}\")",
            file.display()
        );
    }
    let document: ExportDocument = serde_json::from_value(document)
        .with_context(|| format!("{}: a rule entry is malformed", file.display()))?;
    let count = document.rules.len();
    let api = client.client()?;
    let result = api
        .add_rules(&BatchBody {
            rules: document.rules,
        })
        .await?;
    if client.output == Output::Json {
        print_json(&result)?;
    } else {
        println!("imported {count} rules from {}", file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{api::types::RuleView, rules::Action};

    #[test]
    fn export_keeps_api_rules_with_the_ttl_left_and_drops_the_rest() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |secs: u64| {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                .to_string()
        };
        let rule =
            |id, cidr: &str, action, list: &str, reason: &str, source, expires_at| RuleView {
                id,
                cidr: cidr.into(),
                action,
                list: list.into(),
                reason: reason.into(),
                source,
                created_at: at(1_700_000_000),
                expires_at,
                proto: None,
                sport: None,
                dport: None,
                mode: Mode::Enforce,
                rate: None,
                burst: None,
                per: None,
            };
        let rules = RuleList {
            rules: vec![
                rule(
                    1,
                    "192.0.2.0/24",
                    Action::Block,
                    "api",
                    "scan",
                    RuleSource::Api,
                    None,
                ),
                rule(
                    2,
                    "2001:db8::/32",
                    Action::Allow,
                    "ops",
                    "",
                    RuleSource::Api,
                    Some(at(1_800_000_090)),
                ),
                rule(
                    3,
                    "198.51.100.1/32",
                    Action::Block,
                    "api",
                    "",
                    RuleSource::Api,
                    Some(at(1_799_999_999)),
                ),
                rule(
                    4,
                    "203.0.113.0/24",
                    Action::Block,
                    "config",
                    "",
                    RuleSource::Config,
                    None,
                ),
            ],
        };
        let export = serde_json::to_value(export_document(&rules, now).unwrap()).unwrap();
        assert_eq!(export["format"], EXPORT_FORMAT);
        assert_eq!(export["exported_at"], at(1_800_000_000));
        assert_eq!(
            export["rules"],
            serde_json::json!([
                {"cidr": "192.0.2.0/24", "action": "block", "list": "api", "reason": "scan"},
                {"cidr": "2001:db8::/32", "action": "allow", "list": "ops", "ttl": "90s"},
            ])
        );
    }

    /// An export file reads back as the batch it was written from.
    #[test]
    fn an_export_file_reads_back() {
        let text = r#"{"exported_at": "2027-01-15T08:00:00Z", "format": "xdpwall-rules-v1",
            "rules": [{"action": "block", "cidr": "192.0.2.0/24", "list": "api", "ttl": "90s"}]}"#;
        let document: ExportDocument = serde_json::from_str(text).unwrap();
        assert_eq!(document.rules.len(), 1);
        assert_eq!(document.rules[0].ttl.as_deref(), Some("90s"));
        assert_eq!(document.rules[0].action, Some(Action::Block));
    }
}
