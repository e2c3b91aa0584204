//! `ensemble` and `vote`: the paper's preference strength, exported in the authors' format,
//! with categories, the per-bucket table and plots.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use rewardkit::eval::vote::Vote;
use rewardkit::io::data::PreferencePair;
use rewardkit::train::{first_trainable_layer, tokenize_pairs, FitEvent, PairSet};
use rewardkit::{Error, Result, SharedModel};

use crate::args::{DataArgs, ModelArgs, RuntimeArgs, TrainArgs};
use crate::progress;
use crate::train::{alphas_of, prepare, strengths_of};

fn write_vote(
    vote: &Vote,
    pairs: &[PreferencePair],
    output: &Path,
    plot_dir: Option<&Path>,
    buckets: usize,
    band: Option<f32>,
) -> Result<()> {
    use std::io::Write;
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(output).map_err(|e| Error::io(output, e))?);
    for (row, p) in vote.export_rows().into_iter().zip(pairs) {
        let mut row = row;
        row["line"] = json!(p.line);
        writeln!(f, "{row}")?;
    }
    f.flush()?;
    let (mean, _) = vote.strength();
    let band = band.unwrap_or_else(|| vote.default_band());
    let cats = vote.categories(band);
    let count = |c| cats.iter().filter(|&&x| x == c).count();
    use rewardkit::eval::vote::Category::*;
    println!("vote: {} members x {} pairs -> {}", vote.members(), vote.pairs(), output.display());
    println!(
        "  likely wrong (mean < 0): {} ({:.1}%)   ambiguous (|mean| < {band:.4}): {}   clear: {}",
        count(LikelyWrong),
        100.0 * count(LikelyWrong) as f64 / cats.len() as f64,
        count(Ambiguous),
        count(Clear)
    );
    println!("\n  bucket  count   mean range              mean of mean   mean of std");
    let b = vote.buckets(buckets);
    for x in &b {
        println!(
            "  {:>6}  {:>5}   [{:>8.3}, {:>8.3}]   {:>12.4}   {:>11.4}",
            x.index, x.count, x.min_mean, x.max_mean, x.mean_of_mean, x.mean_of_std
        );
    }
    if let Some(dir) = plot_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let hist = crate::plot::histogram_svg(
            &mean,
            40,
            "Preference strength (mean reward difference)",
            "mean preference difference",
        );
        let xs: Vec<f64> = b.iter().map(|x| x.index as f64).collect();
        let ys: Vec<f64> = b.iter().map(|x| x.mean_of_std).collect();
        let line = crate::plot::line_svg(
            &xs,
            &ys,
            "Std of the difference by strength bucket",
            "bucket (low to high mean)",
            "mean std",
        );
        for (name, svg) in [("strength_histogram.svg", hist), ("bucket_std.svg", line)] {
            let p = dir.join(name);
            std::fs::write(&p, svg).map_err(|e| Error::io(&p, e))?;
        }
        println!("\n  plots: {}/strength_histogram.svg, bucket_std.svg", dir.display());
    }
    Ok(())
}

pub fn ensemble(
    margs: &ModelArgs,
    data: &DataArgs,
    targs: &TrainArgs,
    members: usize,
    shared_backbone: bool,
    buckets: usize,
) -> Result<()> {
    let out = targs.out.clone().ok_or_else(|| Error::invalid("ensemble needs --out"))?;
    let base = margs.load()?;
    let (train_pairs, _) = data.load()?;
    let cfg = targs.config(train_pairs.len())?;
    let first = first_trainable_layer(cfg.trainable, base.info()?.num_layers);
    let set = prepare(&base, &train_pairs, first, !targs.no_cache, "ensemble")?;
    let treatments = cfg.noise.treatments(
        train_pairs.len(),
        strengths_of(&train_pairs).as_deref(),
        alphas_of(&train_pairs).as_deref(),
    )?;
    let started = Instant::now();
    let vote = if shared_backbone {
        let pb = progress::bar(
            (targs.epochs * train_pairs.len().div_ceil(targs.batch_pairs)) as u64,
            "heads",
        );
        let model = rewardkit::train::ensemble::train_multi_head(
            &base,
            &set,
            &treatments,
            &cfg,
            &targs.fit_options(Some(out.join("multi-head"))),
            members,
            |e| {
                if let FitEvent::Step(_) = e {
                    pb.inc(1)
                }
            },
        )?;
        pb.finish_and_clear();
        rewardkit::eval::vote::vote(&[&model], &set)?
    } else {
        let pb = progress::bar(
            (members * targs.epochs * train_pairs.len().div_ceil(targs.batch_pairs)) as u64,
            "members",
        );
        let models = rewardkit::train::ensemble::train_ensemble(
            &base,
            &set,
            &treatments,
            &cfg,
            &targs.fit_options(Some(out.clone())),
            members,
            |_, e| {
                if let FitEvent::Step(_) = e {
                    pb.inc(1)
                }
            },
        )?;
        pb.finish_and_clear();
        let refs: Vec<&SharedModel> = models.iter().map(|m| m.as_ref()).collect();
        rewardkit::eval::vote::vote(&refs, &set)?
    };
    eprintln!(
        "trained {members} {} in {:.1}s",
        if shared_backbone { "heads" } else { "members" },
        started.elapsed().as_secs_f64()
    );
    write_vote(&vote, &train_pairs, &out.join("vote.jsonl"), Some(&out), buckets, None)
}

pub fn vote(
    members: &[PathBuf],
    rt: &RuntimeArgs,
    data: &DataArgs,
    output: &Path,
    plot_dir: Option<&Path>,
    buckets: usize,
    band: Option<f32>,
) -> Result<()> {
    let models = members.iter().map(|m| rt.load(m)).collect::<Result<Vec<_>>>()?;
    let pairs = data.pairs()?;
    let set = PairSet::from_ids(tokenize_pairs(&models[0], &pairs)?);
    let refs: Vec<&SharedModel> = models.iter().collect();
    let vote = rewardkit::eval::vote::vote(&refs, &set)?;
    if vote.members() < 2 {
        return Err(Error::invalid(
            "a vote needs two members or more: several --member models, or a multi-head model",
        ));
    }
    write_vote(&vote, &pairs, output, plot_dir, buckets, band)
}
