//! trainer_state.json of a checkpoint.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rewardkit::fuzzing::trainer_state(data);
});
