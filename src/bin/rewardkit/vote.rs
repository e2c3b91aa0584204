//! `ensemble` and `vote`: the paper's preference strength, exported in the authors' format,
//! with categories, the per-bucket table and plots.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use rewardkit::eval::vote::{merge_shards, vote_out_of_fold, vote_shard, Vote, VoteShard};
use rewardkit::io::data::read_jsonl;
use rewardkit::train::ensemble::Folds;
use rewardkit::train::{first_trainable_layer, tokenize_pairs, FitEvent, PairSet, Shard};
use rewardkit::{Error, ErrorKind, Result, SharedModel};

use crate::args::{DataArgs, ModelArgs, RuntimeArgs, TrainArgs};
use crate::progress;
use crate::train::{alphas_of, prepare, strengths_of};

/// How a vote is reported: plots, strength buckets, the ambiguity band.
pub struct Report<'a> {
    pub plot_dir: Option<&'a Path>,
    pub buckets: usize,
    pub band: Option<f32>,
}

fn create(output: &Path) -> Result<std::io::BufWriter<std::fs::File>> {
    Ok(std::io::BufWriter::new(std::fs::File::create(output).map_err(|e| Error::io(output, e))?))
}

/// Writes the per-pair rows (`lines[i]`: pair i's source line) and prints the report.
fn write_vote(vote: &Vote, lines: &[usize], output: &Path, report: &Report) -> Result<()> {
    use std::io::Write;
    let mut f = create(output)?;
    for (row, &line) in vote.export_rows().into_iter().zip(lines) {
        let mut row = row;
        row["line"] = json!(line);
        writeln!(f, "{row}")?;
    }
    f.flush()?;
    let (plot_dir, buckets) = (report.plot_dir, report.buckets);
    let (mean, _) = vote.strength();
    let band = report.band.unwrap_or_else(|| vote.default_band());
    let cats = vote.categories(band);
    let count = |c| cats.iter().filter(|&&x| x == c).count();
    use rewardkit::eval::vote::Category::*;
    let voters: Vec<usize> = (0..vote.pairs()).map(|i| vote.voters(i)).collect();
    let (lo, hi) =
        (voters.iter().min().copied().unwrap_or(0), voters.iter().max().copied().unwrap_or(0));
    println!(
        "vote: {} members x {} pairs, {} -> {}",
        vote.members(),
        vote.pairs(),
        if lo == hi {
            format!("{lo} voters per pair")
        } else {
            format!("{lo}-{hi} voters per pair")
        },
        output.display()
    );
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
            true,
        );
        for (name, svg) in [("strength_histogram.svg", hist), ("bucket_std.svg", line)] {
            let p = dir.join(name);
            std::fs::write(&p, svg).map_err(|e| Error::io(&p, e))?;
        }
        println!("\n  plots: {}/strength_histogram.svg, bucket_std.svg", dir.display());
    }
    Ok(())
}

/// How an ensemble is laid out.
pub struct Layout {
    pub members: usize,
    pub shared_backbone: bool,
    /// Out-of-fold folds; 0 = in sample.
    pub folds: usize,
}

const FOLDS_FILE: &str = "folds.json";

/// A fold layout on disk: the fold of each pair, keyed by the pair's line in the data file, so
/// a vote reads it back whatever order it loads the pairs in (training shuffles them).
#[derive(serde::Serialize, serde::Deserialize)]
struct FoldsFile {
    k: usize,
    seed: u64,
    /// (source line, fold) per pair.
    lines: Vec<(usize, usize)>,
}

/// Saves the fold layout beside the members (atomically: a reader never sees half).
fn save_folds(out: &Path, folds: &Folds, lines: &[usize]) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let file = FoldsFile {
        k: folds.k,
        seed: folds.seed,
        lines: lines.iter().copied().zip(folds.fold_of.iter().copied()).collect(),
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| Error::invalid(e.to_string()))?;
    rewardkit::fsutil::write_file_atomic(&out.join(FOLDS_FILE), &bytes)
}

