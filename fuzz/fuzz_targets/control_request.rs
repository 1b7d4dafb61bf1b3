//! Fuzzes the control socket's request parser (`multiwan::control::parse_request`), the first
//! code that sees a client's bytes. Invariants: it never panics, and whatever it accepts
//! re-serialises to a request that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = multiwan::control::parse_request(data) {
        let again = serde_json::to_vec(&env).expect("a parsed request serialises");
        assert_eq!(
            multiwan::control::parse_request(&again).as_ref(),
            Ok(&env),
            "round trip of {env:?}"
        );
    }
});
