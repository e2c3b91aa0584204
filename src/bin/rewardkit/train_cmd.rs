//! `train`, `ensemble`, `vote`, `eval`, `import-gguf`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use rewardkit::data::{read_jsonl, read_preferences, split_pairs, OnBadRow, PreferencePair, PreferenceReadOptions};
use rewardkit::eval::evaluate_rewards;
use rewardkit::loss::{FlipRule, MarginMode, MarginRule, NoiseConfig, SmoothRule};
use rewardkit::optim::{AdamWConfig, LrSchedule, ScheduleKind};
use rewardkit::train::{first_trainable_layer, fit, tokenize_pairs, FitEvent, FitOptions, PairIds, PairSet, TrainConfig, Trainable, Trainer};
use rewardkit::vote::Vote;
use rewardkit::{Error, Result, SharedModel};

use crate::{ModelArgs, RuntimeArgs};

#[derive(Args, Clone)]
pub struct DataArgs {
    /// Preference pairs, JSONL or JSONL.gz: HH-RLHF dialogues (chosen/rejected),
    /// prompt/chosen/rejected, or lists of turns.
    #[arg(long)]
    data: PathBuf,
    /// Held-out pairs. Without it, --eval-fraction of --data is held out.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    #[arg(long, default_value_t = 0.0)]
    eval_fraction: f64,
    /// Seed of the train/held-out split.
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Use only the first N pairs of --data.
    #[arg(long)]
    limit: Option<usize>,
    /// Skip (and count) unusable rows instead of stopping at the first.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Field with an external label (true/1: chosen is better), for agreement in reports.
    #[arg(long)]
    label_field: Option<String>,
    /// Per-pair strengths from `rewardkit vote`/`ensemble` (JSONL with `line` and
    /// `mean preference difference`), matched to --data by line number.
    #[arg(long)]
    strengths: Option<PathBuf>,
}

fn read_pairs(path: &Path, args: &DataArgs) -> Result<Vec<PreferencePair>> {
    let opts = PreferenceReadOptions {
        on_bad_row: if args.skip_bad_rows { OnBadRow::Skip } else { OnBadRow::Stop },
        label_field: args.label_field.clone(),
    };
    let (pairs, report) = read_preferences(path, &opts)?;
    if !report.skipped.is_empty() {
        eprintln!("{}: skipped {} of {} rows:", path.display(), report.skipped.len(), report.rows);
        for (line, why) in report.skipped.iter().take(10) {
            eprintln!("  line {line}: {why}");
        }
        if report.skipped.len() > 10 {
            eprintln!("  ... and {} more", report.skipped.len() - 10);
        }
    }
    Ok(pairs)
}

impl DataArgs {
    /// (train, held-out) pairs.
    fn load(&self) -> Result<(Vec<PreferencePair>, Vec<PreferencePair>)> {
        let mut pairs = read_pairs(&self.data, self)?;
        if let Some(n) = self.limit {
            pairs.truncate(n);
        }
        if let Some(path) = &self.strengths {
            let by_line: HashMap<usize, f32> = read_jsonl(path)?
                .into_iter()
                .map(|(l, row)| {
                    let line = row.get("line").and_then(|v| v.as_u64()).ok_or_else(|| Error::invalid(format!("{}: line {l}: no `line`", path.display())))?;
                    let s = row.get("mean preference difference").and_then(|v| v.as_f64()).ok_or_else(|| Error::invalid(format!("{}: line {l}: no `mean preference difference`", path.display())))?;
                    Ok((line as usize, s as f32))
                })
                .collect::<Result<_>>()?;
            for p in &mut pairs {
                p.strength = Some(*by_line.get(&p.line).ok_or_else(|| Error::invalid(format!("{} has no strength for line {} of {}", path.display(), p.line, self.data.display())))?);
            }
        }
        match &self.eval_data {
            Some(path) => Ok((pairs, read_pairs(path, self)?)),
            None => split_pairs(pairs, self.eval_fraction, self.split_seed),
        }
    }
}

