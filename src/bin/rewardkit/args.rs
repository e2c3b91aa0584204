//! The command line's shared arguments. Every default comes from the library
//! (`TrainConfig::default()`, `SharedModelOptions::default()`, `FitOptions::default()`, the
//! paper's settings in `ContrastiveConfig::paper`); every option parses through the library's
//! own `FromStr`.

use std::path::{Path, PathBuf};

use clap::Args;

use rewardkit::io::data::{
    attach_strengths, read_preferences, split_pairs, OnBadRow, PreferencePair,
    PreferenceReadOptions,
};
use rewardkit::model::lora::LoraSpec;
use rewardkit::model::ComputeDType;
use rewardkit::train::contrastive::{ContrastiveConfig, ContrastiveOverrides};
use rewardkit::train::loss::{FlipRule, MarginMode, MarginRule, NoiseConfig, SmoothRule};
use rewardkit::train::optim::{AdamWConfig, LrSchedule, ScheduleKind};
use rewardkit::train::{FitOptions, TrainConfig, Trainable};
use rewardkit::{
    BatchOptions, ChatTemplateChoice, DeviceSpec, LoadOptions, Result, SharedModel,
    SharedModelOptions, TextOptions,
};

fn train_defaults() -> TrainConfig {
    TrainConfig::default()
}

fn fit_defaults() -> FitOptions {
    FitOptions::default()
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

/// How models run: device, precision, threads, lengths, batching, text joining.
#[derive(Args, Clone)]
pub struct RuntimeArgs {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value_t = LoadOptions::default().device)]
    pub device: DeviceSpec,
    /// Compute dtype: f32, bf16, f16.
    #[arg(long, default_value_t = LoadOptions::default().dtype)]
    pub dtype: ComputeDType,
    /// Worker threads (0 = all available cores).
    #[arg(long, default_value_t = SharedModelOptions::default().n_threads)]
    pub threads: usize,
    /// Longest sequence in tokens (0 = the model's maximum); prompts are cut from the left.
    #[arg(long, default_value_t = LoadOptions::default().max_length)]
    pub max_length: usize,
    /// Tokens per forward pass: real tokens in a packed CPU batch, rows x longest row in a
    /// padded (GPU) one.
    #[arg(long, default_value_t = BatchOptions::default().token_budget)]
    pub batch_tokens: usize,
    /// Sequences per forward pass (0 = limited by --batch-tokens only).
    #[arg(long, default_value_t = BatchOptions::default().max_batch_size)]
    pub batch_size: usize,
    /// Compute every sequence in full, even where sequences begin with the same tokens (by
    /// default, on the CPU, a shared prompt is computed once per batch).
    #[arg(long)]
    pub no_shared_prefixes: bool,
    /// Append EOS after each response (MOSS-RLHF's convention).
    #[arg(long)]
    pub append_eos: bool,
    /// Text inserted between prompt and response.
    #[arg(long, default_value = "")]
    pub separator: String,
    /// Seed of a fresh reward head, for a checkpoint without one (a causal LM).
    #[arg(long, default_value_t = LoadOptions::default().head_seed)]
    pub head_seed: u64,
    /// How conversations (`messages`, lists of turns) become text: `model` (the checkpoint's
    /// chat template, from chat_template.jinja or tokenizer_config.json; the HH format if it
    /// has none), `hh` ("\n\nHuman: ...\n\nAssistant: ..."), or a Jinja template file.
    #[arg(long, default_value = "model")]
    pub chat_template: String,
    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors, as peft
    /// and TRL save them), merged into the model's weights at load.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

impl RuntimeArgs {
    pub fn options(&self) -> SharedModelOptions {
        SharedModelOptions {
            load: LoadOptions {
                device: self.device,
                dtype: self.dtype,
                max_length: self.max_length,
                head_seed: self.head_seed,
                // Training, evaluation and votes read raw rewards; `score` sets this.
                normalize: rewardkit::Normalize::Off,
                adapter: self.adapter.clone(),
            },
            text: TextOptions { separator: self.separator.clone(), append_eos: self.append_eos },
            batch: BatchOptions {
                token_budget: self.batch_tokens,
                max_batch_size: self.batch_size,
                share_prefixes: !self.no_shared_prefixes,
            },
            n_threads: self.threads,
            chat_template: ChatTemplateChoice::Model,
        }
    }

