//! [`SharedModel`]: one reward model in memory, shared by every thread and every call, with
//! its tokenizer ([`tokenize`]) and its batch planner ([`batch`]).
//!
//! Weights are loaded once. Scoring takes a read lock, so any number of threads score at
//! once; an update (training step) takes the write lock for the moment it changes weights, so
//! a scorer sees the weights before an update or after it, never a mix. All tensor work runs
//! on the handle's own thread pool, so concurrent callers share `n_threads` cores instead of
//! each fanning out over the whole machine.

pub mod batch;
pub mod tokenize;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::handle::batch::{score_sequences, BatchOptions};
use crate::handle::tokenize::{RewardTokenizer, TextOptions};
use crate::io::chat::{ChatFiles, ChatFormat, ChatTemplate, ChatTemplateChoice};
use crate::model::checkpoint::TOKENIZER_FILE;
use crate::model::{ComputeDType, HeadSource, LoadOptions, Normalize, RewardModel, RewardStats};

/// Everything that configures a [`SharedModel`].
#[derive(Debug, Clone, Default)]
pub struct SharedModelOptions {
    pub load: LoadOptions,
    pub text: TextOptions,
    pub batch: BatchOptions,
    /// Worker threads for tensor work; 0 = the cores available to this process.
    pub n_threads: usize,
    /// What renders conversations (lists of turns) to text.
    pub chat_template: ChatTemplateChoice,
}

impl SharedModelOptions {
    /// Checks every size against `limits` before a thread is started or a byte is read.
    pub fn validate(&self) -> Result<()> {
        use crate::limits::{
            capped, MAX_BATCH_TOKEN_BUDGET, MAX_ITEMS_PER_CALL, MAX_SEQUENCE_TOKENS, MAX_THREADS,
        };
        capped(self.n_threads, MAX_THREADS, "n_threads")?;
        capped(self.load.max_length, MAX_SEQUENCE_TOKENS, "max_length")?;
        capped(self.batch.max_batch_size, MAX_ITEMS_PER_CALL, "max_batch_size")?;
        if self.batch.token_budget == 0 {
            return Err(Error::invalid("batch token budget must be > 0"));
        }
        capped(self.batch.token_budget, MAX_BATCH_TOKEN_BUDGET, "batch token budget")?;
        Ok(())
    }
}

/// What a caller may want to know about a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub architecture: &'static str,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub max_length: usize,
    pub num_parameters: usize,
    pub dtype: ComputeDType,
    pub device: String,
    /// The checkpoint had no reward head; a fresh one was initialised.
    pub head_is_fresh: bool,
    pub has_tokenizer: bool,
    pub n_threads: usize,
    /// Rows of the reward head (M for a shared-backbone ensemble).
    pub num_heads: usize,
}

pub struct SharedModel {
    model: RwLock<RewardModel>,
    /// Set while a `Trainer` owns the right to update the weights: one writer at a time.
    trainer_attached: AtomicBool,
    options: SharedModelOptions,
    tokenizer: Option<RewardTokenizer>,
    text: TextOptions,
    batch: BatchOptions,
    pool: rayon::ThreadPool,
    device_name: String,
    /// Set when scores are served normalised: `(r - mean) / std`.
    served_stats: Option<RewardStats>,
    /// How conversations become text, or why they cannot (a broken template fails the calls
    /// that need it, not the load).
    chat: std::result::Result<ChatFormat, Error>,
    /// tokenizer_config.json and chat_template.jinja as loaded, saved with every checkpoint.
    chat_files: ChatFiles,
    /// The model whose weights this one shares ([`SharedModel::with_adapter`]): read-locked
    /// with this one, so that an update of the base is never seen half done.
    base: Option<Arc<SharedModel>>,
}

/// Shared access to a model ([`SharedModel::read`]): its read lock and, for a model over
/// another's weights, the base's too.
pub struct ModelRead<'a> {
    own: RwLockReadGuard<'a, RewardModel>,
    _base: Option<RwLockReadGuard<'a, RewardModel>>,
}

impl std::ops::Deref for ModelRead<'_> {
    type Target = RewardModel;
    fn deref(&self) -> &RewardModel {
        &self.own
    }
}