/// The layout saved by `ensemble --folds`, for the pairs at `lines` (in their order here).
fn load_folds(path: &Path, lines: &[usize]) -> Result<Folds> {
    // Two indices per pair, a few bytes each: far below this for any dataset we accept.
    let cap = 64 * rewardkit::limits::MAX_ITEMS_PER_CALL as u64 + 4096;
    let bytes = rewardkit::limits::read_file(path, cap)?;
    let corrupt = |what: String| {
        Error::new(
            ErrorKind::CorruptFile,
            format!("{}: not a fold layout ({what})", path.display()),
        )
    };
    let file: FoldsFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.lines.len() != lines.len() {
        return Err(Error::invalid(format!(
            "{}: the folds cover {} pairs, the data has {}",
            path.display(),
            file.lines.len(),
            lines.len()
        )));
    }
    let by_line: std::collections::HashMap<usize, usize> = file.lines.iter().copied().collect();
    if by_line.len() != file.lines.len() {
        return Err(corrupt("a line appears twice".into()));
    }
    let fold_of = lines
        .iter()
        .map(|l| {
            by_line.get(l).copied().ok_or_else(|| {
                Error::invalid(format!(
                    "{}: the pair at line {l} is not in the fold layout (another data file?)",
                    path.display()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let folds = Folds { k: file.k, seed: file.seed, fold_of };
    folds.validate(lines.len()).map_err(|e| e.context(path.display().to_string()))?;
    Ok(folds)
}

pub fn ensemble(
    margs: &ModelArgs,
    data: &DataArgs,
    targs: &TrainArgs,
    layout: Layout,
    buckets: usize,
    shard: Option<Shard>,
) -> Result<()> {
    let Layout { members, shared_backbone, folds } = layout;
    let out = targs.out.clone().ok_or_else(|| Error::invalid("ensemble needs --out"))?;
    if shard.is_some() && shared_backbone {
        return Err(Error::invalid(
            "--shard splits separate members; a shared backbone is one model",
        ));
    }
    if folds > 0 && members < folds {
        return Err(Error::invalid(format!(
            "--folds {folds} needs at least {folds} members (one per held-out fold); got {members}"
        )));
    }
    let base = margs.load()?;
    let (train_pairs, _) = data.load(&base)?;
    let cfg = targs.config(train_pairs.len())?;
    let folds = match folds {
        0 => None,
        k => Some(Folds::new(train_pairs.len(), k, cfg.seed)?),
    };
    let first = first_trainable_layer(cfg.trainable, base.info()?.num_layers);
    let set = prepare(&base, &train_pairs, first, !targs.no_cache, "ensemble")?;
    let treatments = cfg.noise.treatments(
        train_pairs.len(),
        strengths_of(&train_pairs).as_deref(),
        alphas_of(&train_pairs).as_deref(),
    )?;
    if let Some(f) = &folds {
        save_folds(&out, f, &train_pairs.iter().map(|p| p.line).collect::<Vec<_>>())?;
    }
    // Optimizer steps of member m, for the progress bar.
    let steps_of = |m: usize| {
        let n = folds.as_ref().map_or(train_pairs.len(), |f| f.training_pairs(m).len());
        (targs.epochs * n.div_ceil(targs.batch_pairs.max(1))) as u64
    };
    if let Some(shard) = shard {
        let mine: Vec<usize> = (0..members).filter(|&m| shard.takes(m)).collect();
        if mine.is_empty() {
            return Err(Error::invalid(format!("shard {shard} of {members} members has none")));
        }
        let started = Instant::now();
        let pb = progress::bar(mine.iter().map(|&m| steps_of(m)).sum(), "members");
        rewardkit::train::ensemble::train_ensemble(
            &base,
            &set,
            &treatments,
            &cfg,
            &targs.fit_options(Some(out.clone())),
            folds.as_ref(),
            mine.iter().copied(),
            |_, e| {
                if let FitEvent::Step(_) = e {
                    pb.inc(1)
                }
            },
        )?;
        pb.finish_and_clear();
        let dirs: Vec<String> =
            mine.iter().map(|m| out.join(format!("member-{m}")).display().to_string()).collect();
        println!(
            "shard {shard}: trained members {mine:?} in {:.1}s -> {}",
            started.elapsed().as_secs_f64(),
            dirs.join(", ")
        );
        // LoRA members are adapters over the model they were trained from.
        let base = match targs.trainable {
            rewardkit::train::Trainable::Lora(_) => format!(" --base {}", margs.model.display()),
            _ => String::new(),
        };
        println!(
            "when every shard is done: rewardkit vote{base} --member {}/member-0 ... --member \
             {}/member-{} --data ...{} --output vote.jsonl",
            out.display(),
            out.display(),
            members - 1,
            if folds.is_some() {
                format!(" --folds {}", out.join(FOLDS_FILE).display())
            } else {
                String::new()
            }
        );
        return Ok(());
    }
    let started = Instant::now();
    let vote = if shared_backbone {
        let pb = progress::bar(steps_of(0), "heads");
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
        progress::scoring(2 * set.len(), |f| rewardkit::eval::vote::vote(&[&model], &set, f))?
    } else {
        let pb = progress::bar((0..members).map(steps_of).sum(), "members");
        let models = rewardkit::train::ensemble::train_ensemble(
            &base,
            &set,
            &treatments,
            &cfg,
            &targs.fit_options(Some(out.clone())),
            folds.as_ref(),
            0..members,
            |_, e| {
                if let FitEvent::Step(_) = e {
                    pb.inc(1)
                }
            },
        )?;
        pb.finish_and_clear();
        let refs: Vec<&SharedModel> = models.iter().map(|m| m.as_ref()).collect();
        match &folds {
            Some(folds) => progress::scoring(out_of_fold_sequences(folds, refs.len()), |f| {
                vote_out_of_fold(&refs, &set, folds, f)
            })?,
            None => progress::scoring(2 * set.len() * refs.len(), |f| {
                rewardkit::eval::vote::vote(&refs, &set, f)
            })?,
        }
    };
    eprintln!(
        "trained {members} {}{} in {:.1}s",
        if shared_backbone { "heads" } else { "members" },
        folds.as_ref().map_or(String::new(), |f| format!(" out of fold ({} folds)", f.k)),
        started.elapsed().as_secs_f64()
    );
    let lines: Vec<usize> = train_pairs.iter().map(|p| p.line).collect();
    let report = Report { plot_dir: Some(&out), buckets, band: None };
    write_vote(&vote, &lines, &out.join("vote.jsonl"), &report)
}

/// The models of a vote: checkpoint directories, or adapter directories over one base.
pub struct Members<'a> {
    pub dirs: &'a [PathBuf],
    pub base: Option<&'a Path>,
}

impl Members<'_> {
    fn load(&self, rt: &RuntimeArgs) -> Result<Vec<SharedModel>> {
        match self.base {
            None => self.dirs.iter().map(|m| rt.load(m)).collect(),
            Some(base) => {
                let base = std::sync::Arc::new(rt.load(base)?);
                self.dirs.iter().map(|m| base.with_adapter(m)).collect()
            }
        }
    }
}

pub fn vote(
    members: Members,
    rt: &RuntimeArgs,
    data: &DataArgs,
    shard: Option<Shard>,
    folds: Option<&Path>,
    output: &Path,
    report: &Report,
) -> Result<()> {
    let models = members.load(rt)?;
    let pairs = data.pairs(&models[0])?;
    let set = PairSet::from_ids(tokenize_pairs(&models[0], &pairs)?);
    let refs: Vec<&SharedModel> = models.iter().collect();
    let lines: Vec<usize> = pairs.iter().map(|p| p.line).collect();
    if let Some(path) = folds {
        let folds = load_folds(path, &lines)?;
        // Each pair is scored by the members that held out its fold.
        let total = out_of_fold_sequences(&folds, refs.len());
        let vote = progress::scoring(total, |f| vote_out_of_fold(&refs, &set, &folds, f))?;
        return write_vote(&vote, &lines, output, report);
    }
    if let Some(shard) = shard {
        // About a shard's part of the sequences: the planner's batches are dealt round robin.
        let about = (2 * set.len() * refs.len()).div_ceil(shard.count);
        let part = progress::scoring(about, |f| vote_shard(&refs, &set, shard, f))?;
        check_members(part.members)?;
        write_shard(&part, &lines, output)?;
        println!(
            "vote shard {shard}: {} of {} scores ({} members x {} pairs) -> {}",
            part.rows.len(),
            2 * part.pairs,
            part.members,
            part.pairs,
            output.display()
        );
        return Ok(());
    }
    let vote = progress::scoring(2 * set.len() * refs.len(), |f| {
        rewardkit::eval::vote::vote(&refs, &set, f)
    })?;
    check_members(vote.members())?;
    write_vote(&vote, &lines, output, report)
}

/// Sequences an out-of-fold vote scores: each member's held-out pairs, both sides.
fn out_of_fold_sequences(folds: &Folds, members: usize) -> usize {
    2 * (0..members).map(|m| folds.voting_pairs(m).len()).sum::<usize>()
}

fn check_members(members: usize) -> Result<()> {
    if members < 2 {
        return Err(Error::invalid(
            "a vote needs two members or more: several --member models, or a multi-head model",
        ));
    }
    Ok(())
}

// A vote shard file (JSONL): a header row, then one row per scored sequence:
//   {"rewardkit_vote_shard": {"shard": "0/2", "pairs": 500, "members": 3}}
//   {"row": 17, "line": 18, "scores": [0.1234, ...]}
// Row i < pairs is pair i's chosen response, row pairs + i its rejected one; `line` is the
// pair's source line; `scores` has one float per member, written as the f64 of the f32, so it
// reads back to the same bits.
const SHARD_KEY: &str = "rewardkit_vote_shard";

fn write_shard(part: &VoteShard, lines: &[usize], output: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = create(output)?;
    let header = json!({SHARD_KEY: {"shard": part.shard.to_string(), "pairs": part.pairs, "members": part.members}});
    writeln!(f, "{header}")?;
    for (row, scores) in &part.rows {
        let line = lines[row % part.pairs];
        let scores: Vec<f64> = scores.iter().map(|&x| x as f64).collect();
        writeln!(f, "{}", json!({"row": row, "line": line, "scores": scores}))?;
    }
    f.flush()?;
    Ok(())
}

/// A shard file back: the shard, and (row, line) of each score row.
fn read_shard(path: &Path) -> Result<(VoteShard, Vec<(usize, usize)>)> {
    let bad = |line: usize, what: &str| {
        Error::new(ErrorKind::CorruptFile, format!("{} line {line}: {what}", path.display()))
    };
    let mut rows = read_jsonl(path)?.into_iter();
    let (first_line, header) = rows.next().ok_or_else(|| bad(1, "empty; not a vote shard"))?;
    let h = header.get(SHARD_KEY).ok_or_else(|| {
        bad(first_line, "not a vote shard (written by `rewardkit vote --shard i/n`)")
    })?;
    let count = |key: &str| {
        h.get(key)
            .and_then(|v| v.as_u64())
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| bad(first_line, &format!("header without a count `{key}`")))
    };
    let shard: Shard = h
        .get("shard")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad(first_line, "header without `shard`"))?
        .parse()
        .map_err(|e: Error| bad(first_line, &e.to_string()))?;
    let (pairs, members) = (count("pairs")?, count("members")?);
    let mut out = VoteShard { shard, pairs, members, rows: Vec::new() };
    let mut lines = Vec::new();
    for (n, row) in rows {
        let field = |key: &str| {
            row.get(key)
                .and_then(|v| v.as_u64())
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| bad(n, &format!("no `{key}`")))
        };
        let (r, line) = (field("row")?, field("line")?);
        let scores = row
            .get("scores")
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad(n, "no `scores` list"))?
            .iter()
            .map(|x| match x.as_f64() {
                Some(x) if x.is_finite() && x as f32 as f64 == x => Ok(x as f32),
                _ => Err(bad(n, "a score that is not a finite float32")),
            })
            .collect::<Result<Vec<f32>>>()?;
        out.rows.push((r, scores));
        lines.push((r, line));
    }
    Ok((out, lines))
}

/// `vote --merge`: the shards of one `vote --shard i/n` job into the one-process vote file.
pub fn merge(paths: &[PathBuf], output: &Path, report: &Report) -> Result<()> {
    let mut shards = Vec::with_capacity(paths.len());
    let mut row_lines = Vec::new();
    for p in paths {
        let (shard, lines) = read_shard(p)?;
        shards.push(shard);
        row_lines.extend(lines);
    }
    let pairs = shards.first().map_or(0, |s| s.pairs);
    let vote = merge_shards(shards)?;
    check_members(vote.members())?;
    // merge_shards checked every row exactly once; both sides of a pair name the same line.
    let mut lines = vec![None; pairs];
    for (row, line) in row_lines {
        let slot = &mut lines[row % pairs];
        if slot.is_some_and(|l| l != line) {
            return Err(Error::invalid(format!(
                "pair {}: its two responses name different source lines",
                row % pairs
            )));
        }
        *slot = Some(line);
    }
    let lines: Vec<usize> = lines.into_iter().map(|l| l.unwrap_or(0)).collect();
    write_vote(&vote, &lines, output, report)
}
