//! Every text and byte form a process receives from another: allocation descriptors (bytes and hex),
//! share, KV and IPC-memory descriptors, KV block references, IPC keys. Malformed input is a typed
//! error; what parses re-encodes to the same thing.
#![no_main]

use aclshm::raw::IpcKey;
use aclshm::{AllocDesc, IpcMemDesc, KvBlock, KvDesc, ShareDesc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = AllocDesc::from_bytes(data) {
        assert_eq!(d.to_bytes().as_slice(), data);
        assert_eq!(AllocDesc::from_hex(&d.to_hex()).unwrap(), d);
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = AllocDesc::from_hex(text) {
        assert_eq!(AllocDesc::from_bytes(&d.to_bytes()).unwrap(), d);
    }
    if let Ok(d) = text.parse::<ShareDesc>() {
        assert_eq!(d.to_string().parse::<ShareDesc>().unwrap(), d);
    }
    if let Ok(d) = text.parse::<KvDesc>() {
        assert_eq!(d.to_string().parse::<KvDesc>().unwrap(), d);
    }
    if let Ok(b) = text.parse::<KvBlock>() {
        assert_eq!(b.to_string().parse::<KvBlock>().unwrap(), b);
    }
    if let Ok(d) = text.parse::<IpcMemDesc>() {
        assert_eq!(d.to_string().parse::<IpcMemDesc>().unwrap(), d);
    }
    if let Ok(k) = text.parse::<IpcKey>() {
        assert_eq!(k.as_str(), text);
    }
});
