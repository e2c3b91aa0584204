//! The C ABI called from Rust: statuses, messages, and no crash on bad input.

use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};

use crate::common::{fixture, tiny_model};
use rewardkit::ffi::*;

fn last_error() -> String {
    unsafe { CStr::from_ptr(rk_last_error_message()) }.to_string_lossy().into_owned()
}

fn model_params() -> rk_model_params {
    let mut p = std::mem::MaybeUninit::<rk_model_params>::uninit();
    assert_eq!(
        unsafe { rk_model_params_init(p.as_mut_ptr(), std::mem::size_of::<rk_model_params>()) },
        rk_status::RK_OK
    );
    unsafe { p.assume_init() }
}

fn trainer_params() -> rk_trainer_params {
    let mut p = std::mem::MaybeUninit::<rk_trainer_params>::uninit();
    assert_eq!(
        unsafe { rk_trainer_params_init(p.as_mut_ptr(), std::mem::size_of::<rk_trainer_params>()) },
        rk_status::RK_OK
    );
    unsafe { p.assume_init() }
}

fn load(dir: &std::path::Path) -> *mut rk_model {
    let path = CString::new(dir.to_str().unwrap()).unwrap();
    let mut model = null_mut();
    let status = unsafe { rk_model_load(path.as_ptr(), null(), &mut model) };
    assert_eq!(status, rk_status::RK_OK, "{}", last_error());
    model
}

#[test]
fn load_score_info_free() {
    let model = load(tiny_model());
    let prompts =
        [CString::new("\n\nHuman: hi\n\nAssistant:").unwrap(), CString::new("Q:").unwrap()];
    let responses = [CString::new(" hello there").unwrap(), CString::new(" A").unwrap()];
    let p: Vec<*const c_char> = prompts.iter().map(|s| s.as_ptr()).collect();
    let r: Vec<*const c_char> = responses.iter().map(|s| s.as_ptr()).collect();
    let mut out = [0f32; 2];
    assert_eq!(
        unsafe { rk_model_score_texts(model, p.as_ptr(), r.as_ptr(), 2, out.as_mut_ptr()) },
        rk_status::RK_OK
    );

    // The same through tokens: tokenize, then score ids.
    let mut ids = vec![0u32; 4096];
    let mut flat = Vec::new();
    let mut offsets = vec![0usize];
    for i in 0..2 {
        let mut n = 0;
        assert_eq!(
            unsafe { rk_model_tokenize(model, p[i], r[i], ids.as_mut_ptr(), ids.len(), &mut n) },
            rk_status::RK_OK
        );
        flat.extend_from_slice(&ids[..n]);
        offsets.push(flat.len());
    }
    let mut out2 = [0f32; 2];
    assert_eq!(
        unsafe {
            rk_model_score_tokens(model, flat.as_ptr(), offsets.as_ptr(), 2, out2.as_mut_ptr())
        },
        rk_status::RK_OK
    );
    assert_eq!(out, out2);

    let mut info: rk_model_info = unsafe { std::mem::zeroed() };
    info.struct_size = std::mem::size_of::<rk_model_info>();
    assert_eq!(unsafe { rk_model_get_info(model, &mut info) }, rk_status::RK_OK);
    assert_eq!(unsafe { CStr::from_ptr(info.architecture.as_ptr()) }.to_str().unwrap(), "llama");
    assert_eq!(unsafe { CStr::from_ptr(info.device.as_ptr()) }.to_str().unwrap(), "cpu");
    assert_eq!((info.num_layers, info.hidden_size, info.dtype), (4, 256, RK_DTYPE_F32));
    assert!(info.has_tokenizer == 1 && info.head_is_fresh == 0 && info.num_parameters > 1_000_000);
    unsafe { rk_model_free(model) };
    unsafe { rk_model_free(null_mut()) };
}

