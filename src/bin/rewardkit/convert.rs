//! `import-gguf`, `merge-adapter` and `init-tiny`: models made from other sources.

use std::path::Path;
use std::time::Instant;

use rewardkit::model::tiny::{corpus_from_jsonl, create_tiny_model, TinySpec};
use rewardkit::Result;

pub fn import_gguf(gguf: &Path, out: &Path) -> Result<()> {
    let t = Instant::now();
    let r = rewardkit::io::gguf::import_gguf(gguf, out)?;
    let quant: Vec<String> = r.quant_types.iter().map(|(k, n)| format!("{k} x{n}")).collect();
    println!(
        "imported {} ({}): {} layers, hidden {}, vocab {}, {} parameters, tied embeddings: {}; dequantized from {} in {:.1}s -> {}",
        gguf.display(), r.name, r.layers, r.hidden_size, r.vocab_size, r.parameters, r.tied_embeddings, quant.join(", "), t.elapsed().as_secs_f64(), out.display()
    );
    Ok(())
}

pub fn merge_adapter(base: &Path, adapter: &Path, out: &Path) -> Result<()> {
    let t = Instant::now();
    let load =
        rewardkit::LoadOptions { adapter: Some(adapter.to_path_buf()), ..Default::default() };
    let opts = rewardkit::SharedModelOptions { load, ..Default::default() };
    let model = rewardkit::SharedModel::load(base, &opts)?;
    model.read()?.save(out, &model.tokenizer_files()?)?;
    println!(
        "merged {} into {} in {:.1}s -> {}",
        adapter.display(),
        base.display(),
        t.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

pub fn init_tiny(out: &Path, corpus: &Path, seed: u64) -> Result<()> {
    let started = Instant::now();
    let texts = corpus_from_jsonl(corpus)?;
    let spec = TinySpec { seed, ..TinySpec::default() };
    create_tiny_model(out, &texts, &spec)?;
    eprintln!(
        "wrote {} (tokenizer trained on {} texts, seed {seed}) in {:.1}s",
        out.display(),
        texts.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
