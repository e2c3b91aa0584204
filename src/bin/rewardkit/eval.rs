//! `eval`: accuracy, margins, reward statistics, accuracy by strength bucket, agreement with an
//! external label.

use std::path::Path;

use rewardkit::train::{tokenize_pairs, PairSet};
use rewardkit::{Error, Result};

use crate::args::{DataArgs, ModelArgs};
use crate::train::report;

pub fn eval(
    margs: &ModelArgs,
    data: &DataArgs,
    buckets: usize,
    json_out: Option<&Path>,
) -> Result<()> {
    let model = margs.load()?;
    let (train, held_out) = data.load(&model)?;
    // With a held-out split, evaluate on it; otherwise on every pair given.
    let pairs = if held_out.is_empty() { train } else { held_out };
    let set = PairSet::from_ids(tokenize_pairs(&model, &pairs)?);
    let r = report(&model, &set, &pairs, buckets)?;
    println!("{}", r.table());
    if let Some(p) = json_out {
        std::fs::write(p, serde_json::to_vec_pretty(&r).expect("serializable"))
            .map_err(|e| Error::io(p, e))?;
    }
    Ok(())
}