#[test]
fn bad_arguments_come_back_as_statuses() {
    use rk_status::*;
    let model = load(&fixture("llama_gqa"));
    let mut out = [0f32; 4];
    let ids = [1u32, 2, 3, 4];
    unsafe {
        // NULL pointers, each named.
        assert_eq!(
            rk_model_score_tokens(null(), ids.as_ptr(), [0usize, 4].as_ptr(), 1, out.as_mut_ptr()),
            RK_ERR_NULL_POINTER
        );
        assert!(last_error().contains("model"));
        assert_eq!(
            rk_model_score_tokens(model, null(), [0usize, 4].as_ptr(), 1, out.as_mut_ptr()),
            RK_ERR_NULL_POINTER
        );
        assert!(last_error().contains("ids"), "{}", last_error());
        assert_eq!(
            rk_model_score_tokens(model, ids.as_ptr(), [0usize, 4].as_ptr(), 1, null_mut()),
            RK_ERR_NULL_POINTER
        );
        assert!(last_error().contains("out_rewards"));
        // Zero counts, empty and decreasing offsets.
        assert_eq!(
            rk_model_score_tokens(model, ids.as_ptr(), [0usize].as_ptr(), 0, out.as_mut_ptr()),
            RK_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            rk_model_score_tokens(
                model,
                ids.as_ptr(),
                [0usize, 2, 2].as_ptr(),
                2,
                out.as_mut_ptr()
            ),
            RK_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("sequence 1 is empty"), "{}", last_error());
        assert_eq!(
            rk_model_score_tokens(
                model,
                ids.as_ptr(),
                [0usize, 3, 1].as_ptr(),
                2,
                out.as_mut_ptr()
            ),
            RK_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            rk_model_score_tokens(model, ids.as_ptr(), [1usize, 3].as_ptr(), 1, out.as_mut_ptr()),
            RK_ERR_INVALID_ARGUMENT
        );
        // Out-of-vocabulary id.
        let bad = [1u32, 99_999];
        assert_eq!(
            rk_model_score_tokens(model, bad.as_ptr(), [0usize, 2].as_ptr(), 1, out.as_mut_ptr()),
            RK_ERR_OUT_OF_VOCAB
        );
        assert!(last_error().contains("99999"), "{}", last_error());
        // Invalid UTF-8 in a text argument.
        let bad_utf8 = b"caf\xe9\0";
        let ok = CString::new("x").unwrap();
        let prompts = [bad_utf8.as_ptr() as *const c_char];
        let responses = [ok.as_ptr()];
        assert_eq!(
            rk_model_score_texts(model, prompts.as_ptr(), responses.as_ptr(), 1, out.as_mut_ptr()),
            RK_ERR_INVALID_UTF8
        );
        assert!(last_error().contains("prompts[0]"), "{}", last_error());
        let null_entry = [null::<c_char>()];
        assert_eq!(
            rk_model_score_texts(
                model,
                responses.as_ptr(),
                null_entry.as_ptr(),
                1,
                out.as_mut_ptr()
            ),
            RK_ERR_NULL_POINTER
        );
        assert!(last_error().contains("responses[0]"), "{}", last_error());
        // A buffer too small reports the size needed.
        let mut n = 0usize;
        let mut small = [0u32; 1];
        assert_eq!(
            rk_model_tokenize(model, ok.as_ptr(), ok.as_ptr(), small.as_mut_ptr(), 1, &mut n),
            RK_ERR_BUFFER_TOO_SMALL
        );
        assert!(n > 1);
        // info with a bad struct_size.
        let mut info: rk_model_info = std::mem::zeroed();
        assert_eq!(rk_model_get_info(model, &mut info), RK_ERR_INVALID_ARGUMENT);
        rk_model_free(model);
    }
}

#[test]
fn load_failures_leave_null_and_a_message() {
    use rk_status::*;
    let mut model = 1usize as *mut rk_model;
    let path = CString::new("/definitely/not/here").unwrap();
    assert_eq!(unsafe { rk_model_load(path.as_ptr(), null(), &mut model) }, RK_ERR_NOT_FOUND);
    assert!(model.is_null());
    assert!(last_error().contains("/definitely/not/here"));
    assert_eq!(unsafe { rk_model_load(null(), null(), &mut model) }, RK_ERR_NULL_POINTER);
    assert_eq!(unsafe { rk_model_load(path.as_ptr(), null(), null_mut()) }, RK_ERR_NULL_POINTER);

    let dir = CString::new(fixture("llama_gqa").to_str().unwrap()).unwrap();
    let mut params = model_params();
    params.struct_size = 8;
    assert_eq!(
        unsafe { rk_model_load(dir.as_ptr(), &params, &mut model) },
        RK_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("struct_size"));
    params = model_params();
    params.dtype = 42;
    assert_eq!(
        unsafe { rk_model_load(dir.as_ptr(), &params, &mut model) },
        RK_ERR_INVALID_ARGUMENT
    );
    params = model_params();
    let cuda = CString::new("cuda:0").unwrap();
    params.device = cuda.as_ptr();
    let expected = if cfg!(feature = "cuda") { RK_OK } else { RK_ERR_DEVICE };
    let status = unsafe { rk_model_load(dir.as_ptr(), &params, &mut model) };
    if status == RK_OK {
        unsafe { rk_model_free(model) };
    } else {
        assert_eq!(status, expected, "{}", last_error());
    }
    params = model_params();
    params.max_length = 100_000;
    assert_eq!(
        unsafe { rk_model_load(dir.as_ptr(), &params, &mut model) },
        RK_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("max_position_embeddings"));
}

