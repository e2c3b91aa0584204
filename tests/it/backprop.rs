//! The CPU training engine (`model::backprop`) against candle's autograd of the same model:
//! features and every parameter's gradient, over the configurations the decoder supports.

use candle_core::{DType, Device, Tensor};

use crate::common::{random_cpu_model, relative_error};
use rewardkit::model::backprop::Grads;
use rewardkit::model::tiny::{tiny_config, TinySpec};
use rewardkit::model::{decoder::expected_shapes, Pass, RewardModel};

/// Every parameter of layers `first..` (the embedding too when `first == 0`) has a gradient
/// from the engine of its shape, equal to autograd's to 1e-5 of its scale. Returns how many
/// parameters were compared.
fn assert_grads_match(
    model: &RewardModel,
    reference: &mut candle_core::backprop::GradStore,
    grads: &mut Grads,
    first: usize,
    what: &str,
) -> usize {
    let mut compared = 0;
    for (name, shape) in expected_shapes(model.config()) {
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|l| l.parse::<usize>().ok());
        if layer.is_some_and(|l| l < first) || (first > 0 && name.contains("embed")) {
            continue;
        }
        let want: Vec<f32> = reference
            .remove(model.params().get(&name).unwrap())
            .unwrap_or_else(|| panic!("{what}: autograd gave `{name}` no gradient"))
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got =
            grads.take(&name).unwrap_or_else(|| panic!("{what}: no engine gradient for `{name}`"));
        assert_eq!(got.len(), shape.iter().product::<usize>(), "{what}: `{name}`");
        assert!(want.iter().any(|&x| x != 0.0), "{what}: `{name}` has a zero reference gradient");
        let e = relative_error(&got, &want);
        assert!(e < 1e-5, "{what}: `{name}` differs from autograd by {e}");
        compared += 1;
    }
    compared
}

struct Case {
    window: Option<usize>,
    biases: bool,
    /// The first trained layer (0: the embedding trains too).
    first: usize,
    dropout: f32,
    /// Sequences padded to one length (the autograd path's layout, so that dropout masks
    /// line up), or packed without padding.
    padded: bool,
}

fn model(case: &Case) -> RewardModel {
    let spec = TinySpec {
        vocab_size: 96,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 256,
        seed: 0,
    };
    let mut cfg = tiny_config(&spec).unwrap();
    cfg.sliding_window = case.window;
    cfg.qkv_bias = case.biases;
    cfg.o_bias = case.biases;
    cfg.mlp_bias = case.biases;
    cfg.pad_token_id = Some(0);
    random_cpu_model(cfg, 11, 5, 256)
}