    /// What --chat-template names (a file is read here).
    fn chat_choice(&self) -> Result<ChatTemplateChoice> {
        Ok(match self.chat_template.as_str() {
            "model" => ChatTemplateChoice::Model,
            "hh" => ChatTemplateChoice::Hh,
            file => {
                let path = Path::new(file);
                let bytes =
                    rewardkit::limits::read_file(path, rewardkit::limits::MAX_JSON_FILE_BYTES)
                        .map_err(|e| {
                            e.context("--chat-template (model, hh, or a template file)")
                        })?;
                let source = String::from_utf8(bytes).map_err(|_| {
                    rewardkit::Error::invalid(format!("{file}: the chat template is not UTF-8"))
                })?;
                ChatTemplateChoice::Source(source)
            }
        })
    }

    /// Loads a model directory, saying so when its reward head is fresh.
    pub fn load(&self, dir: &Path) -> Result<SharedModel> {
        self.load_with(dir, &self.options())
    }

    fn load_with(&self, dir: &Path, opts: &SharedModelOptions) -> Result<SharedModel> {
        let opts = SharedModelOptions { chat_template: self.chat_choice()?, ..opts.clone() };
        let model = SharedModel::load(dir, &opts)?;
        if model.info()?.head_is_fresh {
            eprintln!(
                "note: {} has no reward head; a fresh head was initialised (seed {})",
                dir.display(),
                self.head_seed
            );
        }
        Ok(model)
    }
}

impl ModelArgs {
    pub fn load(&self) -> Result<SharedModel> {
        self.rt.load(&self.model)
    }

    /// As `load`, serving rewards normalised as `normalize` says (`score`).
    pub fn load_serving(&self, normalize: &str) -> Result<SharedModel> {
        let mut opts = self.rt.options();
        opts.load.normalize = match normalize {
            "on" => rewardkit::Normalize::On,
            "off" => rewardkit::Normalize::Off,
            _ => rewardkit::Normalize::AsConfig,
        };
        self.rt.load_with(&self.model, &opts)
    }
}

#[derive(Args, Clone)]
pub struct DataArgs {
    /// Preference pairs, JSONL or JSONL.gz: HH-RLHF dialogues (chosen/rejected),
    /// prompt/chosen/rejected, or lists of turns.
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out pairs. Without it, --eval-fraction of --data is held out.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    #[arg(long, default_value_t = 0.0)]
    pub eval_fraction: f64,
    /// Seed of the train/held-out split.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Use only the first N pairs of --data.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Skip (and count) unusable rows instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Field with an external label (true/1: chosen is better), for agreement in reports.
    #[arg(long)]
    pub label_field: Option<String>,
    /// Per-pair strengths from `rewardkit vote`/`ensemble` (JSONL with `line` and
    /// `mean preference difference`), matched to --data by line number.
    #[arg(long)]
    pub strengths: Option<PathBuf>,
}

/// A row that stops a run: unless rows are already being skipped (or it is an I/O error, which
/// skipping cannot help), the message says how to go on without it.
pub fn with_skip_hint(e: rewardkit::Error, skip_bad_rows: bool) -> rewardkit::Error {
    if skip_bad_rows || e.kind() == rewardkit::ErrorKind::Io {
        return e;
    }
    rewardkit::Error::new(
        e.kind(),
        format!(
            "{}\n(rerun with --skip-bad-rows to skip such rows; they are counted and listed)",
            e.message()
        ),
    )
}

/// Lists skipped rows (line: why) on stderr, the first ten of them; `rows`: how many were read.
pub fn report_skipped(path: &Path, skipped: &[(usize, String)], rows: Option<usize>) {
    if skipped.is_empty() {
        return;
    }
    let of = rows.map_or(String::new(), |n| format!(" of {n}"));
    eprintln!("{}: skipped {}{of} rows:", path.display(), skipped.len());
    for (line, why) in skipped.iter().take(10) {
        eprintln!("  line {line}: {why}");
    }
    if skipped.len() > 10 {
        eprintln!("  ... and {} more", skipped.len() - 10);
    }
}

