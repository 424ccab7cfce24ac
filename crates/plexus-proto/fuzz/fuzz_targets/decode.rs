//! Feeds arbitrary bytes to the frame decoder in two chunks and checks that it never
//! panics, that it only ever takes whole frames off the front of the buffer, and that every
//! frame it returns re-encodes to the bytes it came from and decodes back to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use plexus_proto::codec::{encode, Decoder, LEN_FIELD};

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (first, second) = data.split_at(split);
    let decoder = Decoder::new(LIMIT);
    let mut buf = BytesMut::new();

    for chunk in [first, second] {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(buf.len() < before.len(), "a frame consumed nothing");
                    let consumed = before.len() - buf.len();
                    assert!(consumed > LEN_FIELD);
                    assert_eq!(&buf[..], &before[consumed..], "not taken off the front");

                    let mut re = BytesMut::new();
                    encode(&frame, &mut re);
                    assert_eq!(&re[..], &before[..consumed], "re-encoding differs");
                    let again = decoder.decode(&mut re);
                    assert_eq!(again, Ok(Some(frame)), "re-decoding differs");
                    assert!(re.is_empty(), "re-decoding left bytes");
                }
                Ok(None) => {
                    assert_eq!(&buf[..], &before[..], "Ok(None) changed the buffer");
                    break;
                }
                // The link would close here; nothing more to feed.
                Err(_) => return,
            }
        }
    }
});
