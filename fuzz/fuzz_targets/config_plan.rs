//! Config bytes → `load` → `assign_ids` → `plan` (offline and with every interface present),
//! asserting the invariants of `multiwan_core::testkit::config_plan`: no panic, ids for every
//! accepted config, names only quoted in the ruleset, valid chain names, determinism.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = multiwan_core::testkit::config_plan(data);
});