impl DataArgs {
    /// `path`, without a held-out split, strengths or labels.
    pub fn only(data: PathBuf, limit: Option<usize>, skip_bad_rows: bool) -> DataArgs {
        DataArgs {
            data,
            eval_data: None,
            eval_fraction: 0.0,
            split_seed: 0,
            limit,
            skip_bad_rows,
            label_field: None,
            strengths: None,
        }
    }

    /// The usable pairs of `path` (the first `limit`), reporting skipped rows; conversations
    /// are rendered as `model` renders them.
    pub fn read_pairs(
        &self,
        path: &Path,
        limit: Option<usize>,
        model: &SharedModel,
    ) -> Result<Vec<PreferencePair>> {
        let opts = PreferenceReadOptions {
            on_bad_row: if self.skip_bad_rows { OnBadRow::Skip } else { OnBadRow::Stop },
            label_field: self.label_field.clone(),
            limit,
            chat: model.chat_format()?,
        };
        let (pairs, report) =
            read_preferences(path, &opts).map_err(|e| with_skip_hint(e, self.skip_bad_rows))?;
        report_skipped(path, &report.skipped, Some(report.rows));
        Ok(pairs)
    }

    /// The first --limit pairs of --data, with their strengths if given.
    pub fn pairs(&self, model: &SharedModel) -> Result<Vec<PreferencePair>> {
        let mut pairs = self.read_pairs(&self.data, self.limit, model)?;
        if let Some(path) = &self.strengths {
            attach_strengths(&mut pairs, path)?;
        }
        Ok(pairs)
    }

    /// (train, held-out) pairs.
    pub fn load(&self, model: &SharedModel) -> Result<(Vec<PreferencePair>, Vec<PreferencePair>)> {
        let pairs = self.pairs(model)?;
        match &self.eval_data {
            Some(path) => Ok((pairs, self.read_pairs(path, None, model)?)),
            None => split_pairs(pairs, self.eval_fraction, self.split_seed),
        }
    }
}

