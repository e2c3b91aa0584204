//! `meta-train`: MetaRM rounds (`rewardkit::train::meta::fit`), one table row per round.

use std::path::Path;
use std::sync::Arc;

use rewardkit::io::data::read_policy;
use rewardkit::train::meta::{fit, MetaFitOptions, PolicyBatch};
use rewardkit::train::{first_trainable_layer, HiddenCache, SeqSource, TrainConfig, Trainer};
use rewardkit::Result;

use crate::args::{DataArgs, ModelArgs, TrainArgs};
use crate::train::{alphas_of, prepare, strengths_of};

pub fn meta_train(
    margs: &ModelArgs,
    data: &DataArgs,
    targs: &TrainArgs,
    policy_path: &Path,
    opts: &MetaFitOptions,
    measure_j_after: bool,
) -> Result<()> {
    let model = Arc::new(match &targs.resume {
        // A LoRA run's checkpoint is an adapter: the base model comes from --model.
        Some(dir) if !dir.join(rewardkit::model::lora::ADAPTER_CONFIG_FILE).is_file() => {
            margs.rt.load(dir)?
        }
        _ => margs.load()?,
    });
    let (train_pairs, eval_pairs) = data.load(&model)?;
    let cfg = TrainConfig { measure_j_after, ..targs.config(train_pairs.len())? };
    let first = first_trainable_layer(cfg.trainable, model.info()?.num_layers);
    let train_set = prepare(&model, &train_pairs, first, !targs.no_cache, "train")?;
    let eval_set = if eval_pairs.is_empty() {
        None
    } else {
        Some(prepare(&model, &eval_pairs, first, !targs.no_cache, "held-out")?)
    };
    let groups = read_policy(policy_path)?;
    let refs: Vec<(&str, Vec<&str>)> = groups
        .iter()
        .map(|g| (g.prompt.as_str(), g.responses.iter().map(String::as_str).collect()))
        .collect();
    let mut policy = PolicyBatch::from_texts(&model, &refs)?;
    if first > 0 && !targs.no_cache {
        if let SeqSource::Ids(seqs) = &policy.seqs {
            let seq_refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
            policy.seqs =
                SeqSource::Cached(Arc::new(HiddenCache::build(&model, &seq_refs, first, |_| {})?));
        }
    }
    let treatments = cfg.noise.treatments(
        train_pairs.len(),
        strengths_of(&train_pairs).as_deref(),
        alphas_of(&train_pairs).as_deref(),
    )?;
    let mut trainer = Trainer::new(model.clone(), cfg)?;
    if let Some(dir) = &targs.resume {
        trainer.resume(dir)?;
    }
    let opts = MetaFitOptions { batch_pairs: targs.batch_pairs, ..opts.clone() };
    println!(
        "{:>5} {:>10} {:>10} {:>10} {:>9} {:>12} {:>10} {:>12} {:>8}",
        "round",
        "J before",
        if measure_j_after { "J after" } else { "J after*" },
        "pref loss",
        "pref acc",
        "held-out acc",
        "J(policy)",
        "reward std",
        "seconds"
    );
    if !measure_j_after {
        println!("(* J after: the first-order prediction J + meta_lr·|∇J|²; --measure-j-after measures it)");
    }
    fit(&mut trainer, &train_set, &treatments, &policy, eval_set.as_ref(), &opts, |r| {
        let held = r.held_out.map_or("-".to_string(), |m| format!("{:.4}", m.accuracy));
        println!(
            "{:>5} {:>10.4} {:>10.4} {:>10.4} {:>9.3} {:>12} {:>10.4} {:>12.4} {:>8.1}",
            r.round,
            r.j_before,
            r.j_after,
            r.loss,
            r.accuracy,
            held,
            r.j_policy,
            r.reward_std,
            r.seconds
        );
    })?;
    if let Some(out) = &targs.out {
        trainer.save(&out.join("final"))?;
        eprintln!("saved {}", out.join("final").display());
    }
    Ok(())
}
