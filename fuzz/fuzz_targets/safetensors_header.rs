//! A safetensors file: header, dtypes, shapes and data ranges, then the checks of a reward
//! model's parameters against a small config.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rewardkit::fuzzing::safetensors_file(data);
});