#[test]
fn errors_are_per_thread() {
    let path = CString::new("/nope").unwrap();
    let mut model = null_mut();
    assert_eq!(
        unsafe { rk_model_load(path.as_ptr(), null(), &mut model) },
        rk_status::RK_ERR_NOT_FOUND
    );
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "");
    assert!(last_error().contains("/nope"));
}

#[test]
fn version_and_names() {
    let v = unsafe { CStr::from_ptr(rk_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let n = rk_version_number();
    let parts: Vec<u32> = v.split('.').map(|x| x.parse().unwrap()).collect();
    assert_eq!(n, parts[0] * 10_000 + parts[1] * 100 + parts[2]);
    let name = |s| unsafe { CStr::from_ptr(rk_status_name(s)) }.to_str().unwrap();
    assert_eq!(name(0), "RK_OK");
    assert_eq!(name(rk_status::RK_ERR_OUT_OF_VOCAB as i32), "RK_ERR_OUT_OF_VOCAB");
    assert_eq!(name(-7), "RK_UNKNOWN_STATUS");
}

#[test]
fn shared_handle_from_eight_threads() {
    struct Handle(*mut rk_model);
    unsafe impl Send for Handle {}
    unsafe impl Sync for Handle {}
    let model = std::sync::Arc::new(Handle(load(tiny_model())));
    let pairs = crate::common::hh_pairs(8);
    let score = move |h: &Handle, pairs: &[(String, String)]| -> Vec<f32> {
        let cs: Vec<(CString, CString)> = pairs
            .iter()
            .map(|(p, r)| (CString::new(p.as_str()).unwrap(), CString::new(r.as_str()).unwrap()))
            .collect();
        let p: Vec<*const c_char> = cs.iter().map(|c| c.0.as_ptr()).collect();
        let r: Vec<*const c_char> = cs.iter().map(|c| c.1.as_ptr()).collect();
        let mut out = vec![0f32; pairs.len()];
        assert_eq!(
            unsafe {
                rk_model_score_texts(h.0, p.as_ptr(), r.as_ptr(), pairs.len(), out.as_mut_ptr())
            },
            rk_status::RK_OK
        );
        out
    };
    let reference = score(&model, &pairs);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (model, pairs) = (model.clone(), pairs.clone());
            std::thread::spawn(move || (0..3).map(|_| score(&model, &pairs)).collect::<Vec<_>>())
        })
        .collect();
    for t in threads {
        for got in t.join().unwrap() {
            crate::common::assert_close(&got, &reference, 1e-5, "C ABI from 8 threads");
        }
    }
    unsafe { rk_model_free(model.0) };
}

