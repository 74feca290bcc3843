//! PROXY protocol headers from arbitrary bytes: `proxy::read_header` never panics, never
//! reads past its bounds (a v1 line of at most 107 bytes, a v2 header of at most 16 + 1024),
//! and on success has consumed exactly one header; `parse_v1`/`parse_v2` agree with it.
//! The input stands for what an unauthenticated peer sends first on a `proxy_protocol`
//! listener.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::listener::proxy::{self, V1_MAX, V2_MAX_BLOCK};
use std::future::Future;
use std::task::{Context, Poll, Waker};

fuzz_target!(|data: &[u8]| {
    let mut cursor = std::io::Cursor::new(data);
    let result = {
        let fut = std::pin::pin!(proxy::read_header(&mut cursor));
        // A cursor never waits: the read finishes on the first poll.
        match fut.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("read_header waited on an in-memory reader"),
        }
    };
    let used = cursor.position() as usize;
    assert!(used <= data.len());
    assert!(used <= (16 + V2_MAX_BLOCK).max(V1_MAX), "read {used} bytes");
    if let Ok(addr) = result {
        if data.starts_with(&proxy::V2_SIGNATURE) {
            assert_eq!(proxy::parse_v2(data[12], data[13], &data[16..used]), Ok(addr));
        } else {
            assert!(used <= V1_MAX);
            assert!(data[..used].ends_with(b"\r\n"));
            assert_eq!(proxy::parse_v1(&data[..used]), Ok(addr));
        }
    }
    // The parsers alone, on anything.
    let _ = proxy::parse_v1(data);
    if data.len() >= 2 {
        let _ = proxy::parse_v2(data[0], data[1], &data[2..]);
    }
});
