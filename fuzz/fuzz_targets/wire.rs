//! The rendezvous protocol as the owner reads it: arbitrary bytes, arriving in arbitrary pieces. Malformed
//! frames are typed errors, never a panic or an allocation without bound; what decodes re-encodes to the
//! same bytes.
#![no_main]

use aclshm::share::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(m.encode().unwrap(), data);
    }
    // The same bytes as a stream, cut where the first byte says.
    let step = 1 + data.first().map_or(0, |&b| b as usize % 7);
    let mut buf = Vec::new();
    for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match Message::take(&mut buf) {
                Ok(Some(m)) => {
                    let mut again = Vec::new();
                    m.send(&mut again).unwrap();
                    assert_eq!(Message::take(&mut again).unwrap(), Some(m));
                }
                Ok(None) => break,
                // A broken stream: the owner drops the connection.
                Err(_) => return,
            }
        }
        assert!(buf.len() <= 4 + 4096, "a frame larger than the limit was kept");
    }
});
