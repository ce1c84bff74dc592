//! The proxy's per-message work on the request and response paths:
//! - request: parse the ~1.1 kB INVITE, then `forward()` it with our Via, one Record-Route, our own Route popped,
//!   received/rport filled in and Max-Forwards decremented;
//! - response: parse the 200 OK, then `strip_top_via()`.
//!
//! Run: `cargo bench --bench proxy_rewrite -- --warm-up-time 1 --measurement-time 5`

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sipfront::sip::{HeaderName, Message};

mod common;

fn shared(b: &[u8]) -> Bytes {
    let buf = Bytes::copy_from_slice(b);
    drop(buf.clone());
    buf
}

fn rewrite(c: &mut Criterion) {
    let invite = shared(common::INVITE_1K);
    let ok = shared(common::OK_200);
    let rr = [common::OUR_RR];
    let edit = common::forward_edit(&rr, common::client_addr());

    // What the benches measure is checked once.
    let fwd = Message::parse(Message::parse(invite.clone()).unwrap().forward(&edit)).unwrap();
    assert_eq!(fwd.top_via().unwrap().raw, common::OUR_VIA);
    assert_eq!(fwd.header_values(HeaderName::Route).count(), 1);
    assert_eq!(fwd.max_forwards(), Some(68));
    let up = Message::parse(Message::parse(ok.clone()).unwrap().strip_top_via()).unwrap();
    assert_eq!(up.header_values(HeaderName::Via).count(), 3);

    let mut g = c.benchmark_group("proxy_rewrite");
    g.throughput(Throughput::Elements(1));
    g.bench_function("invite_1k_parse+forward", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(invite.clone())).unwrap();
            m.forward(black_box(&edit))
        })
    });
    let parsed = Message::parse(invite.clone()).unwrap();
    g.bench_function("invite_1k_forward_only", |b| b.iter(|| black_box(&parsed).forward(black_box(&edit))));
    g.bench_function("ok_200_parse+strip_top_via", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(ok.clone())).unwrap();
            m.strip_top_via()
        })
    });
    g.finish();
}

criterion_group!(benches, rewrite);
criterion_main!(benches);
