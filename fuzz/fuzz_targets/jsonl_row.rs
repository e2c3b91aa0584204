//! One JSONL line, as a preference pair, a row to score and a policy sample.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rewardkit::fuzzing::jsonl_line(data);
});
