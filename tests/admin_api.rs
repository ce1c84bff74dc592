//! The admin surface of the real binary: after a known amount of SIPp traffic the Prometheus exposition says
//! exactly that much, the JSON API answers with the node's state, mutating endpoints refuse a missing or wrong
//! bearer token (401, logged, counted) and act with the right one, and the dashboard is served from the binary.
//! Test numbers (tests/common/mod.rs): 110-111. The admin server listens on 127.0.0.N:9090.

mod common;

use std::time::Duration;

use common::*;

/// One HTTP/1.1 exchange: (status, body).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    http_exchange(addr, method, path, token, body).unwrap_or_else(|| panic!("admin {addr}: cannot connect"))
}

const TOKEN: &str = "admin-token-0123456789abcdef";

fn start(h: &mut Harness) -> String {
    start_with(h, "")
}

fn start_with(h: &mut Harness, extra: &str) -> String {
    let token = h.dir.join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let addr = format!("{}:9090", h.front_ip());
    let cfg = FrontConfig::new()
        .backend("pbx", h.pbx(PBX1_PORT), Tp::Udp)
        .health("200ms", "300ms", 3, 2)
        .section(&format!("[admin]\nlisten = \"{addr}\"\ntoken_file = \"{}\"\n{extra}", token.display()));
    h.start_sipfront(&cfg);
    addr
}

#[test]
fn metrics_count_known_traffic_and_the_api_answers() {
    let mut h = Harness::new("admin_metrics", 110);
    let pbx = h.start_sipp(SippSpec::uas(&h, "pbx", "uas_health.xml", Tp::Udp, PBX1_PORT).calls(1_000_000));
    // JSON logs too: every line the node writes must be one JSON object.
    let admin = start_with(&mut h, "[log]\nformat = \"json\"");
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac.xml", Tp::Udp).calls(10));
    uac.assert_ok(10);

    let (code, text) = http(&admin, "GET", "/metrics", None, "");
    assert_eq!(code, 200, "{text}");
    for (metric, want) in [
        ("sipfront_calls_total", 10.0),
        ("sipfront_requests_total{method=\"INVITE\"}", 10.0),
        ("sipfront_requests_total{method=\"ACK\"}", 10.0),
        ("sipfront_requests_total{method=\"BYE\"}", 10.0),
        ("sipfront_dialogs_active", 0.0),
    ] {
        assert_eq!(metric_sample(&text, metric), Some(want), "{metric} after 10 calls:\n{text}");
    }
    let twos = metric_sample(&text, "sipfront_responses_total{class=\"2xx\"}").unwrap_or(0.0);
    assert!(twos >= 20.0, "at least 10 200-to-INVITE and 10 200-to-BYE relayed: {twos}\n{text}");
    assert!(text.contains("sipfront_build_info{version=\""), "build info:\n{text}");
    assert!(text.contains("sipfront_probe_rtt_seconds_bucket{backend=\"pbx\""), "probe RTT histogram:\n{text}");
    assert!(text.contains("# HELP sipfront_calls_total"), "metrics are described:\n{text}");
    assert_eq!(metric_sample(&text, "sipfront_backend_up{backend=\"pbx\"}").unwrap_or(1.0), 1.0);

    assert_eq!(http(&admin, "GET", "/healthz", None, "").0, 200);
    let (code, body) = http(&admin, "GET", "/readyz", None, "");
    assert_eq!((code, body.trim()), (200, "serving"));
    let (_, cluster) = http(&admin, "GET", "/api/v1/cluster", None, "");
    let v: serde_json::Value = serde_json::from_str(&cluster).unwrap();
    assert_eq!(v["nodes"][0]["role"], "standalone", "{cluster}");
    assert_eq!(v["leader"], 1);
    let (_, stats) = http(&admin, "GET", "/api/v1/stats", None, "");
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!((v["calls_total"].as_u64(), v["active_calls"].as_u64()), (Some(10), Some(0)), "{stats}");
    let (_, backends) = http(&admin, "GET", "/api/v1/backends", None, "");
    let v: serde_json::Value = serde_json::from_str(&backends).unwrap();
    assert_eq!(v["backends"][0]["name"], "pbx");
    assert_eq!(v["backends"][0]["state"], "up", "{backends}");
    assert!(v["backends"][0]["rtt_ms"].as_f64().is_some(), "probe RTT known: {backends}");
    // The dialog list names calls: it needs the token (tests/hardening_admin.rs has the refusals).
    let (code, dialogs) = http(&admin, "GET", "/api/v1/dialogs?limit=5", Some(TOKEN), "");
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&dialogs).unwrap()["count"], 0);
    let (code, page) = http(&admin, "GET", "/", None, "");
    assert!(code == 200 && page.contains("<canvas") && page.contains("/assets/app.js"), "dashboard page: {page}");
    let (code, js) = http(&admin, "GET", "/assets/app.js", None, "");
    assert!(code == 200 && js.contains("/api/v1/cluster"), "dashboard script");
    let log = h.front_log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "the node logged: {log}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{l}");
    }
    h.stop_sipp(pbx, Duration::from_millis(100));
}

#[test]
fn actions_need_the_bearer_token() {
    let mut h = Harness::new("admin_auth", 111);
    let pbx = h.start_sipp(SippSpec::uas(&h, "pbx", "uas_health.xml", Tp::Udp, PBX1_PORT).calls(1_000_000));
    let admin = start(&mut h);
    let drain = "/api/v1/backends/pbx/drain";
    assert_eq!(http(&admin, "POST", drain, None, "").0, 401, "no token");
    assert_eq!(http(&admin, "POST", drain, Some("wrong-token-0123456789"), "").0, 401, "wrong token");
    assert_eq!(http(&admin, "POST", "/api/v1/switchover", None, r#"{"to": 2}"#).0, 401);
    let (code, body) = http(&admin, "POST", drain, Some(TOKEN), "");
    assert_eq!(code, 200, "{body}");
    let (_, backends) = http(&admin, "GET", "/api/v1/backends", None, "");
    assert!(backends.contains("\"drained\":true"), "{backends}");
    assert_eq!(http(&admin, "POST", "/api/v1/backends/pbx/undrain", Some(TOKEN), "").0, 200);
    assert_eq!(http(&admin, "POST", "/api/v1/backends/nope/drain", Some(TOKEN), "").0, 404);
    let (code, body) = http(&admin, "POST", "/api/v1/switchover", Some(TOKEN), r#"{"to": 2}"#);
    assert_eq!(code, 409, "a standalone node has nobody to switch over to: {body}");
    let (_, metrics) = http(&admin, "GET", "/metrics", None, "");
    assert_eq!(metric_sample(&metrics, "sipfront_admin_unauthorized_total"), Some(3.0), "{metrics}");
    let log = h.front_log_text();
    assert_eq!(log.matches("admin: refused an unauthorized request").count(), 3, "each refusal logged:\n{log}");
    h.stop_sipp(pbx, Duration::from_millis(100));
}