#[test]
fn trainer_errors_are_statuses() {
    use rk_status::*;
    let model = load(&fixture("llama_gqa"));
    unsafe {
        let mut trainer = null_mut();
        let mut params = trainer_params();
        params.flip = RK_FLIP_BELOW;
        assert_eq!(rk_trainer_create(model, &params, &mut trainer), RK_OK, "{}", last_error());
        let ids = [1u32, 5, 6, 1, 7, 8];
        let offsets = [0usize, 3];
        let roffsets = [0usize, 3];
        let rids = &ids[3..];
        // Flipping needs strengths.
        let s = rk_trainer_step_tokens(
            trainer,
            ids.as_ptr(),
            offsets.as_ptr(),
            rids.as_ptr(),
            roffsets.as_ptr(),
            1,
            null(),
            null(),
            null_mut(),
        );
        assert_eq!(s, RK_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("strengths"), "{}", last_error());
        // With a strength it trains; stats come back.
        let strength = [-0.5f32];
        let mut stats: rk_step_stats = std::mem::zeroed();
        stats.struct_size = std::mem::size_of::<rk_step_stats>();
        let s = rk_trainer_step_tokens(
            trainer,
            ids.as_ptr(),
            offsets.as_ptr(),
            rids.as_ptr(),
            roffsets.as_ptr(),
            1,
            strength.as_ptr(),
            null(),
            &mut stats,
        );
        assert_eq!(s, RK_OK, "{}", last_error());
        assert!(stats.applied == 1 && stats.step == 1 && stats.loss.is_finite());
        // An older caller's smaller stats struct gets only the bytes it has; a struct_size that
        // does not even cover itself is refused before the step runs.
        stats.struct_size = std::mem::offset_of!(rk_step_stats, loss);
        stats.loss = -7.0;
        assert_eq!(
            rk_trainer_step_tokens(
                trainer,
                ids.as_ptr(),
                offsets.as_ptr(),
                rids.as_ptr(),
                roffsets.as_ptr(),
                1,
                strength.as_ptr(),
                null(),
                &mut stats
            ),
            RK_OK
        );
        assert_eq!(
            (stats.step, stats.loss, stats.struct_size),
            (2, -7.0, std::mem::offset_of!(rk_step_stats, loss))
        );
        stats.struct_size = 4;
        assert_eq!(
            rk_trainer_step_tokens(
                trainer,
                ids.as_ptr(),
                offsets.as_ptr(),
                rids.as_ptr(),
                roffsets.as_ptr(),
                1,
                strength.as_ptr(),
                null(),
                &mut stats
            ),
            RK_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("struct_size"), "{}", last_error());
        // NULL trainer, zero pairs, OOV ids.
        assert_eq!(
            rk_trainer_step_tokens(
                null_mut(),
                ids.as_ptr(),
                offsets.as_ptr(),
                rids.as_ptr(),
                roffsets.as_ptr(),
                1,
                null(),
                null(),
                null_mut()
            ),
            RK_ERR_NULL_POINTER
        );
        assert_eq!(
            rk_trainer_step_tokens(
                trainer,
                ids.as_ptr(),
                offsets.as_ptr(),
                rids.as_ptr(),
                roffsets.as_ptr(),
                0,
                null(),
                null(),
                null_mut()
            ),
            RK_ERR_INVALID_ARGUMENT
        );
        let bad = [1u32, 9999, 3];
        assert_eq!(
            rk_trainer_step_tokens(
                trainer,
                bad.as_ptr(),
                offsets.as_ptr(),
                rids.as_ptr(),
                roffsets.as_ptr(),
                1,
                strength.as_ptr(),
                null(),
                null_mut()
            ),
            RK_ERR_OUT_OF_VOCAB
        );
        // Bad enum codes in params.
        let mut p = trainer_params();
        p.schedule = 99;
        let mut other = null_mut();
        rk_trainer_free(trainer);
        assert_eq!(rk_trainer_create(model, &p, &mut other), RK_ERR_INVALID_ARGUMENT);
        assert!(other.is_null());
        // A model without tokenizer.json trains on token ids; text steps say what is missing.
        rk_model_free(model);
        let model = load(&fixture("llama_tied_bias"));
        let mut t2 = null_mut();
        assert_eq!(rk_trainer_create(model, null(), &mut t2), RK_OK);
        let c = CString::new("x").unwrap();
        let arr = [c.as_ptr()];
        assert_eq!(
            rk_trainer_step_texts(
                t2,
                arr.as_ptr(),
                arr.as_ptr(),
                arr.as_ptr(),
                1,
                null(),
                null(),
                null_mut()
            ),
            RK_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("tokenizer"), "{}", last_error());
        // Freeing the model first is safe: the trainer holds the weights.
        rk_model_free(model);
        assert_eq!(
            rk_trainer_step_tokens(
                t2,
                ids.as_ptr(),
                offsets.as_ptr(),
                rids.as_ptr(),
                roffsets.as_ptr(),
                1,
                null(),
                null(),
                null_mut()
            ),
            RK_OK
        );
        rk_trainer_free(t2);
        rk_trainer_free(null_mut());
    }
}

