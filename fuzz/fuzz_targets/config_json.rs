//! config.json: parsing and validation never panic, and a config that passes has every
//! dimension within the caps (so the shapes derived from it are bounded).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rewardkit::fuzzing::config_json(data);
});
