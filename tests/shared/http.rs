//! One plain HTTP/1.1 exchange (`Connection: close`) with an admin API, the demo's dashboard or Chromium's DevTools
//! port: what the admin, demo and browser tests need, without an HTTP client dependency; and one sample read out of
//! a Prometheus exposition.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `METHOD path` to `addr` with an optional bearer token and a JSON body: (status, body), or `None` when no
/// connection could be made or the request could not be written.
pub fn http_exchange(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let out = String::from_utf8_lossy(&read_response(&mut s)).into_owned();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Some((code, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// The response's bytes: up to the end of its body when it has a Content-Length (some servers, Chromium's DevTools
/// one among them, keep the connection open despite `Connection: close`), else up to EOF or the read timeout.
fn read_response(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(h) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..h]).to_ascii_lowercase();
            let len = head.lines().find_map(|l| l.strip_prefix("content-length:")?.trim().parse::<usize>().ok());
            if len.is_some_and(|n| out.len() >= h + 4 + n) {
                return out;
            }
        }
        match s.read(&mut buf) {
            Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return out,
        }
    }
}

/// The value of the first sample line of `metric` (name and labels as written) in a Prometheus exposition.
pub fn metric_sample(text: &str, metric: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(metric) && l[metric.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
}

/// The admin API's `/metrics` exposition (unauthenticated), asserting it answered 200.
pub fn metrics_text(admin: &str) -> String {
    let (status, text) = http_exchange(admin, "GET", "/metrics", None, "").expect("sipfront's admin API answers");
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of the first sample of counter `name` carrying every one of `labels` (in any order, among others),
/// read from the admin API at `admin`; 0 when there is none (a counter never incremented is not exported).
pub fn labelled_counter(admin: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics_text(admin)
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The `sipfront_final_responses_total` sample lines of an exposition: those of one code, or all of them.
pub fn final_response_lines(text: &str, code: Option<u16>) -> Vec<&str> {
    let label = code.map(|c| format!("code=\"{c}\""));
    text.lines()
        .filter(|l| l.starts_with("sipfront_final_responses_total{"))
        .filter(|l| label.as_ref().is_none_or(|label| l.contains(label.as_str())))
        .collect()
}

/// The sum of some sample lines' values.
pub fn sample_sum(lines: &[&str]) -> f64 {
    lines.iter().filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}
