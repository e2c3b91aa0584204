//! A chat template's Jinja source, compiled and rendered (it is untrusted checkpoint input).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rewardkit::fuzzing::chat_template(data);
});