#[derive(Args, Clone)]
pub struct TrainArgs {
    #[arg(long, default_value_t = 5e-6)]
    lr: f64,
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    #[arg(long, default_value_t = 0.95)]
    beta2: f64,
    #[arg(long, default_value_t = 1e-6)]
    adam_eps: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    /// constant, inverse-sqrt, cosine or linear.
    #[arg(long, default_value = "inverse-sqrt")]
    schedule: String,
    /// Clip the global gradient norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// all, head, or top:N (the top N layers, final norm and head).
    #[arg(long, default_value = "all")]
    trainable: String,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Pairs per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch_pairs: usize,
    /// Evaluate on the held-out pairs every N optimizer steps (0: at the end only).
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// Save a checkpoint every N optimizer steps (0: at the end only).
    #[arg(long, default_value_t = 0)]
    save_every: u64,
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// Output directory: checkpoint-<step>/, final/.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Resume from a checkpoint written by `train` (model, optimizer, step).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Recompute the frozen bottom on every step instead of caching its output.
    #[arg(long)]
    no_cache: bool,
    /// Flip pairs whose strength is below this (the paper: 0).
    #[arg(long)]
    flip_below: Option<f32>,
    /// Flip this fraction of pairs with the lowest strength.
    #[arg(long, conflicts_with = "flip_below")]
    flip_lowest: Option<f32>,
    /// Label smoothing with this alpha on every pair.
    #[arg(long)]
    smooth: Option<f32>,
    /// Label smoothing with this alpha only on pairs with strength < 0 ("soft label").
    #[arg(long, conflicts_with = "smooth")]
    smooth_negative: Option<f32>,
    /// Label smoothing with each pair's `alpha` field.
    #[arg(long, conflicts_with_all = ["smooth", "smooth_negative"])]
    smooth_per_pair: bool,
    /// Adaptive margin: margin = scale x strength.
    #[arg(long)]
    margin_scale: Option<f32>,
    /// raw, clamp (at 0) or abs.
    #[arg(long, default_value = "raw")]
    margin_mode: String,
    /// Reward-centering coefficient (TRL: 0.01).
    #[arg(long, default_value_t = 0.0)]
    centering: f64,
    /// MetaRM: ascent step on the policy samples' difference loss (meta-train only).
    #[arg(long, default_value_t = 5e-6)]
    meta_lr: f64,
    /// Contrastive term: simcse, swav or swav-diff (the paper's settings), or none.
    #[arg(long, default_value = "none")]
    contrastive: String,
    /// Override the contrastive beta (L_rm + beta * L_cl).
    #[arg(long)]
    contrastive_beta: Option<f64>,
    /// Override the contrastive temperature.
    #[arg(long)]
    contrastive_temperature: Option<f32>,
    /// Dropout of the two contrastive views.
    #[arg(long, default_value_t = 0.05)]
    contrastive_dropout: f32,
    /// Override the number of SwAV prototypes.
    #[arg(long)]
    swav_prototypes: Option<usize>,
}

impl TrainArgs {
    fn noise(&self) -> Result<NoiseConfig> {
        Ok(NoiseConfig {
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
            margin: match self.margin_scale {
                None => None,
                Some(scale) => Some(MarginRule {
                    scale,
                    mode: match self.margin_mode.as_str() {
                        "raw" => MarginMode::Raw,
                        "clamp" => MarginMode::ClampZero,
                        "abs" => MarginMode::Abs,
                        other => return Err(Error::invalid(format!("unknown margin mode `{other}` (raw, clamp, abs)"))),
                    },
                }),
            },
            centering: self.centering,
        })
    }

