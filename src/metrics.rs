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
pub const BUILD_INFO: &str = "sipfront_build_info";

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
    describe_gauge!(TCP_CONNECTIONS, "Open TCP connections");
    describe_gauge!(BUILD_INFO, "Always 1; labels carry the version");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}
