//! What `aclshm tune` and `PoolConfig::load` read from files: traces and configuration files. Malformed
//! input is an error naming its line; what parses writes back to text that parses to the same thing.
#![no_main]

use aclshm::PoolConfig;
use aclshm::tune::Trace;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Trace::parse("fuzz", text) {
        Ok(t) => {
            let back = Trace::parse("fuzz", &t.to_text()).unwrap();
            assert_eq!((back.ops, back.kv_token_bytes), (t.ops, t.kv_token_bytes));
        }
        Err(e) => assert!(e.to_string().contains("fuzz"), "an error that names no line: {e}"),
    }
    if let Ok(c) = text.parse::<PoolConfig>() {
        assert_eq!(c.to_string().parse::<PoolConfig>().unwrap(), c);
    }
});