    fn contrastive(&self) -> Result<Option<rewardkit::contrastive::ContrastiveConfig>> {
        use rewardkit::contrastive::{ContrastiveConfig, ContrastiveKind};
        let mut c = match self.contrastive.as_str() {
            "none" => return Ok(None),
            "simcse" => ContrastiveConfig::simcse(),
            "swav" => ContrastiveConfig::swav(),
            "swav-diff" => ContrastiveConfig::swav_diff(),
            other => return Err(Error::invalid(format!("unknown --contrastive `{other}` (none, simcse, swav, swav-diff)"))),
        };
        c.dropout = self.contrastive_dropout;
        if let Some(b) = self.contrastive_beta {
            c.beta = b;
        }
        match &mut c.kind {
            ContrastiveKind::SimCse { temperature } => *temperature = self.contrastive_temperature.unwrap_or(*temperature),
            ContrastiveKind::Swav { prototypes, temperature, .. } => {
                *temperature = self.contrastive_temperature.unwrap_or(*temperature);
                *prototypes = self.swav_prototypes.unwrap_or(*prototypes);
            }
        }
        Ok(Some(c))
    }

    fn trainable(&self) -> Result<Trainable> {
        match self.trainable.as_str() {
            "all" => Ok(Trainable::All),
            "head" => Ok(Trainable::HeadOnly),
            s => s
                .strip_prefix("top:")
                .and_then(|n| n.parse().ok())
                .map(|layers| Trainable::TopLayers { layers })
                .ok_or_else(|| Error::invalid(format!("unknown --trainable `{s}` (all, head, top:N)"))),
        }
    }

    fn config(&self, n_train: usize) -> Result<TrainConfig> {
        let kind = match self.schedule.as_str() {
            "constant" => ScheduleKind::Constant,
            "inverse-sqrt" => ScheduleKind::InverseSqrt,
            "cosine" => ScheduleKind::Cosine,
            "linear" => ScheduleKind::Linear,
            other => return Err(Error::invalid(format!("unknown schedule `{other}`"))),
        };
        let micro = self.epochs * n_train.div_ceil(self.batch_pairs.max(1));
        Ok(TrainConfig {
            optimizer: AdamWConfig { lr: self.lr, beta1: self.beta1, beta2: self.beta2, eps: self.adam_eps, weight_decay: self.weight_decay },
            schedule: LrSchedule { kind, warmup_steps: self.warmup_steps, total_steps: micro / self.grad_accum.max(1) },
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            grad_accum: self.grad_accum,
            dropout: self.dropout,
            seed: self.seed,
            trainable: self.trainable()?,
            noise: self.noise()?,
            meta_lr: self.meta_lr,
            contrastive: self.contrastive()?,
        })
    }

    fn fit_options(&self, out: Option<PathBuf>) -> FitOptions {
        FitOptions { epochs: self.epochs, batch_pairs: self.batch_pairs, eval_every: self.eval_every, save_every: self.save_every, keep_checkpoints: self.keep_checkpoints, out_dir: out }
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}").expect("template").progress_chars("=> "));
    pb.set_prefix(what.to_string());
    pb
}

/// Prints above a progress bar, or plainly when the bar is hidden (no terminal).
fn log(pb: &ProgressBar, msg: String) {
    if pb.is_hidden() { eprintln!("{msg}") } else { pb.println(msg) }
}

/// Tokenizes pairs and, when the bottom of the model is frozen, runs it once over them.
fn prepare(model: &SharedModel, pairs: &[PreferencePair], first: usize, cache: bool, what: &str) -> Result<PairSet> {
    let ids: Vec<PairIds> = tokenize_pairs(model, pairs)?;
    if first == 0 || !cache {
        return Ok(PairSet::from_ids(ids));
    }
    let pb = bar(2 * ids.len() as u64, what);
    let t = Instant::now();
    let set = PairSet::cached(model, &ids, first, |n| pb.inc(n as u64))?;
    pb.finish_and_clear();
    if let rewardkit::train::SeqSource::Cached(cache) = &set.seqs {
        eprintln!("{what}: frozen layers 0..{first} run once over {} sequences in {:.1}s ({:.0} MB cached)", cache.len(), t.elapsed().as_secs_f64(), cache.bytes() as f64 / 1e6);
    }
    Ok(set)
}

fn strengths_of(pairs: &[PreferencePair]) -> Option<Vec<f32>> {
    pairs.iter().map(|p| p.strength).collect()
}

