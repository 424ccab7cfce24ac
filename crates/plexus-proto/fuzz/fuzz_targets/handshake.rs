//! Feeds arbitrary bytes, in chunks of arbitrary sizes, to a node's freshly accepted
//! connection, as an outsider who does not hold the cluster's secret would, and checks that
//! the node never panics, never takes the connection for a proved member, never brings a
//! link up, and keeps answering only with well-formed frames.
#![no_main]

use std::time::Instant;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use plexus_proto::auth::Secret;
use plexus_proto::codec::Decoder;
use plexus_proto::{Config, NodeCore, NodeId, Transmit};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let secret = Secret::new(*b"the fuzzed node's secret").expect("long enough");
    let mut core = NodeCore::new(Config::new(NodeId(0), 7, secret), now).expect("valid");
    let link = core.handle_accepted(now);
    let chunk = data.first().map_or(1, |&b| usize::from(b % 61) + 1);
    let mut buf = BytesMut::new();
    let mut sent = BytesMut::new();
    let mut transmit = Transmit::new();
    let mut chunks = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        core.handle_bytes(link, &mut buf, now);
        assert!(!core.link_is_proved(link), "random bytes proved membership");
        assert_eq!(core.stats().links_up, 0, "random bytes brought a link up");
        core.poll_transmit(link, now, &mut transmit, 1 << 20);
        transmit.take_chunks(&mut chunks);
        for chunk in chunks.drain(..) {
            sent.extend_from_slice(&chunk);
        }
        if !core.link_is_open(link) {
            break;
        }
    }
    let decoder = Decoder::new(1 << 20);
    while !sent.is_empty() {
        match decoder.decode(&mut sent) {
            Ok(Some(_)) => {}
            other => panic!("the node sent bytes that do not decode: {other:?}"),
        }
    }
});
