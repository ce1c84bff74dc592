//! The guard's per-message cost (src/guard/), what every message pays before it is parsed: a backend's (exempt),
//! a known phone's in-dialog request, a new call's INVITE (a second bucket and the User-Agent rules), and a banned
//! source's drop. `elem/s` is messages per second on one core.
//!
//! Run: `cargo bench --bench guard -- --warm-up-time 1 --measurement-time 5`

use std::net::IpAddr;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sipfront::cluster::event::Journal;
use sipfront::config::SecurityConfig;
use sipfront::guard::{BanReason, Guard};
use sipfront::sip::Message;

mod common;

fn guard(c: &mut Criterion) {
    // Limits no benchmark loop reaches: the steady cost of a source within its rate.
    let cfg = SecurityConfig {
        rate: u32::MAX / 2,
        burst: u32::MAX / 2,
        initial_rate: u32::MAX / 2,
        initial_burst: u32::MAX / 2,
        allow: Vec::new(),
        ..SecurityConfig::default()
    };
    let backend: IpAddr = "192.0.2.10".parse().unwrap();
    let g = Guard::new(&cfg, [backend], Journal::default());
    let (phone, banned): (IpAddr, IpAddr) = ("198.51.100.7".parse().unwrap(), "203.0.113.66".parse().unwrap());
    g.ban(banned, BanReason::Rate);
    let invite = Message::parse(Bytes::from_static(common::INVITE_1K)).unwrap();
    assert!(invite.to_tag().is_none(), "an initial INVITE");
    let ok = Message::parse(Bytes::from_static(common::OK_200)).unwrap();

    let mut grp = c.benchmark_group("guard");
    grp.throughput(Throughput::Elements(1));
    grp.bench_function("backend_exempt", |b| b.iter(|| g.admit(black_box(backend))));
    grp.bench_function("known_source_response", |b| b.iter(|| g.admit(black_box(phone))));
    grp.bench_function("known_source_initial_invite", |b| {
        b.iter(|| {
            let a = g.admit(black_box(phone));
            g.admit_request(a, black_box(&invite))
        })
    });
    grp.bench_function("banned_source_drop", |b| b.iter(|| g.admit(black_box(banned))));
    grp.finish();
    assert!(g.admit_request(g.admit(phone), &ok));
}

criterion_group!(benches, guard);
criterion_main!(benches);