#[test]
fn vote_matches_scoring() {
    let (a, b) = (load(tiny_model()), load(tiny_model()));
    let p = [CString::new("Q:").unwrap(), CString::new("Hi").unwrap()];
    let c = [CString::new(" yes").unwrap(), CString::new(" hello").unwrap()];
    let r = [CString::new(" no").unwrap(), CString::new(" go away").unwrap()];
    let ptrs = |v: &[CString; 2]| [v[0].as_ptr(), v[1].as_ptr()];
    let (pp, cp, rp) = (ptrs(&p), ptrs(&c), ptrs(&r));
    let (mut mean, mut std) = ([0f32; 2], [0f32; 2]);
    let models = [a as *const rk_model, b as *const rk_model];
    unsafe {
        assert_eq!(
            rk_vote_texts(
                models.as_ptr(),
                2,
                pp.as_ptr(),
                cp.as_ptr(),
                rp.as_ptr(),
                2,
                mean.as_mut_ptr(),
                std.as_mut_ptr()
            ),
            rk_status::RK_OK,
            "{}",
            last_error()
        );
        let (mut rc, mut rr) = ([0f32; 2], [0f32; 2]);
        assert_eq!(
            rk_model_score_texts(a, pp.as_ptr(), cp.as_ptr(), 2, rc.as_mut_ptr()),
            rk_status::RK_OK
        );
        assert_eq!(
            rk_model_score_texts(a, pp.as_ptr(), rp.as_ptr(), 2, rr.as_mut_ptr()),
            rk_status::RK_OK
        );
        // Two identical models: mean = the single model's difference, std = 0.
        for i in 0..2 {
            assert!((mean[i] - (rc[i] - rr[i])).abs() < 1e-5 && std[i].abs() < 1e-6);
        }
        let bad = [a as *const rk_model, std::ptr::null()];
        assert_eq!(
            rk_vote_texts(
                bad.as_ptr(),
                2,
                pp.as_ptr(),
                cp.as_ptr(),
                rp.as_ptr(),
                2,
                mean.as_mut_ptr(),
                std.as_mut_ptr()
            ),
            rk_status::RK_ERR_NULL_POINTER
        );
        assert!(last_error().contains("models[1]"));

        // The same vote on token ids.
        let tokens = |p: &CString, r: &CString| {
            let mut ids = vec![0u32; 256];
            let mut len = 0usize;
            assert_eq!(
                rk_model_tokenize(a, p.as_ptr(), r.as_ptr(), ids.as_mut_ptr(), ids.len(), &mut len),
                rk_status::RK_OK
            );
            ids.truncate(len);
            ids
        };
        let flat = |seqs: Vec<Vec<u32>>| {
            let offsets: Vec<usize> = std::iter::once(0)
                .chain(seqs.iter().scan(0, |at, s| {
                    *at += s.len();
                    Some(*at)
                }))
                .collect();
            (seqs.concat(), offsets)
        };
        let (cids, coff) = flat((0..2).map(|i| tokens(&p[i], &c[i])).collect());
        let (rids, roff) = flat((0..2).map(|i| tokens(&p[i], &r[i])).collect());
        let (mut mean_ids, mut std_ids) = ([0f32; 2], [0f32; 2]);
        let s = rk_vote_tokens(
            models.as_ptr(),
            2,
            cids.as_ptr(),
            coff.as_ptr(),
            rids.as_ptr(),
            roff.as_ptr(),
            2,
            mean_ids.as_mut_ptr(),
            std_ids.as_mut_ptr(),
        );
        assert_eq!(s, rk_status::RK_OK, "{}", last_error());
        assert_eq!((mean_ids, std_ids), (mean, std));
        let oov = [1u32, 9_999_999];
        let oov_off = [0usize, 2, 4];
        let two_oov = [oov, oov].concat();
        let s = rk_vote_tokens(
            models.as_ptr(),
            2,
            cids.as_ptr(),
            coff.as_ptr(),
            two_oov.as_ptr(),
            oov_off.as_ptr(),
            2,
            mean_ids.as_mut_ptr(),
            std_ids.as_mut_ptr(),
        );
        assert_eq!(s, rk_status::RK_ERR_OUT_OF_VOCAB);
        assert!(
            last_error().contains("models[0]") && last_error().contains("rejected 0"),
            "{}",
            last_error()
        );
        rk_model_free(a);
        rk_model_free(b);
    }
}

