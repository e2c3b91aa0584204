//! tokenizer.json: loading, then encoding texts the way scoring does (left truncation).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rewardkit::fuzzing::tokenizer_json(data);
});