fn check(case: &Case) {
    let model = model(case);
    let mut rng = rewardkit::rng::Rng::new(4);
    // Lengths around the attention kernel's 64-query blocks; some end in pads (pooled before).
    let mut seqs: Vec<Vec<u32>> = [3usize, 70, 64, 1, 129, 20]
        .iter()
        .map(|&n| (0..n).map(|_| 1 + (rng.next_f32() * 90.0) as u32).collect())
        .collect();
    seqs[1].extend([0, 0]);
    if case.padded {
        let t = seqs.iter().map(Vec::len).max().unwrap();
        seqs.iter_mut().for_each(|s| s.resize(t, 0));
    }
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let pass = Pass::Train { dropout: case.dropout, dropout_seed: 77 };
    let h = model.config().hidden_size;
    let weight: Vec<f32> = (0..seqs.len() * h).map(|_| rng.next_f32() - 0.5).collect();
    let weight = Tensor::from_vec(weight, (seqs.len(), h), &Device::Cpu).unwrap();

    // Reference: candle autograd on the padded batch.
    let batch = model.make_batch(&refs).unwrap();
    let want = if case.first == 0 {
        model.features(&batch, pass).unwrap()
    } else {
        let x = model.hidden_before_layer(&batch, case.first, Pass::Inference).unwrap().detach();
        model.features_from(x, case.first, &batch.pool_index, pass).unwrap()
    };
    let mut reference = (&want * &weight).unwrap().sum_all().unwrap().backward().unwrap();

    // The engine.
    let (input, order) = model.engine_input(&refs, case.first).unwrap();
    assert!(order.iter().enumerate().all(|(k, &i)| k == i), "no shared prefixes here");
    let (got, tape) = model.engine_forward(input, pass).unwrap();
    let what = format!(
        "window {:?} biases {} first {} dropout {} padded {}",
        case.window, case.biases, case.first, case.dropout, case.padded
    );
    let (g, w) = (
        got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert!(relative_error(&g, &w) < 1e-5, "{what}: features differ by {}", relative_error(&g, &w));
    let mut grads = Grads::default();
    model.engine_backward(&tape, &weight, &mut grads, None).unwrap();

    let compared = assert_grads_match(&model, &mut reference, &mut grads, case.first, &what);
    assert!(compared >= 10, "{what}");
}

#[test]
fn engine_gradients_match_autograd_on_every_parameter() {
    for case in [
        Case { window: None, biases: false, first: 0, dropout: 0.0, padded: false },
        Case { window: Some(9), biases: true, first: 0, dropout: 0.0, padded: false },
        Case { window: None, biases: true, first: 0, dropout: 0.2, padded: true },
        Case { window: Some(40), biases: false, first: 1, dropout: 0.1, padded: true },
        Case { window: None, biases: false, first: 2, dropout: 0.0, padded: false },
    ] {
        check(&case);
    }
}

/// A second view that branches off at layer `at` (the contrastive views' shared trunk): the
/// engine's joint backward equals autograd of the same two-view graph, where view 2 reads
/// view 1's hidden states entering layer `at` and runs the layers above with its own masks.
#[test]
fn a_branch_joins_the_backward_like_autograd() {
    let case = Case { window: None, biases: true, first: 0, dropout: 0.2, padded: true };
    let model = model(&case);
    let mut rng = rewardkit::rng::Rng::new(6);
    let t = 40;
    let seqs: Vec<Vec<u32>> =
        (0..4).map(|_| (0..t).map(|_| 1 + (rng.next_f32() * 90.0) as u32).collect()).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let (pass1, pass2) = (
        Pass::Train { dropout: 0.2, dropout_seed: 1 },
        Pass::Train { dropout: 0.2, dropout_seed: 2 },
    );
    let h = model.config().hidden_size;
    let mut weight = || {
        let w: Vec<f32> = (0..seqs.len() * h).map(|_| rng.next_f32() - 0.5).collect();
        Tensor::from_vec(w, (seqs.len(), h), &Device::Cpu).unwrap()
    };
    let (w1, w2) = (weight(), weight());
    for at in [1, 2] {
        let batch = model.make_batch(&refs).unwrap();
        let f1 = model.features(&batch, pass1).unwrap();
        let x_at = model.hidden_before_layer(&batch, at, pass1).unwrap();
        let f2 = model.features_from(x_at, at, &batch.pool_index, pass2).unwrap();
        let objective = ((&f1 * &w1).unwrap().sum_all().unwrap()
            + (&f2 * &w2).unwrap().sum_all().unwrap())
        .unwrap();
        let mut reference = objective.backward().unwrap();

        let (input, _) = model.engine_input(&refs, 0).unwrap();
        let (g1, tape) = model.engine_forward(input, pass1).unwrap();
        let (g2, branch) = model.engine_branch(&tape, at, pass2).unwrap();
        for (got, want) in [(&g1, &f1), (&g2, &f2)] {
            let (g, w) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(relative_error(&g, &w) < 1e-5, "branch at {at}: features differ");
        }
        let mut grads = Grads::default();
        model.engine_backward(&tape, &w1, &mut grads, Some((&branch, &w2))).unwrap();
        assert_grads_match(&model, &mut reference, &mut grads, 0, &format!("branch at {at}"));
    }
}

/// Sequences that share their first tokens (a pair's prompt) run with the prefix stored once:
/// features and every gradient equal autograd on the padded batch of whole sequences.
#[test]
fn shared_prefixes_train_like_whole_sequences() {
    for first in [0, 1] {
        let case = Case { window: None, biases: true, first, dropout: 0.0, padded: false };
        let model = model(&case);
        let mut rng = rewardkit::rng::Rng::new(21);
        let mut tokens =
            |n: usize| -> Vec<u32> { (0..n).map(|_| 1 + (rng.next_f32() * 90.0) as u32).collect() };
        let (p1, p2) = (tokens(50), tokens(80));
        let cat = |a: &[u32], b: Vec<u32>| [a.to_vec(), b].concat();
        let seqs: Vec<Vec<u32>> = vec![
            cat(&p1, tokens(12)),
            tokens(30),
            cat(&p2, tokens(70)),
            cat(&p1, tokens(3)),
            cat(&p2, vec![]),
            cat(&p2, [tokens(5), vec![0, 0]].concat()), // trailing pads
        ];
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let pass = Pass::Train { dropout: 0.0, dropout_seed: 3 };
        let h = model.config().hidden_size;
        let weight: Vec<f32> = (0..seqs.len() * h).map(|_| rng.next_f32() - 0.5).collect();
        let weight = Tensor::from_vec(weight, (seqs.len(), h), &Device::Cpu).unwrap();

        let batch = model.make_batch(&refs).unwrap();
        let want = if first == 0 {
            model.features(&batch, pass).unwrap()
        } else {
            let x = model.hidden_before_layer(&batch, first, Pass::Inference).unwrap().detach();
            model.features_from(x, first, &batch.pool_index, pass).unwrap()
        };
        let mut reference = (&want * &weight).unwrap().sum_all().unwrap().backward().unwrap();

        let (input, order) = model.engine_input(&refs, first).unwrap();
        assert_eq!(input.groups.iter().filter(|(p, _)| *p > 0).count(), 2, "{:?}", input.groups);
        let order_t = Tensor::from_vec(
            order.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            order.len(),
            &Device::Cpu,
        )
        .unwrap();
        let (got, tape) = model.engine_forward(input, pass).unwrap();
        let want_in_order = want.index_select(&order_t, 0).unwrap();
        let (g, w) = (
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want_in_order.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(
            relative_error(&g, &w) < 1e-5,
            "first {first}: features differ by {}",
            relative_error(&g, &w)
        );
        let mut grads = Grads::default();
        let weight_in_order = weight.index_select(&order_t, 0).unwrap();
        model.engine_backward(&tape, &weight_in_order, &mut grads, None).unwrap();
        assert_grads_match(&model, &mut reference, &mut grads, first, &format!("first {first}"));
    }
}

/// LoRA factors read unmerged (`y = x Wᵀ + s · (m ⊙ x) Aᵀ Bᵀ`): with only the factors wanted,
/// the engine gives A and B the gradients autograd gives them (LoRA dropout and residual
/// dropout on, padded so that the masks line up), and forms no gradient of a frozen weight.
#[test]
fn lora_factor_gradients_match_autograd_without_weight_gradients() {
    use rewardkit::model::lora::LoraSpec;
    for (lora_dropout, targets) in [(0.0, 0x7F), (0.3, LoraSpec::parse_targets("q,o,up").unwrap())]
    {
        let case = Case { window: None, biases: true, first: 0, dropout: 0.1, padded: true };
        let mut model = model(&case);
        let spec = LoraSpec { r: 3, alpha: 6.0, rslora: false, targets, dropout: lora_dropout };
        let factors = model.attach_lora(&spec, 5).unwrap();
        // B starts at zero (PEFT's init), which would hide A's gradient: give it values.
        let mut rng = rewardkit::rng::Rng::new(8);
        for (name, var) in model.params().iter().filter(|(n, _)| n.ends_with("lora_B.weight")) {
            let v: Vec<f32> = (0..var.elem_count()).map(|_| 0.2 * (rng.next_f32() - 0.5)).collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
            assert!(factors.iter().any(|f| f == name));
        }
        let seqs: Vec<Vec<u32>> =
            (0..4).map(|_| (0..33).map(|_| 1 + (rng.next_f32() * 90.0) as u32).collect()).collect();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let pass = Pass::Train { dropout: 0.1, dropout_seed: 12 };
        let h = model.config().hidden_size;
        let w: Vec<f32> = (0..seqs.len() * h).map(|_| rng.next_f32() - 0.5).collect();
        let weight = Tensor::from_vec(w, (seqs.len(), h), &Device::Cpu).unwrap();

        let want = model.features(&model.make_batch(&refs).unwrap(), pass).unwrap();
        let mut reference = (&want * &weight).unwrap().sum_all().unwrap().backward().unwrap();
        let (input, _) = model.engine_input(&refs, 0).unwrap();
        let (got, tape) = model.engine_forward(input, pass).unwrap();
        let (g, w) = (
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let what = format!("lora dropout {lora_dropout}");
        assert!(relative_error(&g, &w) < 1e-5, "{what}: features differ");
        let mut grads = Grads::only(factors.iter().cloned());
        model.engine_backward(&tape, &weight, &mut grads, None).unwrap();
        for name in &factors {
            let want: Vec<f32> = reference
                .remove(model.params().get(name).unwrap())
                .unwrap_or_else(|| panic!("{what}: autograd gave `{name}` no gradient"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = grads.take(name).unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
            assert!(want.iter().any(|&x| x != 0.0), "{what}: `{name}` has a zero gradient");
            let e = relative_error(&got, &want);
            assert!(e < 1e-5, "{what}: `{name}` differs from autograd by {e}");
        }
        for (name, _) in expected_shapes(model.config()) {
            assert!(grads.get(&name).is_none(), "{what}: a gradient for frozen `{name}`");
        }
        // Dropout on the branch changes the features (and nothing at inference).
        if lora_dropout > 0.0 {
            let mut no_drop = model;
            no_drop.set_lora_dropout(0.0).unwrap();
            let plain = no_drop.features(&no_drop.make_batch(&refs).unwrap(), pass).unwrap();
            let p = plain.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(relative_error(&p, &w) > 1e-4, "{what}: LoRA dropout changed nothing");
        }
    }
}
