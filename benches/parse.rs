//! Parse throughput for a realistic ~1.1 kB INVITE (SDP body, three Vias, Route, Record-Route, compact and long
//! header forms) and its 200 OK. `elem/s` in criterion's output is messages per second on one core.
//!
//! Run: `cargo bench --bench parse -- --warm-up-time 1 --measurement-time 5`

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sipfront::sip::Message;

mod common;

/// A shared buffer as the transport hands it over (clones are reference-count increments).
fn shared(b: &[u8]) -> Bytes {
    let buf = Bytes::copy_from_slice(b);
    drop(buf.clone()); // promote to the shared representation once, outside the measurement
    buf
}

fn parse(c: &mut Criterion) {
    let invite = shared(common::INVITE_1K);
    let ok = shared(common::OK_200);
    assert!(common::read_routing(&Message::parse(invite.clone()).unwrap()).is_some());
    assert!(common::read_routing(&Message::parse(ok.clone()).unwrap()).is_some());

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("invite_1k", |b| b.iter(|| Message::parse(black_box(invite.clone())).unwrap()));
    g.bench_function("invite_1k+routing_headers", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(invite.clone())).unwrap();
            common::read_routing(&m).unwrap()
        })
    });
    g.bench_function("ok_200+routing_headers", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(ok.clone())).unwrap();
            common::read_routing(&m).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
