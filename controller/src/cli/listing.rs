//! `loggate logs ls --host HOST [PATH-GLOB]`: the files your grants cover on one agent, asked
//! of the agent itself over mTLS with your certificate (`ListLogs`). The agent shows only files
//! a read of yours would open (agent/src/listing.rs) and audits the listing as `read.listed`;
//! a refusal exits 3 with the agent's reason, as a read's does.

use super::{agent_addr, connect, format_time, usage, CliResult, Failure, OrExplain, Peer};
use crate::config::ClientConfig;
use loggate_core::tls::Server;
use loggate_proto as pb;
use loggate_proto::agent_client::AgentClient;
use std::io::Write;
use std::path::PathBuf;

pub struct ListArgs {
    pub host: String,
    pub agent_addr: Option<String>,
    /// Only files this glob matches (the grammar of a grant's paths); `None`: every one.
    pub glob: Option<String>,
    pub json: bool,
    pub grant_token: Option<PathBuf>,
}

/// Lists the files `args.host` serves you, one per line (size, modification time, kind, path)
/// or one JSON object per file.
pub async fn list_logs(config: &ClientConfig, args: ListArgs) -> CliResult {
    if let Some(glob) = &args.glob {
        if !glob.starts_with('/') {
            return Err(usage(format!(
                "{glob:?} is not an absolute path glob; give it as the grant names paths \
                 (\"/var/log/app/*\")"
            )));
        }
    }
    let grant_token = match &args.grant_token {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read grant token {}: {e}", p.display()))?
            .trim()
            .to_string(),
        None => String::new(),
    };
    let addr = agent_addr(config, &args.host, args.agent_addr).await?;
    let peer = Peer {
        name: format!("agent {}", args.host),
        addr: addr.clone(),
        server: Server::Agent(&args.host),
    };
    let mut client = AgentClient::new(connect(&addr, config, Server::Agent(&args.host)).await?);
    let listing = client
        .list_logs(pb::ListLogsRequest {
            path_glob: args.glob.clone().unwrap_or_default(),
            grant_token,
        })
        .await
        .or_explain(config, &peer)
        .await?
        .into_inner();
    let mut text = String::new();
    for f in &listing.files {
        if args.json {
            let record = serde_json::json!({
                "host": args.host,
                "path": f.path,
                "size": f.size,
                "modified_unix": f.modified_unix,
                "rotated": f.rotated,
                "compression": (!f.compression.is_empty()).then_some(&f.compression),
            });
            text.push_str(&format!("{record}\n"));
        } else {
            text.push_str(&entry_line(f));
        }
    }
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| Failure::from(format!("writing standard output: {e}")))?;
    if listing.truncated {
        eprintln!(
            "loggate: agent {} cut the listing at its bound; give a narrower PATH-GLOB",
            args.host
        );
    }
    if listing.files.is_empty() {
        eprintln!(
            "loggate: your grants on agent {} cover no file{}",
            args.host,
            args.glob
                .as_ref()
                .map(|g| format!(" matching {}", printable(g)))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// One text line of the listing: size, modification time, kind, path. The agent's strings are
/// not trusted to be printable (a compromised agent could send terminal escapes that look like
/// trusted metadata): control characters are shown escaped.
fn entry_line(f: &pb::LogFileEntry) -> String {
    let kind = match (f.rotated, f.compression.as_str()) {
        (_, "invalid") => "invalid".to_string(),
        (true, "") => "rotated".to_string(),
        (true, c) => format!("rotated,{}", printable(c)),
        (false, "") => "live".to_string(),
        (false, c) => printable(c).into_owned(),
    };
    format!(
        "{:>12}  {}  {:<14}  {}\n",
        f.size,
        format_time(f.modified_unix),
        kind,
        printable(&f.path)
    )
}

/// `text` with every control character (C0, DEL, C1: what a terminal may act on) escaped as
/// `\u{..}`, and a backslash doubled so an escape cannot be forged.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_path_with_control_characters_is_printed_escaped() {
        let entry = pb::LogFileEntry {
            path: "/var/log/a\u{1b}[2J\u{9b}31mb\r\\u{1b}.log".into(),
            size: 3,
            modified_unix: 0,
            rotated: true,
            compression: "gzip\u{7}".into(),
        };
        let line = entry_line(&entry);
        assert!(
            !line.trim_end_matches('\n').chars().any(char::is_control),
            "{line:?}"
        );
        assert!(
            line.contains("/var/log/a\\u{1b}[2J\\u{9b}31mb\\r\\\\u{1b}.log"),
            "{line}"
        );
        assert!(line.contains("rotated,gzip\\u{7}"), "{line}");
        assert_eq!(printable("/var/log/app/api.log"), "/var/log/app/api.log");
    }
}
