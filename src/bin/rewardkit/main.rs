//! `rewardkit`: the command-line front end for offline jobs over the same library the C ABI
//! exposes.

mod args;
mod bench;
mod convert;
mod eval;
mod meta;
mod plot;
mod progress;
mod score;
mod train;
mod vote;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use args::{DataArgs, ModelArgs, RuntimeArgs, TrainArgs};
use rewardkit::train::meta::MetaFitOptions;
use rewardkit::train::{Shard, Trainable};

#[derive(Parser)]
#[command(
    name = "rewardkit",
    version,
    about = "Reward models for RLHF: score, train, vote, evaluate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score every row of a JSONL(.gz) file; prints one JSON line per row, in input order.
    Score {
        #[command(flatten)]
        model: ModelArgs,
        /// Rows with `prompt` + `response`, `text`, `ids`, or `chosen` + `rejected`.
        #[arg(long)]
        input: PathBuf,
        /// Write results here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Score at most this many rows (rows after them are not read).
        #[arg(long)]
        limit: Option<usize>,
        /// Skip (and list) rows that cannot be scored, invalid JSON included, instead of
        /// stopping at the first.
        #[arg(long)]
        skip_bad_rows: bool,
        /// Serve rewards normalised as (r - mean) / std with config.json's reward `mean` and
        /// `std` (OpenRLHF): `config` follows its `normalize_reward`, `on` requires the
        /// statistics, `off` gives raw rewards.
        #[arg(long, default_value = "config", value_parser = ["config", "on", "off"])]
        normalize: String,
    },
    /// Measure scoring throughput (pairs/s, tokens/s) on the length mix of a JSONL file.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        input: PathBuf,
        /// Use the first N rows.
        #[arg(long, default_value_t = 256)]
        limit: usize,
        /// Timed passes over the whole input (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Write the token ids scored, one JSON array per line, for the transformers script.
        #[arg(long)]
        dump_ids: Option<PathBuf>,
        /// Print the result as one JSON object as well as the table.
        #[arg(long)]
        json: bool,
        /// After the timed passes, one more pass with the device synchronised around each
        /// phase of the forward pass (embedding, projections, attention, MLP, ...), and a table
        /// of where its time went.
        #[arg(long)]
        profile: bool,
    },
    /// Measure training throughput (pairs/s, tokens/s) of full training steps (forward,
    /// backward, AdamW) on preference pairs from a JSONL file.
    BenchTrain {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        input: PathBuf,
        /// Use the first N pairs.
        #[arg(long, default_value_t = 64)]
        limit: usize,
        #[arg(long, default_value_t = 8)]
        batch_pairs: usize,
        /// Timed steps (after one untimed warm-up step).
        #[arg(long, default_value_t = 8)]
        steps: usize,
        /// all, head, top:N, or lora (rank 8, alpha 8, every projection).
        #[arg(long, default_value_t = Trainable::All)]
        trainable: Trainable,
        /// Write the token ids of each pair ({"chosen": [...], "rejected": [...]}) for the
        /// transformers script.
        #[arg(long)]
        dump_ids: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// After the timed steps, the same steps again with the device synchronised around
        /// each phase (forward phases, backward, gradient conversion, optimizer), and a table
        /// of where their time went.
        #[arg(long)]
        profile: bool,
        /// After the timed steps, the same steps again alternating a plain step and a step
        /// through an identity all-reduce hook at world size 1 (data parallelism's own cost:
        /// flattening, the hand-over, the finite check, splitting), with a side-by-side table.
        #[arg(long)]
        allreduce_overhead: bool,
        /// After the timed steps, a plain step, a MetaRM step (policy batch as large as the
        /// preference batch) and the contrastive steps (SimCSE, SwAV) on the same batches,
        /// with each one's median and its ratio to the plain step.
        #[arg(long)]
        compare_steps: bool,
    },
    /// Print a model's configuration summary as JSON.
    Info {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Train a reward model on preference pairs (Bradley-Terry with the noise-aware options).
    Train {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        train: TrainArgs,
    },
    /// Train M models that differ only in seed, then vote on the training pairs: per-pair
    /// preference strength, exported in the authors' format, with plots.
    Ensemble {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        train: TrainArgs,
        /// Ensemble members.
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// The cheap variant: one backbone with M heads.
        #[arg(long, conflicts_with = "folds")]
        shared_backbone: bool,
        /// Out of fold: split the pairs into K folds; member m trains on every fold but
        /// m % K and votes only on that one, so no pair's strength comes from a member that
        /// saw its label. Each pair gets members/K votes (the vote file's `voters`); the
        /// layout is saved as OUT/folds.json. 0: every member trains and votes on every pair.
        #[arg(long, default_value_t = 0)]
        folds: usize,
        /// Equal-count strength groups in the report.
        #[arg(long, default_value_t = 10)]
        buckets: usize,
        /// Train only members i, i+n, i+2n, ... (`i/n`; one process per shard, any
        /// scheduler), save them as OUT/member-<m>, and skip the vote: vote on all members
        /// afterwards (`rewardkit vote --member ...`, itself shardable).
        #[arg(long)]
        shard: Option<Shard>,
    },
    /// Score pairs with M trained models (or one multi-head model) and report preference strength.
    Vote {
        /// Member checkpoint directories (repeat the flag), or one multi-head checkpoint;
        /// with --base, PEFT adapter directories (`ensemble --trainable lora` members).
        #[arg(long = "member", required_unless_present = "merge")]
        members: Vec<PathBuf>,
        /// A base model every --member is a LoRA adapter over: loaded once, each adapter
        /// applied unmerged on top of it (memory: one backbone plus each adapter's factors).
        #[arg(long)]
        base: Option<PathBuf>,
        #[command(flatten)]
        rt: RuntimeArgs,
        /// Preference pairs, JSONL or JSONL.gz (as for `train`).
        #[arg(long, required_unless_present = "merge")]
        data: Option<PathBuf>,
        /// Use only the first N pairs of --data.
        #[arg(long)]
        limit: Option<usize>,
        /// Skip (and count) unusable rows instead of stopping at the first.
        #[arg(long)]
        skip_bad_rows: bool,
        /// Score only the scoring batches b with b % n == i (`i/n`) and write this shard's
        /// scores to --output; `--merge` joins the n shard files into the vote file one
        /// process would have written, byte for byte.
        #[arg(long, conflicts_with = "merge")]
        shard: Option<Shard>,
        /// Shard files of one `--shard i/n` job (all n, any order) to merge into --output.
        #[arg(long, num_args = 1.., conflicts_with_all = ["members", "shard"])]
        merge: Vec<PathBuf>,
        /// Out of fold: the fold layout `ensemble --folds K` saved (OUT/folds.json); member
        /// m (in --member order) votes only on the pairs of fold m % K.
        #[arg(long, conflicts_with_all = ["shard", "merge"])]
        folds: Option<PathBuf>,
        /// Per-pair results in the authors' format (JSONL); with --shard, the shard's scores.
        #[arg(long)]
        output: PathBuf,
        /// Write strength_histogram.svg and bucket_std.svg here.
        #[arg(long)]
        plot_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 10)]
        buckets: usize,
        /// |mean| below this is "ambiguous" (default: 0.1 x the std of the means).
        #[arg(long)]
        ambiguous_band: Option<f32>,
    },
    /// Evaluate a reward model on preference pairs: accuracy, margins, reward statistics,
    /// accuracy by strength bucket, agreement with an external label.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value_t = 10)]
        buckets: usize,
        /// Write the report as JSON here too.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// MetaRM: train on preference pairs while keeping the model able to separate policy
    /// samples (JSONL rows: `prompt` and a list of `responses`). Prints a per-round table.
    MetaTrain {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        train: TrainArgs,
        /// Policy samples: {"prompt": ..., "responses": [...]} per line, k >= 2 responses.
        #[arg(long)]
        policy: PathBuf,
        #[arg(long, default_value_t = MetaFitOptions::default().rounds)]
        rounds: usize,
        #[arg(long, default_value_t = MetaFitOptions::default().steps_per_round)]
        steps_per_round: usize,
        /// Policy prompts per meta step (0: all).
        #[arg(long, default_value_t = MetaFitOptions::default().policy_prompts)]
        policy_prompts: usize,
        /// Measure J after each ascent with a forward pass over the policy batch (about a
        /// quarter of a plain step more) instead of its first-order prediction.
        #[arg(long)]
        measure_j_after: bool,
    },
    /// Merge a PEFT LoRA adapter (as peft / TRL save it) into its base model and save the
    /// result as a full checkpoint (the adapter's head, if it trained one, included).
    MergeAdapter {
        /// The base model the adapter was trained on.
        #[arg(long)]
        model: PathBuf,
        /// The adapter directory (adapter_config.json, adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Convert a llama.cpp GGUF file (dequantized) into a Hugging Face checkpoint directory.
    ImportGguf {
        #[arg(long)]
        gguf: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Build the small reward model that ships with the project (tokenizer trained on the
    /// corpus, seeded random weights), deterministically.
    InitTiny {
        /// Output directory (replaced atomically if it exists).
        #[arg(long)]
        out: PathBuf,
        /// Tokenizer training text: a JSONL(.gz) with chosen/rejected/text fields.
        #[arg(long, default_value = "data/hh-rlhf/harmless-base-test.jsonl.gz")]
        corpus: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// Keeps freed activation buffers in the process for the next forward pass. By default glibc
/// serves large allocations with fresh mmaps and returns them on free, so every pass faults in
/// and zeroes new pages: about 15% of CPU scoring time at 135M parameters. Worker threads'
/// arenas do the same at a larger grain: a 64 MiB arena heap that empties is unmapped, and the
/// next step maps, faults in and zeroes a new one (200 unmaps in 5 tiny-rm training steps, a
/// third of the step time); one arena keeps it all in the main heap. The CLI owns its process,
/// so it sets these; a host that links the library can do the same with `GLIBC_TUNABLES` (see
/// the README's performance section).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's maximum
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// `rewardkit vote ... | head` ends the process quietly, as other Unix tools do: Rust ignores
/// SIGPIPE, so without this the first print after the pipe closes panics.
fn exit_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    keep_freed_memory();
    exit_on_closed_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Score { model, input, output, limit, skip_bad_rows, normalize } => {
            score::score(&model, &input, output.as_deref(), limit, skip_bad_rows, &normalize)
        }
        Command::Bench { model, input, limit, repeats, dump_ids, json, profile } => {
            bench::bench(&model, &input, limit, repeats, dump_ids.as_deref(), json, profile)
        }
        Command::Info { model } => score::info(&model),
        Command::BenchTrain {
            model,
            input,
            limit,
            batch_pairs,
            steps,
            trainable,
            dump_ids,
            json,
            profile,
            allreduce_overhead,
            compare_steps,
        } => bench::bench_train(
            &model,
            &input,
            limit,
            batch_pairs,
            steps,
            trainable,
            allreduce_overhead,
            compare_steps,
            dump_ids.as_deref(),
            json,
            profile,
        ),
        Command::InitTiny { out, corpus, seed } => convert::init_tiny(&out, &corpus, seed),
        Command::Train { model, data, train } => train::train(&model, &data, &train),
        Command::Ensemble {
            model,
            data,
            train,
            members,
            shared_backbone,
            folds,
            buckets,
            shard,
        } => vote::ensemble(
            &model,
            &data,
            &train,
            vote::Layout { members, shared_backbone, folds },
            buckets,
            shard,
        ),
        Command::Vote {
            members,
            base,
            rt,
            data,
            limit,
            skip_bad_rows,
            shard,
            merge,
            folds,
            output,
            plot_dir,
            buckets,
            ambiguous_band,
        } => {
            let report =
                vote::Report { plot_dir: plot_dir.as_deref(), buckets, band: ambiguous_band };
            if !merge.is_empty() {
                vote::merge(&merge, &output, &report)
            } else {
                match data {
                    Some(data) => {
                        let data = DataArgs::only(data, limit, skip_bad_rows);
                        let members = vote::Members { dirs: &members, base: base.as_deref() };
                        vote::vote(members, &rt, &data, shard, folds.as_deref(), &output, &report)
                    }
                    None => Err(rewardkit::Error::invalid("vote needs --data (or --merge)")),
                }
            }
        }
        Command::Eval { model, data, buckets, json } => {
            eval::eval(&model, &data, buckets, json.as_deref())
        }
        Command::ImportGguf { gguf, out } => convert::import_gguf(&gguf, &out),
        Command::MergeAdapter { model, adapter, out } => {
            convert::merge_adapter(&model, &adapter, &out)
        }
        Command::MetaTrain {
            model,
            data,
            train,
            policy,
            rounds,
            steps_per_round,
            policy_prompts,
            measure_j_after,
        } => {
            let opts = MetaFitOptions {
                rounds,
                steps_per_round,
                policy_prompts,
                ..MetaFitOptions::default()
            };
            meta::meta_train(&model, &data, &train, &policy, &opts, measure_j_after)
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
