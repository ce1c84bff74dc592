//! Code both real-binary harnesses use: `tests/common` (everything on loopback) and `tests/netns` (a cluster in
//! network namespaces). Each includes this directory as its own `shared` module
//! (`#[path = "../shared/mod.rs"] mod shared;`), so a test binary that uses both has two copies of these types;
//! they are not meant to be mixed.
//!
//! ```text
//!   sip_text  SipMsg, SIPp message traces, TCP framing, hand-built requests    pure text
//!   sipp      SippRun: a finished SIPp's exit code, screen totals and trace     reads SIPp's files
//!   proc      Proc: a child in its own process group, SIGKILLed as a group      processes
//!   http      http_exchange: one HTTP/1.1 request; metric_sample from /metrics  sockets
//!   browser   headless Chromium: its flags, and one driven over DevTools        processes, sockets
//!   baresip   Phone: a real baresip SIP phone driven over ctrl_tcp              processes, sockets
//!   kamailio  Kamailio: a real registrar/proxy PBX, its request log             processes, sockets
//!   sippy     Sippy: the Sippy B2BUA as a bridging PBX; Registrar: Kamailio behind  processes, sockets
//!   jssip     Phones: two JsSIP WebRTC phones on a page in Chromium, and the page   processes, sockets
//!   front_tls a CA and sipfront's certificate as PEM files, and its [tls] table    files
//! ```
//!
//! `browser`, `baresip`, `kamailio`, `sippy`, `jssip` and `front_tls` are used by path (`common::browser::Browser`,
//! `common::baresip::Phone`), not re-exported: only the browser and interop tests need them.
#![allow(dead_code)]

pub mod baresip;
pub mod browser;
pub mod front_tls;
pub mod http;
pub mod jssip;
pub mod kamailio;
pub mod proc;
pub mod sip_text;
pub mod sipp;
pub mod sippy;

#[allow(unused_imports)] // only the admin, demo and browser tests talk HTTP
pub use http::*;
pub use proc::*;
pub use sip_text::*;
pub use sipp::*;

/// The binary under test: the one cargo built with these tests, or `SIPFRONT_TEST_BIN` (e.g. a release build).
pub fn sipfront_bin() -> String {
    std::env::var("SIPFRONT_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sipfront").to_string())
}

/// SIPp scenarios.
pub const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp");