#[test]
fn a_multi_head_model_votes_with_each_head() {
    // A shared-backbone ensemble: the tiny model with a fresh 3-row head, saved as a checkpoint.
    let base = rewardkit::SharedModel::load(tiny_model(), &Default::default()).unwrap();
    let dir = crate::common::scratch("multi-head").join("model");
    let tokenizer = base.tokenizer_files().unwrap();
    base.read()
        .unwrap()
        .fork_for_training(|_| false, 3, 7)
        .unwrap()
        .save(&dir, &tokenizer)
        .unwrap();
    let (multi, single) = (load(&dir), load(tiny_model()));
    let p = [CString::new("Q: how are you?").unwrap(), CString::new("Hi").unwrap()];
    let c = [CString::new(" fine, thanks").unwrap(), CString::new(" hello there").unwrap()];
    let r = [CString::new(" no").unwrap(), CString::new(" go away").unwrap()];
    let ptrs = |v: &[CString; 2]| [v[0].as_ptr(), v[1].as_ptr()];
    let (pp, cp, rp) = (ptrs(&p), ptrs(&c), ptrs(&r));
    let difference = |m: *mut rk_model| unsafe {
        let (mut rc, mut rr) = ([0f32; 2], [0f32; 2]);
        assert_eq!(
            rk_model_score_texts(m, pp.as_ptr(), cp.as_ptr(), 2, rc.as_mut_ptr()),
            rk_status::RK_OK
        );
        assert_eq!(
            rk_model_score_texts(m, pp.as_ptr(), rp.as_ptr(), 2, rr.as_mut_ptr()),
            rk_status::RK_OK
        );
        [rc[0] - rr[0], rc[1] - rr[1]]
    };
    let (d_multi, d_single) = (difference(multi), difference(single));
    unsafe {
        // Alone: three members, whose mean difference is the model's (its reward is the heads'
        // mean), and whose fresh, differently seeded heads disagree.
        let (mut mean, mut std) = ([0f32; 2], [0f32; 2]);
        let one = [multi as *const rk_model];
        assert_eq!(
            rk_vote_texts(
                one.as_ptr(),
                1,
                pp.as_ptr(),
                cp.as_ptr(),
                rp.as_ptr(),
                2,
                mean.as_mut_ptr(),
                std.as_mut_ptr()
            ),
            rk_status::RK_OK,
            "{}",
            last_error()
        );
        for i in 0..2 {
            assert!((mean[i] - d_multi[i]).abs() < 1e-5, "{mean:?} vs {d_multi:?}");
            assert!(std[i] > 0.0, "three different heads: {std:?}");
        }
        // Mixed with a single-head model: four members.
        let (mut mean4, mut std4) = ([0f32; 2], [0f32; 2]);
        let both = [multi as *const rk_model, single as *const rk_model];
        assert_eq!(
            rk_vote_texts(
                both.as_ptr(),
                2,
                pp.as_ptr(),
                cp.as_ptr(),
                rp.as_ptr(),
                2,
                mean4.as_mut_ptr(),
                std4.as_mut_ptr()
            ),
            rk_status::RK_OK,
            "{}",
            last_error()
        );
        for i in 0..2 {
            assert!((mean4[i] - (3.0 * d_multi[i] + d_single[i]) / 4.0).abs() < 1e-5, "{mean4:?}");
        }
        rk_model_free(multi);
        rk_model_free(single);
    }
}

