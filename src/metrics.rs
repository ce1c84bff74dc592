//! Metric names, defined once (`sipfront_` prefix) and described at start-up. The exporter (admin HTTP) comes
//! with the operator-surface work; until then the same counts are kept in [`crate::proxy::Stats`] too.

pub const REQUESTS: &str = "sipfront_requests_total";
pub const RESPONSES: &str = "sipfront_responses_total";
pub const MALFORMED_DROPPED: &str = "sipfront_malformed_dropped_total";
pub const MALFORMED_REJECTED: &str = "sipfront_malformed_rejected_total";
pub const RETRANSMISSIONS_ABSORBED: &str = "sipfront_retransmissions_absorbed_total";
pub const TRANSACTIONS: &str = "sipfront_transactions_total";
pub const TRANSACTIONS_ACTIVE: &str = "sipfront_transactions_active";
pub const BACKEND_FAILOVERS: &str = "sipfront_backend_failovers_total";
pub const DIALOGS_ACTIVE: &str = "sipfront_dialogs_active";
pub const TRANSPORT_RX_BYTES: &str = "sipfront_transport_rx_bytes_total";
pub const TRANSPORT_TX_BYTES: &str = "sipfront_transport_tx_bytes_total";
pub const TCP_CONNECTIONS: &str = "sipfront_tcp_connections";
pub const TLS_HANDSHAKE_FAILURES: &str = "sipfront_tls_handshake_failures_total";
pub const WS_REFUSED: &str = "sipfront_ws_refused_total";
pub const TLS_RELOADS: &str = "sipfront_tls_reloads_total";
pub const CONNECTIONS_REFUSED: &str = "sipfront_connections_refused_total";
pub const CONNECTIONS_CLOSED: &str = "sipfront_connections_closed_total";
pub const BUILD_INFO: &str = "sipfront_build_info";
pub const BACKEND_UP: &str = "sipfront_backend_up";
pub const BACKEND_STATE_CHANGES: &str = "sipfront_backend_state_changes_total";
pub const PROBES: &str = "sipfront_probes_total";
pub const DIALOGS_REHOMED: &str = "sipfront_dialogs_rehomed_total";
pub const FORGED_TOKENS: &str = "sipfront_forged_tokens_total";
pub const OVER_CAPACITY: &str = "sipfront_over_capacity_total";
pub const FLOWS_ACTIVE: &str = "sipfront_registration_flows";
pub const FLOWS_RELEARNED: &str = "sipfront_flows_relearned_total";
pub const DROPPED_STANDBY: &str = "sipfront_standby_dropped_total";
pub const CLUSTER_EVENTS_DROPPED: &str = "sipfront_cluster_events_dropped_total";
pub const CLUSTER_EVENTS: &str = "sipfront_cluster_events_total";
pub const CLUSTER_BATCHES: &str = "sipfront_cluster_batches_total";
pub const CLUSTER_BAD_FRAMES: &str = "sipfront_cluster_bad_frames_total";
pub const CLUSTER_CONNS_REFUSED: &str = "sipfront_cluster_connections_refused_total";
pub const CLUSTER_ROLE: &str = "sipfront_cluster_is_leader";
pub const CLUSTER_TERM: &str = "sipfront_cluster_term";
pub const CLUSTER_LEADER: &str = "sipfront_cluster_leader_id";
pub const CLUSTER_APPLY_LAG: &str = "sipfront_cluster_apply_lag_seconds";
pub const CLUSTER_LAG_ENTRIES: &str = "sipfront_cluster_replication_lag_entries";
pub const VIP_HELD: &str = "sipfront_vip_held";
pub const VIP_CHANGES: &str = "sipfront_vip_changes_total";
pub const VIP_GARP_SENT: &str = "sipfront_vip_garp_sent_total";
pub const AWS_CALLS: &str = "sipfront_aws_calls_total";
pub const AWS_CALL_ERRORS: &str = "sipfront_aws_call_errors_total";
pub const AWS_CALL_SECONDS: &str = "sipfront_aws_call_seconds";
pub const FAILOVER_STEP_SECONDS: &str = "sipfront_failover_step_seconds";
pub const FAILOVER_STEP_FAILURES: &str = "sipfront_failover_step_failures_total";
pub const FAILOVER_FENCED: &str = "sipfront_failover_fenced_total";
pub const VOLUME_HELD: &str = "sipfront_volume_held";
pub const CALLS: &str = "sipfront_calls_total";
pub const PROBE_RTT: &str = "sipfront_probe_rtt_seconds";
pub const FAILOVER_EVENTS: &str = "sipfront_failover_events_total";
pub const FAILOVER_DURATION: &str = "sipfront_failover_duration_seconds";
pub const BACKEND_DRAINED: &str = "sipfront_backend_drained";
pub const ADMIN_UNAUTHORIZED: &str = "sipfront_admin_unauthorized_total";
pub const ADMIN_CONNS_REFUSED: &str = "sipfront_admin_connections_refused_total";
pub const ADMIN_CONNS_CLOSED: &str = "sipfront_admin_connections_closed_total";
pub const FINAL_RESPONSES: &str = "sipfront_final_responses_total";
pub const NO_BACKEND: &str = "sipfront_no_backend_total";
pub const LOOPS: &str = "sipfront_loops_detected_total";
pub const RELAY_REFUSED: &str = "sipfront_relay_refused_total";
pub const RESPONSES_DROPPED: &str = "sipfront_responses_dropped_total";
pub const GUARD_DROPPED: &str = "sipfront_guard_dropped_total";
pub const GUARD_BANS: &str = "sipfront_guard_bans_total";
pub const GUARD_AUTH_FAILURES: &str = "sipfront_guard_auth_failures_total";
pub const GUARD_BANS_ACTIVE: &str = "sipfront_guard_bans_active";
pub const GUARD_SOURCES: &str = "sipfront_guard_sources";
pub const GUARD_EVICTED: &str = "sipfront_guard_evicted_total";