impl SharedModel {
    /// Loads `dir` (config.json, weights, and tokenizer.json if present).
    pub fn load(dir: &Path, opts: &SharedModelOptions) -> Result<Self> {
        opts.validate()?;
        let pool = build_pool(opts.n_threads)?;
        let model = pool.install(|| RewardModel::load(dir, &opts.load))?;
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let tokenizer = if tokenizer_path.exists() {
            Some(RewardTokenizer::from_file(
                &tokenizer_path,
                model.config().eos_token_ids.first().copied(),
            )?)
        } else {
            None
        };
        let chat_files = ChatFiles::read(dir)?;
        let template = match &opts.chat_template {
            ChatTemplateChoice::Hh => Ok(None),
            ChatTemplateChoice::Model => ChatTemplate::from_files(dir, &chat_files, None),
            // A template the caller chose fails the load if it does not compile.
            ChatTemplateChoice::Source(s) => {
                Ok(ChatTemplate::from_files(dir, &chat_files, Some(s))?)
            }
        };
        let chat =
            template.map(|t| t.map_or(ChatFormat::Hh, |t| ChatFormat::Template(Arc::new(t))));
        let mut shared = Self::assemble(model, tokenizer, opts, pool)?;
        shared.chat = chat;
        shared.chat_files = chat_files;
        Ok(shared)
    }

    /// Wraps a model already in memory.
    pub fn from_model(
        model: RewardModel,
        tokenizer: Option<RewardTokenizer>,
        opts: &SharedModelOptions,
    ) -> Result<Self> {
        opts.validate()?;
        let mut shared = Self::assemble(model, tokenizer, opts, build_pool(opts.n_threads)?)?;
        if let ChatTemplateChoice::Source(s) = &opts.chat_template {
            let t = ChatTemplate::new(s, Default::default())?;
            shared.chat = Ok(ChatFormat::Template(Arc::new(t)));
        }
        Ok(shared)
    }

    fn assemble(
        model: RewardModel,
        tokenizer: Option<RewardTokenizer>,
        opts: &SharedModelOptions,
        pool: rayon::ThreadPool,
    ) -> Result<Self> {
        if opts.text.append_eos && model.config().eos_token_ids.is_empty() {
            return Err(Error::invalid(
                "append_eos is set but the model config has no eos_token_id",
            ));
        }
        let stats = model.config().reward_stats;
        let served_stats = match opts.load.normalize {
            Normalize::Off => None,
            Normalize::AsConfig if !model.config().normalize_reward => None,
            Normalize::AsConfig | Normalize::On => Some(stats.ok_or_else(|| {
                Error::invalid(
                    "normalised rewards need the reward `mean` and `std` in config.json (as \
                     OpenRLHF writes them, or `rewardkit train --write-reward-stats`)",
                )
            })?),
        };
        Ok(SharedModel {
            model: RwLock::new(model),
            trainer_attached: AtomicBool::new(false),
            options: opts.clone(),
            tokenizer,
            text: opts.text.clone(),
            batch: opts.batch,
            pool,
            device_name: opts.load.device.name(),
            served_stats,
            chat: Ok(ChatFormat::Hh),
            chat_files: ChatFiles::default(),
            base: None,
        })
    }

