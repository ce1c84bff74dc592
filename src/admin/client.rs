//! The admin API from the other side: `sipfront status` reads `/api/v1/cluster` of a node (one plain HTTP/1.1
//! GET, `Connection: close`; the API answers with a Content-Length) and turns it back into node statuses.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::NodeStatus;

const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET base + path`, the body as JSON. `base` is `http://HOST:PORT`.
pub async fn get_json(base: &str, path: &str) -> anyhow::Result<Value> {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let work = async {
        let mut s = tokio::net::TcpStream::connect(hostport).await?;
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| anyhow::anyhow!("{base}: no answer within {TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("{base}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("{base}: not an HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        anyhow::bail!("{base}{path}: HTTP {status}: {}", body.trim());
    }
    Ok(serde_json::from_str(body)?)
}

/// The nodes of an `/api/v1/cluster` answer, as `sipfront status` renders them.
pub fn statuses_from(v: &Value) -> Vec<(u64, Result<NodeStatus, String>)> {
    let Some(nodes) = v.get("nodes").and_then(Value::as_array) else { return Vec::new() };
    nodes
        .iter()
        .map(|n| {
            let id = n.get("id").and_then(Value::as_u64).unwrap_or(0);
            if n.get("reachable").and_then(Value::as_bool) != Some(true) {
                let e = n.get("error").and_then(Value::as_str).unwrap_or("unreachable").to_owned();
                return (id, Err(e));
            }
            let mut n = n.clone();
            if let Some(o) = n.as_object_mut() {
                o.entry("events").or_insert(Value::Array(Vec::new()));
            }
            (id, serde_json::from_value::<NodeStatus>(n).map_err(|e| format!("bad status: {e}")))
        })
        .collect()
}