fn alphas_of(pairs: &[PreferencePair]) -> Option<Vec<f32>> {
    pairs.iter().map(|p| p.alpha).collect()
}

/// Runs `fit` with a progress bar; returns the final held-out line if any.
fn run_fit(trainer: &mut Trainer, train: &PairSet, pairs: &[PreferencePair], eval: Option<&PairSet>, opts: &FitOptions, label: &str) -> Result<()> {
    let treatments = trainer.config().noise.treatments(pairs.len(), strengths_of(pairs).as_deref(), alphas_of(pairs).as_deref())?;
    let flipped = treatments.iter().filter(|t| t.flip).count();
    if flipped > 0 {
        eprintln!("{label}: flipping {flipped} of {} pairs", pairs.len());
    }
    let total = (opts.epochs * pairs.len().div_ceil(opts.batch_pairs.max(1))) as u64;
    let pb = bar(total, label);
    pb.set_position(trainer.micro_steps());
    let started = Instant::now();
    let (mut loss_sum, mut acc_sum, mut n) = (0.0, 0.0, 0usize);
    fit(trainer, train, &treatments, eval, opts, |e| match e {
        FitEvent::Step(s) => {
            pb.inc(1);
            loss_sum += s.loss;
            acc_sum += s.accuracy;
            n += 1;
            pb.set_message(format!("loss {:.4} acc {:.3} lr {:.2e}", loss_sum / n as f64, acc_sum / n as f64, s.lr));
        }
        FitEvent::Eval { step, accuracy, mean_margin, loss } => {
            log(&pb, format!("{label} step {step:>6}  train loss {:.4}  held-out accuracy {accuracy:.4}  margin {mean_margin:.4}  loss {loss:.4}", loss_sum / n.max(1) as f64));
        }
        FitEvent::Saved(p) => log(&pb, format!("{label} saved {}", p.display())),
    })?;
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let done = pb.position() as f64;
    let tokens: usize = train.seqs.tokens().unwrap_or(0);
    eprintln!(
        "{label}: {} optimizer steps in {secs:.1}s: {:.1} pairs/s{}",
        trainer.steps(),
        done * opts.batch_pairs as f64 / secs,
        if tokens > 0 { format!(", {:.0} tokens/s", tokens as f64 * opts.epochs as f64 / secs) } else { String::new() }
    );
    Ok(())
}

fn report(model: &SharedModel, set: &PairSet, pairs: &[PreferencePair], buckets: usize) -> Result<rewardkit::eval::EvalReport> {
    let (c, r) = set.score_all(model, 16)?;
    let strengths = strengths_of(pairs);
    let external: Vec<Option<bool>> = pairs.iter().map(|p| p.external_label).collect();
    Ok(evaluate_rewards(&c, &r, strengths.as_deref(), Some(&external), buckets))
}

pub fn train(margs: &ModelArgs, data: &DataArgs, targs: &TrainArgs) -> Result<()> {
    let model = Arc::new(match &targs.resume {
        Some(dir) => margs.rt.load(dir)?,
        None => margs.load()?,
    });
    let (train_pairs, eval_pairs) = data.load()?;
    let cfg = targs.config(train_pairs.len())?;
    let n_layers = model.info()?.num_layers;
    let first = first_trainable_layer(cfg.trainable, n_layers);
    eprintln!("training on {} pairs, {} held out; trainable: {} (layers {first}..{n_layers})", train_pairs.len(), eval_pairs.len(), targs.trainable);
    let train_set = prepare(&model, &train_pairs, first, !targs.no_cache, "train")?;
    let eval_set = if eval_pairs.is_empty() { None } else { Some(prepare(&model, &eval_pairs, first, !targs.no_cache, "held-out")?) };
    let mut trainer = Trainer::new(model.clone(), cfg)?;
    if let Some(dir) = &targs.resume {
        let done = trainer.resume(dir)?;
        eprintln!("resumed from {} after {done} micro-batches ({} optimizer steps)", dir.display(), trainer.steps());
    }
    run_fit(&mut trainer, &train_set, &train_pairs, eval_set.as_ref(), &targs.fit_options(targs.out.clone()), "train")?;
    if let Some(eval_set) = &eval_set {
        println!("{}", report(&model, eval_set, &eval_pairs, 10)?.table());
    }
    Ok(())
}