    /// Shared access to the model; fails if an earlier update panicked while holding it.
    /// A model over another's weights holds the base's read lock too (taken first: locks are
    /// always taken base before adapter, so they cannot deadlock).
    pub fn read(&self) -> Result<ModelRead<'_>> {
        let base = self.base.as_ref().map(|b| b.model.read().map_err(|_| poisoned()));
        Ok(ModelRead { _base: base.transpose()?, own: self.model.read().map_err(|_| poisoned())? })
    }

    /// A second handle over this model's weights (shared, not copied) with the PEFT adapter
    /// in `dir` applied unmerged ([`RewardModel::with_adapter`]): many adapters over one
    /// backbone, for an ensemble or for serving several reward models at the cost of one.
    /// Same tokenizer, chat template and options; its own thread pool. An update of this
    /// model's weights is seen by the new handle (its reads lock this model too). The new
    /// handle trains only its LoRA factors and head (a trainer on it must be LoRA).
    pub fn with_adapter(self: &Arc<Self>, dir: &Path) -> Result<SharedModel> {
        let adapter = crate::model::lora::Adapter::load(dir)?;
        let model = self
            .install(|| self.read()?.with_adapter(&adapter))
            .map_err(|e| e.context(format!("adapter {}", dir.display())))?;
        let mut opts = self.options.clone();
        opts.load.adapter = Some(dir.to_path_buf());
        let mut shared =
            Self::assemble(model, self.tokenizer.clone(), &opts, build_pool(opts.n_threads)?)?;
        shared.chat = self.chat.clone();
        shared.chat_files = self.chat_files.clone();
        shared.base = Some(self.clone());
        Ok(shared)
    }

    /// Refuses a trainer that would write weights this handle shares with its base: a
    /// model made by [`Self::with_adapter`] trains its LoRA factors (and its own head) only.
    pub(crate) fn check_trainer(&self, lora: bool) -> Result<()> {
        if self.base.is_some() && !lora {
            return Err(Error::invalid(
                "this model shares its base model's weights (an adapter over it): it trains \
                 only its LoRA factors and head (trainable lora)",
            ));
        }
        Ok(())
    }

    /// Exclusive access, for updates.
    pub fn write(&self) -> Result<RwLockWriteGuard<'_, RewardModel>> {
        self.model.write().map_err(|_| poisoned())
    }

    /// Runs `f` on this handle's thread pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// The options this handle was made with.
    pub fn options(&self) -> &SharedModelOptions {
        &self.options
    }

    /// Claims the right to update weights; fails if another trainer holds it.
    pub(crate) fn attach_trainer(&self) -> Result<()> {
        self.trainer_attached
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|_| {
                Error::invalid("this model already has a trainer; free it before creating another")
            })
    }

    pub(crate) fn detach_trainer(&self) {
        self.trainer_attached.store(false, Ordering::Release);
    }

    /// The tokenizer's files (tokenizer.json, and tokenizer_config.json and
    /// chat_template.jinja when the checkpoint had them), for saving next to a checkpoint.
    pub fn tokenizer_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let mut files = self.chat_files.files();
        if let Some(t) = &self.tokenizer {
            let json = t
                .inner()
                .to_string(false)
                .map_err(|e| Error::new(ErrorKind::Tokenizer, e.to_string()))?;
            files.insert(0, (TOKENIZER_FILE, json.into_bytes()));
        }
        Ok(files)
    }

    /// How this model renders conversations: its chat template, or the HH format.
    pub fn chat_format(&self) -> Result<ChatFormat> {
        self.chat.clone()
    }

    /// The text of a conversation as this model reads it.
    pub fn render_chat(&self, turns: &[Value], add_generation_prompt: bool) -> Result<String> {
        self.chat_format()?.render(turns, add_generation_prompt)
    }

    /// Rewards of whole conversations (each a list of turns), rendered by the chat template.
    pub fn score_chats(&self, chats: &[&[Value]]) -> Result<Vec<f32>> {
        let chat = self.chat_format()?;
        let texts = chats
            .iter()
            .enumerate()
            .map(|(i, turns)| {
                chat.render(turns, false).map_err(|e| e.context(format!("conversations[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        let seqs = self.encode_texts(&texts.iter().map(String::as_str).collect::<Vec<_>>())?;
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        self.score_ids(&refs)
    }

    pub fn tokenizer(&self) -> Result<&RewardTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::invalid("this model has no tokenizer.json: score token ids instead of text")
        })
    }

    pub fn text_options(&self) -> &TextOptions {
        &self.text
    }

    pub fn batch_options(&self) -> &BatchOptions {
        &self.batch
    }

    /// Token ids for each (prompt, response) pair, as they will be scored.
    pub fn encode_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<Vec<u32>>> {
        let tok = self.tokenizer()?;
        let max_len = self.read()?.max_length();
        pairs
            .iter()
            .enumerate()
            .map(|(i, (p, r))| {
                tok.encode_pair(p, r, &self.text, max_len)
                    .map_err(|e| e.context(format!("pair {i}")))
            })
            .collect()
    }

    /// Token ids of whole texts (already joined), as they will be scored.
    pub fn encode_texts(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let tok = self.tokenizer()?;
        let max_len = self.read()?.max_length();
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                tok.encode_text(t, self.text.append_eos, max_len)
                    .map_err(|e| e.context(format!("text {i}")))
            })
            .collect()
    }

    /// Rewards of (prompt, response) pairs, in input order.
    pub fn score_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>> {
        let seqs = self.encode_pairs(pairs)?;
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        self.score_ids(&refs)
    }

    /// Rewards of token-id sequences, in input order.
    pub fn score_ids(&self, seqs: &[&[u32]]) -> Result<Vec<f32>> {
        if seqs.is_empty() {
            return Err(Error::invalid("nothing to score: zero sequences"));
        }
        let model = self.read()?;
        model.validate_sequences(seqs.iter().copied(), "sequence")?;
        let mut rewards = self.install(|| score_sequences(&model, seqs, &self.batch))?;
        self.serve(&mut rewards);
        Ok(rewards)
    }

    /// Rewards as this handle serves them: normalised by the checkpoint's statistics when it
    /// was loaded to (`LoadOptions::normalize`), else unchanged. Training, evaluation and the
    /// vote read raw rewards; scoring calls serve them.
    pub fn serve(&self, rewards: &mut [f32]) {
        if let Some(s) = &self.served_stats {
            s.normalize(rewards);
        }
    }

    /// The statistics scores are normalised with, when they are.
    pub fn served_stats(&self) -> Option<RewardStats> {
        self.served_stats
    }

    /// A 64-bit FNV-1a checksum of every parameter, names and values (bit patterns, in name
    /// order): equal on two handles exactly when their weights are bitwise equal, with
    /// overwhelming probability. One read of the weights.
    pub fn weights_checksum(&self) -> Result<u64> {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed =
            |bytes: &[u8]| bytes.iter().for_each(|&b| h = (h ^ b as u64).wrapping_mul(PRIME));
        let model = self.read()?;
        for (name, var) in model.params().iter() {
            feed(name.as_bytes());
            let values = crate::host::host_f32(var.as_tensor())?;
            for v in values.iter() {
                feed(&v.to_bits().to_le_bytes());
            }
        }
        Ok(h)
    }

    pub fn info(&self) -> Result<ModelInfo> {
        let model = self.read()?;
        let cfg = model.config();
        Ok(ModelInfo {
            architecture: cfg.architecture.as_str(),
            hidden_size: cfg.hidden_size,
            num_layers: cfg.num_hidden_layers,
            num_attention_heads: cfg.num_attention_heads,
            num_key_value_heads: cfg.num_key_value_heads,
            vocab_size: cfg.vocab_size,
            max_length: model.max_length(),
            num_parameters: model.params().num_elements(),
            dtype: model.dtype(),
            device: self.device_name.clone(),
            head_is_fresh: matches!(model.head_source(), HeadSource::Fresh { .. }),
            has_tokenizer: self.tokenizer.is_some(),
            n_threads: self.pool.current_num_threads(),
            num_heads: model.num_heads(),
        })
    }
}

