//! Files from outside: datasets ([`data`]: JSONL preference pairs, rows to score, policy
//! samples), chat templates ([`chat`]: conversations rendered as the model's template says) and llama.cpp models ([`gguf`]). Hugging Face checkpoints are the model's own
//! format and live in `model::checkpoint`.

pub mod chat;
pub mod data;
pub mod gguf;