fn write_vote(vote: &Vote, pairs: &[PreferencePair], output: &Path, plot_dir: Option<&Path>, buckets: usize, band: Option<f32>) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(output).map_err(|e| Error::io(output, e))?);
    for (row, p) in vote.export_rows().into_iter().zip(pairs) {
        let mut row = row;
        row["line"] = json!(p.line);
        writeln!(f, "{row}")?;
    }
    f.flush()?;
    let (mean, _) = vote.strength();
    let spread = {
        let m = mean.iter().map(|&x| x as f64).sum::<f64>() / mean.len() as f64;
        (mean.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / mean.len() as f64).sqrt() as f32
    };
    let band = band.unwrap_or(0.1 * spread);
    let cats = vote.categories(band);
    let count = |c| cats.iter().filter(|&&x| x == c).count();
    use rewardkit::vote::Category::*;
    println!("vote: {} members x {} pairs -> {}", vote.members(), vote.pairs(), output.display());
    println!(
        "  likely wrong (mean < 0): {} ({:.1}%)   ambiguous (|mean| < {band:.4}): {}   clear: {}",
        count(LikelyWrong), 100.0 * count(LikelyWrong) as f64 / cats.len() as f64, count(Ambiguous), count(Clear)
    );
    println!("\n  bucket  count   mean range              mean of mean   mean of std");
    let b = vote.buckets(buckets);
    for x in &b {
        println!("  {:>6}  {:>5}   [{:>8.3}, {:>8.3}]   {:>12.4}   {:>11.4}", x.index, x.count, x.min_mean, x.max_mean, x.mean_of_mean, x.mean_of_std);
    }
    if let Some(dir) = plot_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let hist = rewardkit::plot::histogram_svg(&mean, 40, "Preference strength (mean reward difference)", "mean preference difference");
        let xs: Vec<f64> = b.iter().map(|x| x.index as f64).collect();
        let ys: Vec<f64> = b.iter().map(|x| x.mean_of_std).collect();
        let line = rewardkit::plot::line_svg(&xs, &ys, "Std of the difference by strength bucket", "bucket (low to high mean)", "mean std");
        for (name, svg) in [("strength_histogram.svg", hist), ("bucket_std.svg", line)] {
            let p = dir.join(name);
            std::fs::write(&p, svg).map_err(|e| Error::io(&p, e))?;
        }
        println!("\n  plots: {}/strength_histogram.svg, bucket_std.svg", dir.display());
    }
    Ok(())
}

pub fn ensemble(margs: &ModelArgs, data: &DataArgs, targs: &TrainArgs, members: usize, shared_backbone: bool, buckets: usize) -> Result<()> {
    let out = targs.out.clone().ok_or_else(|| Error::invalid("ensemble needs --out"))?;
    let base = margs.load()?;
    let (train_pairs, _) = data.load()?;
    let cfg = targs.config(train_pairs.len())?;
    let first = first_trainable_layer(cfg.trainable, base.info()?.num_layers);
    let set = prepare(&base, &train_pairs, first, !targs.no_cache, "ensemble")?;
    let treatments = cfg.noise.treatments(train_pairs.len(), strengths_of(&train_pairs).as_deref(), alphas_of(&train_pairs).as_deref())?;
    let started = Instant::now();
    let vote = if shared_backbone {
        let pb = bar((targs.epochs * train_pairs.len().div_ceil(targs.batch_pairs)) as u64, "heads");
        let model = rewardkit::ensemble::train_multi_head(&base, &set, &treatments, &cfg, &targs.fit_options(Some(out.join("multi-head"))), members, |e| {
            if let FitEvent::Step(_) = e {
                pb.inc(1)
            }
        })?;
        pb.finish_and_clear();
        rewardkit::vote::vote(&[&model], &set, 16)?
    } else {
        let pb = bar((members * targs.epochs * train_pairs.len().div_ceil(targs.batch_pairs)) as u64, "members");
        let models = rewardkit::ensemble::train_ensemble(&base, &set, &treatments, &cfg, &targs.fit_options(Some(out.clone())), members, |_, e| {
            if let FitEvent::Step(_) = e {
                pb.inc(1)
            }
        })?;
        pb.finish_and_clear();
        let refs: Vec<&SharedModel> = models.iter().map(|m| m.as_ref()).collect();
        rewardkit::vote::vote(&refs, &set, 16)?
    };
    eprintln!("trained {members} {} in {:.1}s", if shared_backbone { "heads" } else { "members" }, started.elapsed().as_secs_f64());
    write_vote(&vote, &train_pairs, &out.join("vote.jsonl"), Some(&out), buckets, None)
}