#[derive(Args, Clone)]
pub struct TrainArgs {
    #[arg(long, default_value_t = train_defaults().optimizer.lr)]
    pub lr: f64,
    #[arg(long, default_value_t = train_defaults().optimizer.beta1)]
    pub beta1: f64,
    #[arg(long, default_value_t = train_defaults().optimizer.beta2)]
    pub beta2: f64,
    #[arg(long, default_value_t = train_defaults().optimizer.eps)]
    pub adam_eps: f64,
    #[arg(long, default_value_t = train_defaults().optimizer.weight_decay)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = train_defaults().schedule.warmup_steps)]
    pub warmup_steps: usize,
    /// constant, inverse-sqrt, cosine or linear.
    #[arg(long, default_value_t = train_defaults().schedule.kind)]
    pub schedule: ScheduleKind,
    /// Clip the global gradient norm (0 = off).
    #[arg(long, default_value_t = train_defaults().max_grad_norm.unwrap_or(0.0))]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = train_defaults().grad_accum)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = train_defaults().dropout)]
    pub dropout: f32,
    #[arg(long, default_value_t = train_defaults().seed)]
    pub seed: u64,
    /// all, head, top:N (the top N layers, final norm and head), or lora (LoRA factors on
    /// every layer and the head; saved as a PEFT adapter; see --lora-*).
    #[arg(long, default_value_t = train_defaults().trainable)]
    pub trainable: Trainable,
    /// LoRA rank (with --trainable lora).
    #[arg(long, default_value_t = LoraSpec::default().r)]
    pub lora_r: usize,
    /// LoRA alpha: B A is scaled by alpha / r (alpha / sqrt(r) with --lora-rslora).
    #[arg(long, default_value_t = LoraSpec::default().alpha)]
    pub lora_alpha: f32,
    /// The projections LoRA adapts: q,k,v,o,gate,up,down (any of them) or all.
    #[arg(long, default_value = "all")]
    pub lora_targets: String,
    #[arg(long)]
    pub lora_rslora: bool,
    /// Dropout on each adapted projection's input to its LoRA branch (PEFT's lora_dropout).
    #[arg(long, default_value_t = LoraSpec::default().dropout)]
    pub lora_dropout: f32,
    #[arg(long, default_value_t = fit_defaults().epochs)]
    pub epochs: usize,
    /// After training, record the held-out rewards' mean and std (both sides of every pair;
    /// std with n - 1, as OpenRLHF) in OUT/final/config.json with `normalize_reward: true`,
    /// so that loaders serve (r - mean) / std (train only; needs held-out pairs and --out).
    #[arg(long)]
    pub write_reward_stats: bool,
    /// Stop after this many optimizer steps (the learning-rate schedule is fitted to them).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Pairs per micro-batch.
    #[arg(long, default_value_t = fit_defaults().batch_pairs)]
    pub batch_pairs: usize,
    /// Evaluate on the held-out pairs every N optimizer steps (0: at the end only).
    #[arg(long, default_value_t = fit_defaults().eval_every)]
    pub eval_every: u64,
    /// Save a checkpoint every N optimizer steps (0: at the end only).
    #[arg(long, default_value_t = fit_defaults().save_every)]
    pub save_every: u64,
    #[arg(long, default_value_t = fit_defaults().keep_checkpoints)]
    pub keep_checkpoints: usize,
    /// Output directory: checkpoint-<step>/, final/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Resume from a checkpoint written by `train` (model, optimizer, step).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Recompute the frozen bottom on every step instead of caching its output.
    #[arg(long)]
    pub no_cache: bool,
    /// Flip pairs whose strength is below this (the paper: 0).
    #[arg(long)]
    pub flip_below: Option<f32>,
    /// Flip this fraction of pairs with the lowest strength.
    #[arg(long, conflicts_with = "flip_below")]
    pub flip_lowest: Option<f32>,
    /// Label smoothing with this alpha on every pair.
    #[arg(long)]
    pub smooth: Option<f32>,
    /// Label smoothing with this alpha only on pairs with strength < 0 ("soft label").
    #[arg(long, conflicts_with = "smooth")]
    pub smooth_negative: Option<f32>,
    /// Label smoothing with each pair's `alpha` field.
    #[arg(long, conflicts_with_all = ["smooth", "smooth_negative"])]
    pub smooth_per_pair: bool,
    /// Adaptive margin: margin = scale x strength.
    #[arg(long)]
    pub margin_scale: Option<f32>,
    /// raw, clamp (at 0) or abs.
    #[arg(long, default_value_t = MarginRule::default().mode)]
    pub margin_mode: MarginMode,
    /// Reward-centering coefficient (TRL: 0.01).
    #[arg(long, default_value_t = train_defaults().noise.centering)]
    pub centering: f64,
    /// MetaRM: ascent step on the policy samples' difference loss (meta-train only).
    #[arg(long, default_value_t = train_defaults().meta_lr)]
    pub meta_lr: f64,
    /// MetaRM's meta-gradient (meta-train only): 1 = first order, as the paper's authors ran
    /// it; 2 = exact, (I + meta_lr H_J) ∇L(θ'), two more passes over the policy batch per step.
    #[arg(long, default_value_t = train_defaults().meta_order, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub meta_order: u8,
    /// Contrastive term: simcse, simcse-diff, swav or swav-diff (the paper's settings), or none.
    #[arg(long, default_value = "none")]
    pub contrastive: String,
    /// Override the contrastive beta (L_rm + beta * L_cl).
    #[arg(long)]
    pub contrastive_beta: Option<f64>,
    /// Override the contrastive temperature.
    #[arg(long)]
    pub contrastive_temperature: Option<f32>,
    /// Dropout of the two contrastive views.
    #[arg(long, default_value_t = ContrastiveConfig::DEFAULT_DROPOUT)]
    pub contrastive_dropout: f32,
    /// The top layers in which the two contrastive views differ; the layers below run once
    /// and both views share them. 0 = every layer (two full forward passes).
    #[arg(long, default_value_t = ContrastiveConfig::DEFAULT_VIEW_LAYERS)]
    pub contrastive_view_layers: usize,
    /// Override the number of SwAV prototypes.
    #[arg(long)]
    pub swav_prototypes: Option<usize>,
    /// Override SwAV's Sinkhorn-Knopp iterations.
    #[arg(long)]
    pub sinkhorn_iterations: Option<usize>,
    /// Override SwAV's Sinkhorn-Knopp epsilon.
    #[arg(long)]
    pub sinkhorn_epsilon: Option<f32>,
}

