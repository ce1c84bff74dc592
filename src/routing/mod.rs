//! The backend list and the policy that orders it for a new request: `active-standby` (preferred first, the rest
//! by priority as fallbacks) or `balanced` (weighted round robin within the best priority, the rest as
//! fallbacks). Health state will feed in here; for now every backend is a candidate and serial failover in the
//! transaction layer skips the ones that fail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{BackendConfig, Policy};
use crate::transport::{Target, Transport};

/// One PBX.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub transport: Transport,
    pub priority: u32,
    pub weight: u32,
    /// The cluster node it runs on, if the config says (`[[backend]] node`).
    pub node: Option<u32>,
}

impl Backend {
    pub fn target(&self) -> Target {
        Target { transport: self.transport, addr: self.addr, conn: None }
    }
}

/// The backends, sorted by priority, and the policy.
#[derive(Debug)]
pub struct Routing {
    backends: Vec<Backend>,
    policy: Policy,
    /// Round-robin position for `balanced`; relaxed ordering is enough, fairness is statistical.
    cursor: AtomicU64,
}

impl Routing {
    pub fn new(configs: &[BackendConfig], policy: Policy) -> Routing {
        let mut backends: Vec<Backend> = configs
            .iter()
            .filter_map(|c| {
                let t = c.target().ok()?; // validated earlier
                Some(Backend {
                    name: c.name.clone(),
                    addr: t.addr,
                    transport: t.transport,
                    priority: c.priority,
                    weight: c.weight,
                    node: c.node,
                })
            })
            .collect();
        backends.sort_by_key(|b| b.priority); // stable: config order breaks ties
        Routing { backends, policy, cursor: AtomicU64::new(0) }
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Index of the backend at this address, if any.
    pub fn backend_at(&self, addr: SocketAddr) -> Option<usize> {
        self.backends.iter().position(|b| b.addr == addr)
    }

    /// Whether a packet source is a backend: its exact address (UDP, or a connection we opened to it). A
    /// connection the PBX opened has an ephemeral port; the proxy then recognises the PBX by its Via instead.
    pub fn is_backend_source(&self, addr: SocketAddr) -> bool {
        self.backend_at(addr).is_some()
    }

    /// The order in which to try backends for a new request: the first is the policy's pick, the rest are
    /// serial fallbacks.
    pub fn plan(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.backends.len()).collect();
        if self.policy == Policy::Balanced && !self.backends.is_empty() {
            let best = self.backends[0].priority;
            let tier: Vec<usize> = order.iter().copied().filter(|&i| self.backends[i].priority == best).collect();
            let total: u64 = tier.iter().map(|&i| u64::from(self.backends[i].weight)).sum();
            let mut pick = self.cursor.fetch_add(1, Ordering::Relaxed) % total.max(1);
            let mut first = tier[0];
            for &i in &tier {
                let w = u64::from(self.backends[i].weight);
                if pick < w {
                    first = i;
                    break;
                }
                pick -= w;
            }
            order.retain(|&i| i != first);
            order.insert(0, first);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str, port: u16, priority: u32, weight: u32) -> BackendConfig {
        BackendConfig { name: name.into(), uri: format!("sip:127.0.0.1:{port}"), priority, weight, node: None }
    }

    #[test]
    fn active_standby_prefers_lowest_priority() {
        let r = Routing::new(&[cfg("b", 2, 2, 1), cfg("a", 1, 1, 1)], Policy::ActiveStandby);
        for _ in 0..3 {
            assert_eq!(r.plan().iter().map(|&i| r.backends()[i].name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        }
    }

    #[test]
    fn balanced_follows_weights_within_best_tier() {
        let r = Routing::new(&[cfg("a", 1, 1, 3), cfg("b", 2, 1, 1), cfg("c", 3, 5, 9)], Policy::Balanced);
        let mut counts = [0; 3];
        for _ in 0..400 {
            let plan = r.plan();
            assert_eq!(plan.len(), 3);
            assert_eq!(*plan.last().unwrap(), 2, "lower tier stays a fallback");
            counts[plan[0]] += 1;
        }
        assert_eq!(counts, [300, 100, 0]);
    }
}