#[test]
fn scoring_during_training_sees_whole_updates() {
    // Scorers on 4 threads while 20 steps run: every score equals the score under some
    // complete set of weights (before or after a step), never a mix.
    struct Handle(*mut rk_model);
    unsafe impl Send for Handle {}
    unsafe impl Sync for Handle {}
    let model = std::sync::Arc::new(Handle(load(tiny_model())));
    let ids: Vec<u32> = vec![1, 300, 301, 302, 303];
    let offsets = [0usize, ids.len()];
    let score = |h: &Handle| {
        let mut out = [0f32];
        assert_eq!(
            unsafe {
                rk_model_score_tokens(h.0, ids.as_ptr(), offsets.as_ptr(), 1, out.as_mut_ptr())
            },
            rk_status::RK_OK
        );
        out[0]
    };
    let mut trainer = null_mut();
    let mut params = trainer_params();
    params.lr = 1e-3;
    assert_eq!(unsafe { rk_trainer_create(model.0, &params, &mut trainer) }, rk_status::RK_OK);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen: Vec<_> = (0..4)
        .map(|_| {
            let (model, stop, ids) = (model.clone(), stop.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut v = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut out = [0f32];
                    let off = [0usize, ids.len()];
                    assert_eq!(
                        unsafe {
                            rk_model_score_tokens(
                                model.0,
                                ids.as_ptr(),
                                off.as_ptr(),
                                1,
                                out.as_mut_ptr(),
                            )
                        },
                        rk_status::RK_OK
                    );
                    v.push(out[0]);
                }
                v
            })
        })
        .collect();
    let (c, r) = ([1u32, 40, 41, 42], [1u32, 50, 51, 52]);
    let (co, ro) = ([0usize, 4], [0usize, 4]);
    let mut valid = vec![score(&model)];
    for _ in 0..20 {
        assert_eq!(
            unsafe {
                rk_trainer_step_tokens(
                    trainer,
                    c.as_ptr(),
                    co.as_ptr(),
                    r.as_ptr(),
                    ro.as_ptr(),
                    1,
                    null(),
                    null(),
                    null_mut(),
                )
            },
            rk_status::RK_OK
        );
        valid.push(score(&model));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in seen {
        for s in t.join().unwrap() {
            assert!(
                valid.iter().any(|v| (v - s).abs() < 1e-5),
                "score {s} matches no whole set of weights {valid:?}"
            );
        }
    }
    unsafe {
        rk_trainer_free(trainer);
        rk_model_free(model.0);
    }
}

#[test]
fn resume_continues_a_saved_run_exactly() {
    // Run A: 3 steps, save, 3 more. Run B: load the checkpoint, resume, the same 3 steps.
    // B must end on A's weights: the optimizer moments and the step count came back.
    use rk_status::*;
    let ids = [1u32, 300, 301, 302, 1, 303, 304];
    let offsets = [0usize, 4];
    let rids = [1u32, 305, 306, 1, 307];
    let roffsets = [0usize, 3];
    let probe = [1u32, 300, 305, 306, 307];
    let probe_offsets = [0usize, probe.len()];
    let mut params = trainer_params();
    params.lr = 1e-3;
    params.warmup_steps = 2;
    let steps = |trainer: *mut rk_trainer, n: usize| {
        for _ in 0..n {
            let s = unsafe {
                rk_trainer_step_tokens(
                    trainer,
                    ids.as_ptr(),
                    offsets.as_ptr(),
                    rids.as_ptr(),
                    roffsets.as_ptr(),
                    1,
                    null(),
                    null(),
                    null_mut(),
                )
            };
            assert_eq!(s, RK_OK, "{}", last_error());
        }
    };
    let score = |model: *mut rk_model| {
        let mut out = [0f32];
        assert_eq!(
            unsafe {
                rk_model_score_tokens(
                    model,
                    probe.as_ptr(),
                    probe_offsets.as_ptr(),
                    1,
                    out.as_mut_ptr(),
                )
            },
            RK_OK
        );
        out[0]
    };
    let dir = crate::common::scratch("ffi-resume");
    let ckpt = dir.join("ckpt");
    let ckpt_c = CString::new(ckpt.to_str().unwrap()).unwrap();
    unsafe {
        let model_a = load(tiny_model());
        let mut a = null_mut();
        assert_eq!(rk_trainer_create(model_a, &params, &mut a), RK_OK);
        steps(a, 3);
        assert_eq!(rk_trainer_save(a, ckpt_c.as_ptr()), RK_OK, "{}", last_error());
        steps(a, 3);
        let expected = score(model_a);

        let model_b = load(&ckpt);
        let mut b = null_mut();
        // A trainer of other parameters does not fit the saved optimizer state; it stays usable.
        let mut head_only = params;
        head_only.trainable = RK_TRAIN_HEAD;
        assert_eq!(rk_trainer_create(model_b, &head_only, &mut b), RK_OK);
        assert_eq!(rk_trainer_resume(b, ckpt_c.as_ptr(), null_mut()), RK_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("trainable layers"), "{}", last_error());
        rk_trainer_free(b);
        let missing = CString::new(dir.join("nothing").to_str().unwrap()).unwrap();
        assert_eq!(rk_trainer_create(model_b, &params, &mut b), RK_OK);
        assert_eq!(
            rk_trainer_resume(b, missing.as_ptr(), null_mut()),
            RK_ERR_NOT_FOUND,
            "{}",
            last_error()
        );
        assert_eq!(rk_trainer_resume(b, null(), null_mut()), RK_ERR_NULL_POINTER);
        let mut taken = 0u64;
        assert_eq!(rk_trainer_resume(b, ckpt_c.as_ptr(), &mut taken), RK_OK, "{}", last_error());
        assert_eq!(taken, 3);
        steps(b, 3);
        let resumed = score(model_b);
        assert!((resumed - expected).abs() < 1e-6, "resumed {resumed} vs uninterrupted {expected}");

        // Without resume, the same 3 steps from the checkpoint land elsewhere (fresh moments,
        // warmup restarts): the test above can tell the difference.
        let model_c = load(&ckpt);
        let mut c = null_mut();
        assert_eq!(rk_trainer_create(model_c, &params, &mut c), RK_OK);
        steps(c, 3);
        assert!((score(model_c) - expected).abs() > 1e-5, "a fresh optimizer should differ");
        for t in [a, b, c] {
            rk_trainer_free(t);
        }
        for m in [model_a, model_b, model_c] {
            rk_model_free(m);
        }
    }
}

