//! sipfront: a stateful SIP front door for a three-node PBX cluster.
//!
//! ```text
//!  phones ─UDP/TCP/TLS► transport ──► proxy ──────────────► transaction ──► transport ──► PBX backends
//!  WebRTC ─WS/WSS─────► (sockets,     (classify: local      (server + client     (same sockets:
//!                       framing)      answer, stateless     state machines,      replies leave from
//!                         ▲           ACK/response relay,   timers, serial       the advertised address)
//!                         │           or new transaction)   failover)
//!                         └──────────── responses, routed back by the Via stack ◄──────────┘
//!  sip/           pure parsing and building, used by every layer
//!  config/        the TOML file, validated once
//!  guard/         flood and scanner protection: per-source rate limits, bans (replicated), User-Agent rules;
//!                 every message passes it before the proxy parses it
//!  routing/       the backend list and the policy that picks one
//!  health/        OPTIONS probes and each backend's up/down state; flips are events routing subscribes to
//!  dialog/        the dialog table: every call's current home backend, re-homed when its PBX fails
//!  registration/  registered phones' flows (Path), so the PBX reaches phones behind NAT or on TCP
//!  token.rs       the HMAC'd tokens in our Record-Route and Path
//!  memory.rs      handing memory back after a load: the tables' spare capacity, the allocator's free pages
//!  cluster/       Raft among the three nodes: replicated tables, leader = active node = VIP holder
//!  vip/           the cluster's virtual IP on this host (Linux): a process-owned TUN device, gratuitous ARP
//!  failover/      what follows the active role: the VIP mechanism (linux, aws), the PBX data volume, hooks
//!  admin/         the HTTP admin surface: metrics, JSON API, actions, the dashboard
//!  demo/          `sipfront demo`: three nodes, two test PBXs and a call generator on loopback, no root
//! ```
//!
//! A request arrives on a [`transport`] listener, is parsed lazily by [`sip::Message::parse`], and handed to
//! [`proxy::Proxy::handle`]. The proxy either answers it itself (OPTIONS to us, errors), relays it statelessly
//! (ACK for a 2xx, stray responses) or gives it to a [`transaction`] task, which forwards it to the backend picked
//! by [`routing`] and relays the answers back.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod dialog;
pub mod error;
pub mod events;
pub mod failover;
pub mod guard;
pub mod health;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod registration;
pub mod routing;
pub mod server;
pub mod sip;
pub mod token;
pub mod transaction;
pub mod transport;
pub mod vip;
