//! Each node's TOML. [`NodeConfig::cluster`] writes the whole 3-node format (`[cluster]` peers on
//! 10.201.T.1i:7000, `[vip]` on eth0, SIP listening on the VIP, both PBXs); [`NodeConfig::standalone`] the subset
//! today's binary runs (SIP on the node's own address, no `[cluster]` or `[vip]`). Either is then changed key by
//! key ([`NodeConfig::set`]), table by table ([`NodeConfig::without`], [`NodeConfig::table`]) or with raw TOML
//! ([`NodeConfig::raw`]) before [`NodeConfig::toml`] renders it. Values are TOML text: `"\"500ms\""`, `"3"`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use super::topology::Lab;
use super::{CLUSTER_PORT, SIP_PORT, VIP_OCTET};

/// One `[table]` or `[[array-table]]` entry, its keys in order.
#[derive(Debug, Clone)]
struct Table {
    name: String,
    array: bool,
    entries: Vec<(String, String)>,
}

/// A node's config, table by table; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    tables: Vec<Table>,
    /// Raw TOML written after the tables.
    raw: Vec<String>,
}

/// A TOML basic string holding `s`.
pub fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A Raft timing for the lab's nodes: `default`, or the environment's `var` (to measure other settings with the
/// same tests, e.g. `SIPFRONT_LAB_ELECTION_TIMEOUT=100ms SIPFRONT_LAB_HEARTBEAT=25ms`).
fn lab_timing(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

impl NodeConfig {
    /// Node i of the 3-node cluster, as the brief of the cluster code gives it: SIP (UDP and TCP) on the VIP,
    /// Raft on the node's own address, election timeout 300 ms, heartbeat 60 ms, the lab's `cluster.key`, a
    /// data dir per node, the VIP on eth0 with 3 gratuitous ARPs, probes every 200 ms (timeout 300 ms, down
    /// after 3, up after 2), pbx1 preferred over pbx2 (UDP).
    pub fn cluster(lab: &Lab, i: u8) -> NodeConfig {
        NodeConfig::cluster_in(lab.tag, &lab.dir, i)
    }

    /// [`NodeConfig::cluster`] for a lab tagged `tag` whose temp dir is `dir` (no lab needed: for checks of
    /// the text itself).
    pub fn cluster_in(tag: u8, dir: &Path, i: u8) -> NodeConfig {
        let ip = |last: u8| Ipv4Addr::new(10, 201, tag, last);
        let vip = ip(VIP_OCTET);
        let peers: Vec<String> =
            (1..=3).map(|k| format!("{{ id = {k}, addr = \"{}:{CLUSTER_PORT}\" }}", ip(10 + k))).collect();
        let file = |f: &str| quoted(&dir.join(f).display().to_string());
        NodeConfig::default()
            .table("node", &[("id", &i.to_string()), ("name", &quoted(&format!("n{i}")))])
            .table(
                "sip",
                &[
                    ("listen", &format!("[\"udp:{vip}:{SIP_PORT}\", \"tcp:{vip}:{SIP_PORT}\"]")),
                    ("advertise", &quoted(&vip.to_string())),
                ],
            )
            .table(
                "cluster",
                &[
                    ("listen", &quoted(&format!("{}:{CLUSTER_PORT}", ip(10 + i)))),
                    ("peers", &format!("[ {} ]", peers.join(", "))),
                    ("secret_file", &file("cluster.key")),
                    ("election_timeout", &quoted(&lab_timing("SIPFRONT_LAB_ELECTION_TIMEOUT", "300ms"))),
                    ("heartbeat", &quoted(&lab_timing("SIPFRONT_LAB_HEARTBEAT", "60ms"))),
                    ("data_dir", &file(&format!("n{i}-data"))),
                ],
            )
            .table(
                "vip",
                &[
                    ("mode", "\"linux\""),
                    ("address", &quoted(&format!("{vip}/24"))),
                    ("interface", "\"eth0\""),
                    ("garp_count", "3"),
                ],
            )
            .with_health_and_backends(tag)
    }

    /// Node i alone, as today's binary runs it: SIP (UDP and TCP) on the node's own address 10.201.T.1i:5060,
    /// the same probes and PBXs as [`NodeConfig::cluster`], no `[cluster]` or `[vip]`.
    pub fn standalone(lab: &Lab, i: u8) -> NodeConfig {
        NodeConfig::standalone_in(lab.tag, i)
    }

    /// [`NodeConfig::standalone`] for a lab tagged `tag`.
    pub fn standalone_in(tag: u8, i: u8) -> NodeConfig {
        let ip = Ipv4Addr::new(10, 201, tag, 10 + i);
        NodeConfig::default()
            .table("node", &[("id", &i.to_string()), ("name", &quoted(&format!("n{i}")))])
            .table(
                "sip",
                &[
                    ("listen", &format!("[\"udp:{ip}:{SIP_PORT}\", \"tcp:{ip}:{SIP_PORT}\"]")),
                    ("advertise", &quoted(&ip.to_string())),
                ],
            )
            .with_health_and_backends(tag)
    }

    fn with_health_and_backends(self, tag: u8) -> NodeConfig {
        let pbx = |j: u8| format!("sip:{}:{SIP_PORT};transport=udp", Ipv4Addr::new(10, 201, tag, 20 + j));
        self.table(
            "health",
            &[("interval", "\"200ms\""), ("timeout", "\"300ms\""), ("down_after", "3"), ("up_after", "2")],
        )
        .backend("pbx1", &pbx(1), 1)
        .backend("pbx2", &pbx(2), 2)
    }

    /// Add a `[name]` table with these keys (after the tables already there).
    pub fn table(mut self, name: &str, entries: &[(&str, &str)]) -> NodeConfig {
        let entries = entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.tables.push(Table { name: name.into(), array: false, entries });
        self
    }

    /// Add a `[[backend]]` (name, URI, priority; lower is preferred).
    pub fn backend(mut self, name: &str, uri: &str, priority: u32) -> NodeConfig {
        let entries = vec![
            ("name".to_string(), quoted(name)),
            ("uri".to_string(), quoted(uri)),
            ("priority".to_string(), priority.to_string()),
        ];
        self.tables.push(Table { name: "backend".into(), array: true, entries });
        self
    }

    /// Set `key = value` in `[table]` (the table is added if missing; for `backend`, the first one: see
    /// [`NodeConfig::set_backend`]). `value` is TOML text.
    pub fn set(mut self, table: &str, key: &str, value: &str) -> NodeConfig {
        let t = match self.tables.iter().position(|t| t.name == table) {
            Some(i) => &mut self.tables[i],
            None => {
                self.tables.push(Table { name: table.into(), array: false, entries: Vec::new() });
                self.tables.last_mut().expect("just pushed")
            }
        };
        match t.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value.into(),
            None => t.entries.push((key.into(), value.into())),
        }
        self
    }

    /// Set `key = value` in the `[[backend]]` named `backend`.
    pub fn set_backend(mut self, backend: &str, key: &str, value: &str) -> NodeConfig {
        let name = quoted(backend);
        let t = self
            .tables
            .iter_mut()
            .find(|t| t.array && t.name == "backend" && t.entries.iter().any(|(k, v)| k == "name" && *v == name))
            .unwrap_or_else(|| panic!("no backend {backend}"));
        match t.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value.into(),
            None => t.entries.push((key.into(), value.into())),
        }
        self
    }

    /// Remove `key` from `[table]`.
    pub fn unset(mut self, table: &str, key: &str) -> NodeConfig {
        for t in self.tables.iter_mut().filter(|t| t.name == table) {
            t.entries.retain(|(k, _)| k != key);
        }
        self
    }

    /// Remove every `[table]` / `[[table]]` of that name (`without("backend")` drops all the PBXs).
    pub fn without(mut self, table: &str) -> NodeConfig {
        self.tables.retain(|t| t.name != table);
        self
    }

    /// Raw TOML (whole tables), written after the rest.
    pub fn raw(mut self, toml: &str) -> NodeConfig {
        self.raw.push(toml.into());
        self
    }

    /// The file's text.
    pub fn toml(&self) -> String {
        let mut s = String::new();
        for t in &self.tables {
            let _ = if t.array { writeln!(s, "[[{}]]", t.name) } else { writeln!(s, "[{}]", t.name) };
            for (k, v) in &t.entries {
                let _ = writeln!(s, "{k} = {v}");
            }
            s.push('\n');
        }
        for r in &self.raw {
            let _ = writeln!(s, "{r}\n");
        }
        s
    }
}