#[test]
fn difference_loss_on_token_ids_equals_the_text_one() {
    let m = load(tiny_model());
    let prompts = [CString::new("Hi").unwrap(), CString::new("Q: why?").unwrap()];
    let responses = [[" hello", " go away", " hi there"], [" because", " no", " it rains"]]
        .map(|g| g.map(|r| CString::new(r).unwrap()));
    unsafe {
        let p: Vec<_> = prompts.iter().map(|s| s.as_ptr()).collect();
        let r: Vec<_> = responses.iter().flatten().map(|s| s.as_ptr()).collect();
        let mut j_text = f64::NAN;
        assert_eq!(
            rk_model_difference_loss_texts(
                m,
                p.as_ptr(),
                2,
                r.as_ptr(),
                [0usize, 3, 6].as_ptr(),
                &mut j_text
            ),
            rk_status::RK_OK,
            "{}",
            last_error()
        );
        // The same samples as token ids: 6 sequences, 3 per prompt.
        let (mut ids, mut seq_offsets) = (Vec::new(), vec![0usize]);
        for (prompt, group) in prompts.iter().zip(&responses) {
            for response in group {
                let mut buf = vec![0u32; 256];
                let mut len = 0;
                assert_eq!(
                    rk_model_tokenize(
                        m,
                        prompt.as_ptr(),
                        response.as_ptr(),
                        buf.as_mut_ptr(),
                        buf.len(),
                        &mut len
                    ),
                    rk_status::RK_OK
                );
                ids.extend_from_slice(&buf[..len]);
                seq_offsets.push(ids.len());
            }
        }
        let groups = [0usize, 3, 6];
        let mut j_ids = f64::NAN;
        assert_eq!(
            rk_model_difference_loss_tokens(
                m,
                ids.as_ptr(),
                seq_offsets.as_ptr(),
                groups.as_ptr(),
                2,
                &mut j_ids
            ),
            rk_status::RK_OK,
            "{}",
            last_error()
        );
        assert!(
            (j_ids - j_text).abs() < 1e-9 && (0.25..=0.5).contains(&j_ids),
            "{j_ids} vs {j_text}"
        );
        // Bad input: a status and a message, never a crash.
        assert_eq!(
            rk_model_difference_loss_tokens(
                m,
                ids.as_ptr(),
                seq_offsets.as_ptr(),
                groups.as_ptr(),
                2,
                null_mut()
            ),
            rk_status::RK_ERR_NULL_POINTER
        );
        assert_eq!(
            rk_model_difference_loss_tokens(
                m,
                ids.as_ptr(),
                seq_offsets.as_ptr(),
                [0usize, 4, 3].as_ptr(),
                2,
                &mut j_ids
            ),
            rk_status::RK_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("group_offsets"), "{}", last_error());
        let oov = [1u32, 9_999_999, 1, 2];
        assert_eq!(
            rk_model_difference_loss_tokens(
                m,
                oov.as_ptr(),
                [0usize, 2, 4].as_ptr(),
                [0usize, 2].as_ptr(),
                1,
                &mut j_ids
            ),
            rk_status::RK_ERR_OUT_OF_VOCAB
        );
        assert!(last_error().contains("policy sequence 0"), "{}", last_error());
        rk_model_free(m);
    }
}
