//! A GGUF file: header, metadata, tensor table, tokenizer and config conversion.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rewardkit::fuzzing::gguf_file(data);
});