fn poisoned() -> Error {
    Error::new(
        ErrorKind::Poisoned,
        "model handle is unusable: an earlier update panicked while changing its weights",
    )
}

fn build_pool(n_threads: usize) -> Result<rayon::ThreadPool> {
    let n = if n_threads == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        n_threads
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("rewardkit-{i}"))
        .build()
        .map_err(|e| {
            Error::new(ErrorKind::Internal, format!("cannot start {n} worker threads: {e}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tiny::{random_model, TinySpec};

    fn small() -> SharedModel {
        let spec = TinySpec {
            vocab_size: 64,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            max_position_embeddings: 64,
            ..Default::default()
        };
        let opts = SharedModelOptions { n_threads: 1, ..Default::default() };
        SharedModel::from_model(random_model(&spec, 1).unwrap(), None, &opts).unwrap()
    }

    #[test]
    fn a_panic_during_an_update_poisons_the_handle() {
        let shared = small();
        assert!(shared.score_ids(&[&[1, 2, 3]]).is_ok());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = shared.write().unwrap();
            panic!("update failed half-way");
        }));
        assert!(result.is_err());
        let e = shared.score_ids(&[&[1, 2, 3]]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Poisoned);
    }

    #[test]
    fn text_scoring_without_a_tokenizer_is_a_clear_error() {
        let e = small().score_pairs(&[("a", "b")]).unwrap_err();
        assert!(e.message().contains("tokenizer.json"), "{e}");
    }
}
