//! Heap allocations on the hot path, counted by a global allocator: parsing the ~1.1 kB INVITE and reading every
//! header routing needs allocates nothing; the builders allocate only their output.
//!
//! Counting is per thread (the test harness runs tests in parallel) and only between `start()` and `stop()`; the
//! input `Bytes` is created before counting starts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use sipfront::sip::{HeaderName, Message, ResponseBuilder};

#[path = "../benches/common/mod.rs"]
mod common;

struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn bump() {
    // `try_with`: thread-locals may already be gone while a thread shuts down.
    let _ = ON.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (alloc, alloc_zeroed, realloc) made by `f` on this thread.
fn count<R>(f: impl FnOnce() -> R) -> (R, usize) {
    COUNT.with(|c| c.set(0));
    ON.with(|on| on.set(true));
    let r = f();
    ON.with(|on| on.set(false));
    (r, COUNT.with(|c| c.get()))
}

#[test]
fn counter_sees_allocations() {
    let (v, n) = count(|| vec![1u8; 64]);
    assert_eq!(v.len(), 64);
    assert_eq!(n, 1);
}

#[test]
fn parse_invite_and_read_routing_headers_allocates_nothing() {
    let buf = Bytes::copy_from_slice(common::INVITE_1K);
    let ((msg, routing, routes), n) = count(move || {
        let msg = Message::parse(buf).unwrap();
        let routing = common::read_routing(&msg);
        let routes = msg.header_values(HeaderName::Route).count()
            + msg.header_values(HeaderName::RecordRoute).count()
            + msg.header_values(HeaderName::Via).count();
        (msg, routing, routes)
    });
    assert_eq!(n, 0, "Message::parse + routing reads allocated");
    assert!(routing.is_some());
    assert_eq!(routes, 2 + 1 + 3);
    assert_eq!(msg.top_via().unwrap().branch(), Some(&b"z9hG4bK-524287-1---a8f2c1d9e4b7"[..]));
    // Dropping the message frees nothing it allocated either (the buffer is the caller's).
    let ((), n) = count(move || drop(msg));
    assert_eq!(n, 0);
}

#[test]
fn parse_response_allocates_nothing() {
    let buf = Bytes::copy_from_slice(common::OK_200);
    let (routing, n) = count(move || common::read_routing(&Message::parse(buf).unwrap()));
    assert_eq!(n, 0);
    assert!(routing.is_some());
}

#[test]
fn rejecting_a_message_allocates_nothing() {
    let mut raw = common::INVITE_1K.to_vec();
    raw.truncate(raw.len() - 10); // body shorter than Content-Length
    let buf = Bytes::from(raw);
    let (r, n) = count(move || Message::parse(buf).map(|_| ()));
    assert!(r.is_err());
    assert_eq!(n, 0);
}

/// `forward()` writes into one `BytesMut` sized up front; `freeze()` then turns that Vec-backed buffer into `Bytes`,
/// and because its length is below its capacity `bytes` boxes a small shared header for it: two allocations, the
/// buffer and that header (bytes 1.12, `From<Vec<u8>> for Bytes`). No reallocation: the buffer never grows.
const BUILDER_ALLOCS: usize = 2;

#[test]
fn forward_allocates_only_its_output() {
    let msg = Message::parse(Bytes::copy_from_slice(common::INVITE_1K)).unwrap();
    let rr = [common::OUR_RR];
    let edit = common::forward_edit(&rr, common::client_addr());
    let (out, n) = count(|| msg.forward(&edit));
    assert_eq!(n, BUILDER_ALLOCS, "forward() allocations");
    // The output is what the proxy sends.
    let fwd = Message::parse(out).unwrap();
    assert_eq!(fwd.top_via().unwrap().raw, common::OUR_VIA);
    // The worst case the proxy builds: two Record-Routes and an IPv6 source still fit the first buffer.
    let rr2 = [&b"<sip:[2001:db8::53]:5061;transport=tcp;ft=1234567890abcdef;lr>"[..], common::OUR_RR];
    let edit = common::forward_edit(&rr2, "[2001:db8:ffff:ffff:ffff:ffff:ffff:fffe]:65535".parse().unwrap());
    let (_, n) = count(|| msg.forward(&edit));
    assert_eq!(n, BUILDER_ALLOCS, "forward() with two Record-Routes and an IPv6 source");
}

#[test]
fn strip_top_via_allocates_only_its_output() {
    let msg = Message::parse(Bytes::copy_from_slice(common::OK_200)).unwrap();
    let (out, n) = count(|| msg.strip_top_via());
    assert_eq!(n, BUILDER_ALLOCS, "strip_top_via() allocations");
    assert_eq!(Message::parse(out).unwrap().header_values(HeaderName::Via).count(), 3);
}

#[test]
fn response_builder_allocations() {
    let msg = Message::parse(Bytes::copy_from_slice(common::INVITE_1K)).unwrap();
    let (out, n) = count(|| ResponseBuilder::new(&msg, 100, "Trying").source(common::client_addr()).build());
    // No extra headers: the builder's Vec stays empty, so only the output buffer and its shared header.
    assert_eq!(n, BUILDER_ALLOCS, "ResponseBuilder::build() allocations");
    assert_eq!(Message::parse(out).unwrap().status(), Some(100));
}