/// A final response's code as a metric label: the codes RFC 3261 §21 and its extensions name, else the class, so
/// a peer sending odd codes cannot grow the series without bound.
pub fn code_label(code: u16) -> &'static str {
    macro_rules! codes {
        ($($c:literal)*) => {
            match code {
                $($c => stringify!($c),)*
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                500..=599 => "5xx",
                _ => "6xx",
            }
        };
    }
    codes!(200 202 204 300 301 302 305 380 400 401 402 403 404 405 406 407 408 410 412 413 414 415 416 417 420 421
        422 423 428 429 430 433 436 437 438 439 470 480 481 482 483 484 485 486 487 488 489 491 493 494 500 501 502
        503 504 505 513 580 600 603 604 606 607 608)
}

/// Count a final response sent upstream: `origin` is `local` (sipfront's own answer) or `relayed`.
pub fn final_response(code: u16, origin: &'static str) {
    if code >= 200 {
        metrics::counter!(FINAL_RESPONSES, "code" => code_label(code), "origin" => origin).increment(1);
    }
}

/// Describe every metric (call once, after a recorder is installed).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(REQUESTS, "SIP requests received, by method");
    describe_counter!(RESPONSES, "SIP responses received, by class");
    describe_counter!(MALFORMED_DROPPED, "Unparseable messages dropped without a reply, by reason");
    describe_counter!(MALFORMED_REJECTED, "Malformed requests answered with 400, by reason");
    describe_counter!(RETRANSMISSIONS_ABSORBED, "Request retransmissions absorbed by a transaction");
    describe_counter!(TRANSACTIONS, "Proxy transactions created, by kind");
    describe_gauge!(TRANSACTIONS_ACTIVE, "Proxy transactions alive now");
    describe_counter!(BACKEND_FAILOVERS, "Initial requests moved to the next backend, by reason");
    describe_gauge!(DIALOGS_ACTIVE, "Dialogs in the dialog table");
    describe_counter!(TRANSPORT_RX_BYTES, "Bytes read, by transport");
    describe_counter!(TRANSPORT_TX_BYTES, "Bytes written, by transport");
    describe_gauge!(TCP_CONNECTIONS, "Open stream connections (TCP, TLS, WS, WSS), by transport");
    describe_counter!(TLS_HANDSHAKE_FAILURES, "TLS handshakes that failed or timed out, by side (client, backend)");
    describe_counter!(
        WS_REFUSED,
        "WebSocket upgrades refused or failed, by reason (origin, subprotocol, handshake, timeout)"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Stream connections accepted over a cap and closed at once, by transport and reason (total, per_source)"
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Stream connections sipfront closed itself, by transport and reason (limit, handshake_timeout, \
         handshake_failed, slow_message, too_large, malformed, idle, ping_timeout, banned)"
    );
    describe_counter!(TLS_RELOADS, "Certificate reloads on SIGHUP, by result (ok, error)");
    describe_gauge!(BUILD_INFO, "Always 1; labels carry the version");
    describe_gauge!(BACKEND_UP, "1 when the backend is up, 0 when down, by backend");
    describe_counter!(BACKEND_STATE_CHANGES, "Backend up/down flips, by backend and new state");
    describe_counter!(PROBES, "OPTIONS probes sent, by backend and result (ok, fail)");
    describe_counter!(DIALOGS_REHOMED, "Dialogs moved off a failed backend");
    describe_counter!(FORGED_TOKENS, "Requests refused 403 for a Record-Route or Path token that failed its check");
    describe_counter!(OVER_CAPACITY, "Requests refused 503 because the dialog or flow table is full, by table");
    describe_gauge!(FLOWS_ACTIVE, "Registration flows in the flow table");
    describe_counter!(
        FLOWS_RELEARNED,
        "Requests of established calls delivered over the connection a phone registered anew (reconnect, failover)"
    );
    describe_counter!(DROPPED_STANDBY, "SIP messages dropped because this node is not serving (not the leader)");
    describe_counter!(CLUSTER_EVENTS_DROPPED, "Table changes not replicated: the journal queue was full");
    describe_counter!(CLUSTER_EVENTS, "Table changes proposed to the cluster (leader) or applied (followers), by side");
    describe_counter!(CLUSTER_BATCHES, "Raft log entries of table changes, by side (proposed, applied)");
    describe_counter!(
        CLUSTER_BAD_FRAMES,
        "Peer frames dropped, by reason: header, length, mac, decode; timeout: a connection sent nothing valid in time"
    );
    describe_counter!(
        CLUSTER_CONNS_REFUSED,
        "Cluster-port connections closed at accept, by reason (total, per_source: that many were open)"
    );
    describe_gauge!(CLUSTER_ROLE, "1 on the Raft leader (the active node), else 0");
    describe_gauge!(CLUSTER_TERM, "Current Raft term");
    describe_gauge!(CLUSTER_LEADER, "Node id of the current leader, 0 when none is known");
    metrics::describe_histogram!(CLUSTER_APPLY_LAG, "Time from a batch's proposal on the leader to its apply here");
    describe_gauge!(CLUSTER_LAG_ENTRIES, "Log entries a follower is behind the leader, by peer (leader only)");
    describe_gauge!(VIP_HELD, "1 while this node holds the VIP");
    describe_counter!(VIP_CHANGES, "VIP acquisitions and releases, by action");
    describe_counter!(VIP_GARP_SENT, "Gratuitous ARP frames sent for the VIP");
    describe_counter!(AWS_CALLS, "EC2 API attempts, by operation and outcome (ok, retried, failed)");
    describe_counter!(AWS_CALL_ERRORS, "EC2 API errors, by operation and error code (throttling, 5xx, timeout ...)");
    metrics::describe_histogram!(AWS_CALL_SECONDS, "Duration of one EC2 API attempt, by operation");
    metrics::describe_histogram!(
        FAILOVER_STEP_SECONDS,
        "Duration of a failover step (fence, move, attach, mount, hook)"
    );
    describe_counter!(FAILOVER_STEP_FAILURES, "Failover steps that failed and will be retried, by resource and step");
    describe_counter!(FAILOVER_FENCED, "Moves refused because the resource carries a newer Raft term, by resource");
    describe_gauge!(VOLUME_HELD, "1 while the data volume is attached and mounted here and its hook has run");
    describe_counter!(CALLS, "Calls established through this node (dialogs confirmed by a 2xx to INVITE)");
    metrics::describe_histogram!(PROBE_RTT, "Round trip of answered OPTIONS probes, by backend");
    describe_counter!(FAILOVER_EVENTS, "Failover events seen by this node, by kind (vip-acquired, leader-changed ...)");
    metrics::describe_histogram!(FAILOVER_DURATION, "How long a failover event took (VIP gap, switchover), by kind");
    describe_gauge!(BACKEND_DRAINED, "1 while a backend is drained (no new calls), by backend");
    describe_counter!(ADMIN_UNAUTHORIZED, "Admin API requests refused for a missing or wrong bearer token");
    describe_counter!(ADMIN_CONNS_REFUSED, "Admin connections closed at accept: admin.max_connections were open");
    describe_counter!(
        ADMIN_CONNS_CLOSED,
        "Admin connections closed by us, by reason (header_timeout, idle: admin.header_timeout, admin.idle_timeout)"
    );
    describe_counter!(
        FINAL_RESPONSES,
        "Final responses sent toward the requester, by code and origin (local: sipfront's own; relayed)"
    );
    describe_counter!(NO_BACKEND, "Requests answered 503 at once because no backend is up, by method");
    describe_counter!(LOOPS, "Requests refused 482 because they came back to sipfront unchanged (a routing loop)");
    describe_counter!(
        RELAY_REFUSED,
        "Requests refused because their next hop is no backend, no registered phone and not in routing.relay_allow, \
         by reason (route, unknown_dialog)"
    );
    describe_counter!(
        RESPONSES_DROPPED,
        "Responses dropped instead of relayed: not through us, or a branch we did not make, by reason"
    );
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_counter!(
        GUARD_DROPPED,
        "Messages dropped unanswered by the guard, by reason (banned, rate, register_rate, initial_rate, user_agent)"
    );
    describe_counter!(GUARD_BANS, "Source addresses banned, by reason (rate, user_agent, auth)");
    describe_counter!(
        GUARD_AUTH_FAILURES,
        "Credentials the PBX refused to a stranger (401/407 to a request with credentials, 403, 404 to REGISTER)"
    );
    describe_gauge!(GUARD_BANS_ACTIVE, "Source addresses banned now (replicated bans included)");
    describe_gauge!(GUARD_SOURCES, "Source addresses the guard tracks rates for (security.max_sources at most)");
    describe_counter!(
        GUARD_EVICTED,
        "Guard entries forgotten early because a table was full, by table (sources, bans)"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn code_labels_are_bounded() {
        assert_eq!(super::code_label(482), "482");
        assert_eq!(super::code_label(299), "2xx");
        assert_eq!(super::code_label(499), "4xx");
        assert_eq!(super::code_label(999), "6xx");
    }

    /// Every series the shipped Grafana dashboard queries is one sipfront exports (a renamed metric would leave a
    /// panel silently empty).
    #[test]
    fn the_grafana_dashboard_queries_only_metrics_we_export() {
        let source = include_str!("metrics.rs");
        let dashboard = include_str!("../config/grafana-sipfront.json");
        let mut checked = 0;
        for (at, _) in dashboard.match_indices("sipfront_") {
            let name: String = dashboard[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            let base = ["_bucket", "_sum", "_count"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(
                source.contains(&format!("\"{base}\"")),
                "the dashboard queries {name}, which sipfront does not export"
            );
            checked += 1;
        }
        assert!(checked > 30, "only {checked} queries found");
    }
}