impl TrainArgs {
    fn noise(&self) -> NoiseConfig {
        NoiseConfig {
            flip: match (self.flip_below, self.flip_lowest) {
                (Some(threshold), _) => FlipRule::Below { threshold },
                (None, Some(fraction)) => FlipRule::LowestFraction { fraction },
                _ => FlipRule::None,
            },
            smooth: match (self.smooth, self.smooth_negative, self.smooth_per_pair) {
                (Some(alpha), _, _) => SmoothRule::Constant { alpha },
                (None, Some(alpha), _) => SmoothRule::NegativeOnly { alpha },
                (None, None, true) => SmoothRule::PerPair,
                _ => SmoothRule::None,
            },
            margin: self.margin_scale.map(|scale| MarginRule { scale, mode: self.margin_mode }),
            centering: self.centering,
        }
    }

    fn contrastive(&self) -> Result<Option<ContrastiveConfig>> {
        let overrides = ContrastiveOverrides {
            beta: self.contrastive_beta,
            temperature: self.contrastive_temperature,
            dropout: Some(self.contrastive_dropout),
            prototypes: self.swav_prototypes,
            sinkhorn_iterations: self.sinkhorn_iterations,
            epsilon: self.sinkhorn_epsilon,
            view_layers: Some(self.contrastive_view_layers),
        };
        Ok(ContrastiveConfig::from_name(&self.contrastive)?.map(|c| c.with_overrides(&overrides)))
    }

    /// The run's configuration for `n_train` training pairs (the schedule's length).
    pub fn config(&self, n_train: usize) -> Result<TrainConfig> {
        let micro = self.epochs * n_train.div_ceil(self.batch_pairs.max(1));
        Ok(TrainConfig {
            optimizer: AdamWConfig {
                lr: self.lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.adam_eps,
                weight_decay: self.weight_decay,
            },
            schedule: LrSchedule {
                kind: self.schedule,
                warmup_steps: self.warmup_steps,
                total_steps: (micro / self.grad_accum.max(1))
                    .min(self.max_steps.map_or(usize::MAX, |m| m.try_into().unwrap_or(usize::MAX))),
            },
            max_grad_norm: (self.max_grad_norm != 0.0).then_some(self.max_grad_norm),
            grad_accum: self.grad_accum,
            dropout: self.dropout,
            seed: self.seed,
            trainable: match self.trainable {
                Trainable::Lora(_) => Trainable::Lora(LoraSpec {
                    r: self.lora_r,
                    alpha: self.lora_alpha,
                    rslora: self.lora_rslora,
                    targets: LoraSpec::parse_targets(&self.lora_targets)?,
                    dropout: self.lora_dropout,
                }),
                other => other,
            },
            noise: self.noise(),
            meta_lr: self.meta_lr,
            contrastive: self.contrastive()?,
            defer_apply: false,
            measure_j_after: false,
            meta_order: self.meta_order,
        })
    }

    pub fn fit_options(&self, out: Option<PathBuf>) -> FitOptions {
        FitOptions {
            epochs: self.epochs,
            batch_pairs: self.batch_pairs,
            eval_every: self.eval_every,
            save_every: self.save_every,
            keep_checkpoints: self.keep_checkpoints,
            out_dir: out,
            max_steps: self.max_steps,
        }
    }
}
