//! The integration tests, one binary (the test build links candle once): the C ABI and its
//! hostile-input suite, the bindings and packaging, the CLI, chat templates, the model against transformers, PEFT adapters,
//! training, MetaRM, contrastive terms, GGUF import, crash-safe saves, and the fuzz corpora.
//! The CUDA device tests are tests/gpu.rs, built only with `--features cuda`.

mod common;

mod backprop;
mod bindings;
mod c_examples;
mod chat;
mod cli;
mod contrastive;
mod crash_save;
mod ffi;
mod fuzz_replay;
mod gguf;
mod hostile;
mod meta;
mod model;
mod parallel;
mod parity;
mod peft;
mod train;