pub fn vote(members: &[PathBuf], rt: &RuntimeArgs, data: &DataArgs, output: &Path, plot_dir: Option<&Path>, buckets: usize, band: Option<f32>) -> Result<()> {
    let models = members.iter().map(|m| rt.load(m)).collect::<Result<Vec<_>>>()?;
    let mut pairs = read_pairs(&data.data, data)?;
    if let Some(n) = data.limit {
        pairs.truncate(n);
    }
    let set = PairSet::from_ids(tokenize_pairs(&models[0], &pairs)?);
    let refs: Vec<&SharedModel> = models.iter().collect();
    let vote = rewardkit::vote::vote(&refs, &set, 16)?;
    if vote.members() < 2 {
        return Err(Error::invalid("a vote needs two members or more: several --member models, or a multi-head model"));
    }
    write_vote(&vote, &pairs, output, plot_dir, buckets, band)
}

pub fn eval(margs: &ModelArgs, data: &DataArgs, buckets: usize, json_out: Option<&Path>) -> Result<()> {
    let model = margs.load()?;
    let (train, held_out) = data.load()?;
    // With a held-out split, evaluate on it; otherwise on every pair given.
    let pairs = if held_out.is_empty() { train } else { held_out };
    let set = PairSet::from_ids(tokenize_pairs(&model, &pairs)?);
    let r = report(&model, &set, &pairs, buckets)?;
    println!("{}", r.table());
    if let Some(p) = json_out {
        std::fs::write(p, serde_json::to_vec_pretty(&r).expect("serializable")).map_err(|e| Error::io(p, e))?;
    }
    Ok(())
}

pub fn import_gguf(gguf: &Path, out: &Path) -> Result<()> {
    let t = Instant::now();
    let r = rewardkit::gguf::import_gguf(gguf, out)?;
    let quant: Vec<String> = r.quant_types.iter().map(|(k, n)| format!("{k} x{n}")).collect();
    println!(
        "imported {} ({}): {} layers, hidden {}, vocab {}, {} parameters, tied embeddings: {}; dequantized from {} in {:.1}s -> {}",
        gguf.display(), r.name, r.layers, r.hidden_size, r.vocab_size, r.parameters, r.tied_embeddings, quant.join(", "), t.elapsed().as_secs_f64(), out.display()
    );
    Ok(())
}

/// Reads policy samples: one prompt with k >= 2 responses per line.
fn read_policy(path: &Path) -> Result<Vec<(String, Vec<String>)>> {
    read_jsonl(path)?
        .into_iter()
        .map(|(line, row)| {
            let at = |m: &str| Error::invalid(format!("{}: line {line}: {m}", path.display()));
            let prompt = row.get("prompt").and_then(|v| v.as_str()).ok_or_else(|| at("no string `prompt`"))?;
            let responses: Vec<String> = row
                .get("responses")
                .and_then(|v| v.as_array())
                .ok_or_else(|| at("no `responses` list"))?
                .iter()
                .map(|r| r.as_str().map(str::to_string).ok_or_else(|| at("`responses` must hold strings")))
                .collect::<Result<_>>()?;
            if responses.len() < 2 {
                return Err(at("needs at least 2 responses"));
            }
            Ok((prompt.to_string(), responses))
        })
        .collect()
}

