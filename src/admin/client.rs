//! The admin API from the other side: `sipfront status` reads `/api/v1/cluster` of a node and turns it back into
//! node statuses; `sipfront demo` relays its dashboard's API calls to a node. One plain HTTP/1.1 exchange per
//! connection (`Connection: close`), so the answer ends where the connection does.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::NodeStatus;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Why an HTTP exchange with an admin API failed (before any status code: those are in [`HttpAnswer`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{base}: no answer within {TIMEOUT:?}")]
    Timeout { base: String },
    #[error("{base}: {source}")]
    Io { base: String, source: std::io::Error },
    #[error("{base}: not an HTTP answer")]
    NotHttp { base: String },
}

/// One HTTP answer: status, header fields (name, value) in order, and the body (de-chunked).
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// `METHOD base + path` with extra header fields and a body; one HTTP/1.1 exchange, `Connection: close`.
/// `base` is `http://HOST:PORT`.
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<HttpAnswer, ClientError> {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n");
    for (name, value) in headers {
        // Ours, or framing the body: set here once, never copied from the caller.
        let ours = ["host", "connection", "content-length", "transfer-encoding"];
        if ours.iter().any(|o| name.eq_ignore_ascii_case(o)) || value.contains(['\r', '\n']) {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let work = async {
        let mut s = tokio::net::TcpStream::connect(hostport).await?;
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| ClientError::Timeout { base: base.to_owned() })?
        .map_err(|source| ClientError::Io { base: base.to_owned(), source })?;
    parse_answer(&buf).ok_or_else(|| ClientError::NotHttp { base: base.to_owned() })
}

/// Split a whole HTTP/1.1 answer (the connection closed after it).
fn parse_answer(buf: &[u8]) -> Option<HttpAnswer> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..split]).ok()?;
    let raw_body = &buf[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).collect();
    let chunked =
        headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(raw_body)? } else { raw_body.to_vec() };
    Some(HttpAnswer { status, headers, body })
}

/// A chunked body's data (RFC 9112 §7.1); trailers are ignored.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// `GET base + path`, the body as JSON. `base` is `http://HOST:PORT`.
pub async fn get_json(base: &str, path: &str) -> anyhow::Result<Value> {
    let accept = [("Accept".to_owned(), "application/json".to_owned())];
    let answer = request(base, "GET", path, &accept, b"").await?;
    let body = String::from_utf8_lossy(&answer.body);
    if answer.status != 200 {
        anyhow::bail!("{base}{path}: HTTP {}: {}", answer.status, body.trim());
    }
    Ok(serde_json::from_str(&body)?)
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

#[cfg(test)]
mod tests {
    use super::parse_answer;

    #[test]
    fn answers_with_length_and_chunked() {
        let a =
            parse_answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((a.status, &a.body[..]), (200, &b"{}"[..]));
        assert_eq!(a.headers[0], ("content-type".to_owned(), "application/json".to_owned()));
        let c = parse_answer(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((c.status, &c.body[..]), (404, &b"abcde"[..]));
        assert!(parse_answer(b"garbage").is_none());
    }
}