pub fn meta_train(margs: &ModelArgs, data: &DataArgs, targs: &TrainArgs, policy_path: &Path, rounds: usize, steps_per_round: usize, policy_prompts: usize) -> Result<()> {
    use rewardkit::meta::{difference_value, PolicyBatch};
    use rewardkit::train::{micro_batches, SeqSource};
    let model = Arc::new(match &targs.resume {
        Some(dir) => margs.rt.load(dir)?,
        None => margs.load()?,
    });
    let (train_pairs, eval_pairs) = data.load()?;
    let cfg = targs.config(train_pairs.len())?;
    let first = first_trainable_layer(cfg.trainable, model.info()?.num_layers);
    let train_set = prepare(&model, &train_pairs, first, !targs.no_cache, "train")?;
    let eval_set = if eval_pairs.is_empty() { None } else { Some(prepare(&model, &eval_pairs, first, !targs.no_cache, "held-out")?) };
    let groups = read_policy(policy_path)?;
    let refs: Vec<(&str, Vec<&str>)> = groups.iter().map(|(p, r)| (p.as_str(), r.iter().map(String::as_str).collect())).collect();
    let mut policy = PolicyBatch::from_texts(&model, &refs)?;
    if first > 0 && !targs.no_cache {
        if let SeqSource::Ids(seqs) = &policy.seqs {
            let seq_refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
            policy.seqs = SeqSource::Cached(Arc::new(rewardkit::train::HiddenCache::build(&model, &seq_refs, first, |_| {})?));
        }
    }
    let treatments = cfg.noise.treatments(train_pairs.len(), strengths_of(&train_pairs).as_deref(), alphas_of(&train_pairs).as_deref())?;
    let spread = |m: &SharedModel| -> Result<f64> {
        let all: Vec<usize> = (0..policy.seqs.len()).collect();
        let r = policy.seqs.rewards(m, &all, 32)?;
        let mean = r.iter().map(|&x| x as f64).sum::<f64>() / r.len() as f64;
        Ok((r.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / r.len() as f64).sqrt())
    };
    let mut trainer = Trainer::new(model.clone(), cfg.clone())?;
    if let Some(dir) = &targs.resume {
        trainer.resume(dir)?;
    }
    let batches = micro_batches(train_pairs.len(), (rounds * steps_per_round).div_ceil(train_pairs.len().div_ceil(targs.batch_pairs)).max(1), targs.batch_pairs, cfg.seed);
    let mut rng = rewardkit::rng::Rng::new(cfg.seed ^ 0x5EED);
    println!("{:>5} {:>10} {:>10} {:>10} {:>9} {:>12} {:>10} {:>12} {:>8}", "round", "J before", "J after", "pref loss", "pref acc", "held-out acc", "J(policy)", "reward std", "seconds");
    let mut next = 0;
    for round in 0..rounds {
        let t = Instant::now();
        let (mut jb, mut ja, mut loss, mut acc) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..steps_per_round {
            let idx = &batches[next % batches.len()];
            next += 1;
            let mut chosen: Vec<usize> = (0..policy.groups.len()).collect();
            rng.shuffle(&mut chosen);
            chosen.truncate(if policy_prompts == 0 { chosen.len() } else { policy_prompts.min(chosen.len()) });
            let sub = PolicyBatch { seqs: policy.seqs.clone(), groups: chosen.iter().map(|&g| policy.groups[g].clone()).collect() };
            let tr: Vec<_> = idx.iter().map(|&i| treatments[i]).collect();
            let s = trainer.meta_step(&train_set, idx, &tr, &sub)?;
            jb += s.j_before;
            ja += s.j_after;
            loss += s.step.loss;
            acc += s.step.accuracy;
        }
        let n = steps_per_round.max(1) as f64;
        let held = match &eval_set {
            Some(e) => format!("{:.4}", rewardkit::train::quick_eval(&model, e)?.0),
            None => "-".into(),
        };
        println!(
            "{:>5} {:>10.4} {:>10.4} {:>10.4} {:>9.3} {:>12} {:>10.4} {:>12.4} {:>8.1}",
            round + 1, jb / n, ja / n, loss / n, acc / n, held, difference_value(&model, &policy)?, spread(&model)?, t.elapsed().as_secs_f64()
        );
    }
    if let Some(out) = &targs.out {
        trainer.save(&out.join("final"))?;
        eprintln!("saved {}", out.join("final").display());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn bench_train(margs: &ModelArgs, input: &Path, limit: usize, batch_pairs: usize, steps: usize, trainable: &str, dump_ids: Option<&Path>, as_json: bool, profile: bool) -> Result<()> {
    let model = Arc::new(margs.load()?);
    let info = model.info()?;
    let mut pairs = read_pairs(input, &DataArgs { data: input.to_path_buf(), eval_data: None, eval_fraction: 0.0, split_seed: 0, limit: None, skip_bad_rows: true, label_field: None, strengths: None })?;
    pairs.truncate(limit.max(batch_pairs));
    let ids = tokenize_pairs(&model, &pairs)?;
    if let Some(path) = dump_ids {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| Error::io(path, e))?);
        for p in &ids {
            writeln!(f, "{}", json!({"chosen": p.chosen, "rejected": p.rejected}))?;
        }
    }
    let set = PairSet::from_ids(ids);
    let targs = TrainArgs::defaults_for_bench(trainable);
    let cfg = TrainConfig { optimizer: AdamWConfig { lr: 1e-7, ..Default::default() }, ..targs.config(pairs.len())? };
    let mut trainer = Trainer::new(model.clone(), cfg)?;
    let batches: Vec<Vec<usize>> = (0..=steps).map(|s| (0..batch_pairs).map(|i| (s * batch_pairs + i) % pairs.len()).collect()).collect();
    let sync = || -> Result<()> { Ok(model.read()?.device().synchronize()?) };
    let t = vec![Default::default(); batch_pairs];
    trainer.step(&set, &batches[0], &t)?; // warm-up
    sync()?;
    let mut times = Vec::new();
    let mut tokens = 0usize;
    for b in &batches[1..] {
        let started = Instant::now();
        trainer.step(&set, b, &t)?;
        sync()?;
        times.push(started.elapsed().as_secs_f64());
        tokens += b.iter().map(|&i| set.pairs[i]).map(|(c, r)| match &set.seqs {
            rewardkit::train::SeqSource::Ids(s) => s[c].len() + s[r].len(),
            _ => 0,
        }).sum::<usize>();
    }
    let total: f64 = times.iter().sum();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!("rewardkit training benchmark");
    println!("  model     {} ({}, {} params, {}, {}, {} threads), trainable {trainable}", margs.model.display(), info.architecture, info.num_parameters, info.dtype.as_str(), info.device, info.n_threads);
    println!("  steps     {steps} x {batch_pairs} pairs (forward + backward + AdamW), {tokens} tokens");
    println!("  median step {:.4}s   pairs/s {:.2}   tokens/s {:.0}", sorted[sorted.len() / 2], (steps * batch_pairs) as f64 / total, tokens as f64 / total);
    if as_json {
        println!("{}", json!({"engine": "rewardkit", "steps": steps, "batch_pairs": batch_pairs, "tokens": tokens, "seconds": total,
            "pairs_per_s": (steps * batch_pairs) as f64 / total, "tokens_per_s": tokens as f64 / total}));
    }
    if profile {
        crate::score_cmd::print_profile("steps", tokens, || {
            for b in &batches[1..] {
                trainer.step(&set, b, &t)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

impl TrainArgs {
    /// Settings for `bench-train`: defaults, with the given trainable part.
    fn defaults_for_bench(trainable: &str) -> TrainArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            t: TrainArgs,
        }
        let mut t = Wrap::parse_from(["bench"]).t;
        t.trainable = trainable.to_string();
        t
    }
}
