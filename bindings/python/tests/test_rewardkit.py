import os
import threading

import numpy as np
import pytest

import rewardkit

PROMPTS = ["\n\nHuman: Can you help me?\n\nAssistant:", "\n\nHuman: Say something mean.\n\nAssistant:"]
CHOSEN = [" Of course, what do you need?", " I'd rather be kind. Can I help with something else?"]
REJECTED = [" No.", " You are worthless."]


def test_score_matches_tokens_and_threads(model_dir):
    with rewardkit.Model(model_dir, n_threads=2) as m:
        r = m.score(PROMPTS, CHOSEN)
        assert r.dtype == np.float32 and r.shape == (2,)
        ids = [m.tokenize(p, c) for p, c in zip(PROMPTS, CHOSEN)]
        assert ids[0].dtype == np.uint32 and ids[0][0] == 1  # BOS
        np.testing.assert_allclose(m.score_tokens(ids), r, atol=1e-6)
        results = [None] * 4

        def work(i):
            results[i] = m.score(PROMPTS, CHOSEN)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for x in results:
            np.testing.assert_allclose(x, r, atol=1e-5)
        info = m.info()
        assert info["architecture"] == "llama" and info["num_layers"] == 4 and info["dtype"] == "f32"


def test_errors_are_exceptions_with_the_library_message(tmp_path):
    with pytest.raises(rewardkit.RewardkitError) as e:
        rewardkit.Model(tmp_path / "missing")
    assert e.value.status_name == "RK_ERR_NOT_FOUND" and "missing" in str(e.value)
    with pytest.raises(ValueError):
        rewardkit.Model(tmp_path, dtype="f64")


def test_bad_inputs(model_dir):
    m = rewardkit.Model(model_dir)
    with pytest.raises(rewardkit.RewardkitError) as e:
        m.score_tokens([[1, 10**6]])
    assert e.value.status_name == "RK_ERR_OUT_OF_VOCAB"
    with pytest.raises(rewardkit.RewardkitError):
        m.score([], [])
    with pytest.raises(ValueError):
        m.score(["a"], ["b", "c"])
    with pytest.raises(TypeError):
        m.score([b"bytes"], ["x"])


def test_train_meta_vote_save(model_dir, tmp_path):
    m = rewardkit.Model(model_dir)
    before = m.score(PROMPTS, CHOSEN) - m.score(PROMPTS, REJECTED)
    t = rewardkit.Trainer(m, lr=1e-3, schedule="constant", trainable="top_layers", top_layers=1, meta_lr=0.05)
    losses = [t.step(PROMPTS, CHOSEN, REJECTED)["loss"] for _ in range(6)]
    assert losses[-1] < losses[0]
    after = m.score(PROMPTS, CHOSEN) - m.score(PROMPTS, REJECTED)
    assert (after > before).all()
    s = t.meta_step(PROMPTS, CHOSEN, REJECTED, ["\n\nHuman: Hi\n\nAssistant:"], [[" Hello!", " Go away.", " Hi there, how can I help?"]])
    assert s["j_after"] > s["j_before"] and s["applied"]
    ev = t.evaluate(PROMPTS, CHOSEN, REJECTED)
    assert ev["pairs"] == 2 and ev["accuracy"] == 1.0
    with pytest.raises(rewardkit.RewardkitError):
        rewardkit.Trainer(m)  # one trainer per model
    t.save(tmp_path / "ckpt")
    saved = rewardkit.Model(tmp_path / "ckpt")
    with rewardkit.Trainer(saved, trainable="head") as head_only:
        with pytest.raises(rewardkit.RewardkitError) as e:
            head_only.resume(tmp_path / "ckpt")
        assert "trainable layers" in str(e.value)
    with rewardkit.Trainer(saved, lr=1e-3, schedule="constant", trainable="top_layers", top_layers=1) as resumed:
        assert resumed.resume(tmp_path / "ckpt") == 7  # 6 steps and a meta step
    np.testing.assert_allclose(saved.score(PROMPTS, CHOSEN), m.score(PROMPTS, CHOSEN), atol=1e-6)
    mean, std = rewardkit.vote([m, saved], PROMPTS, CHOSEN, REJECTED)
    np.testing.assert_allclose(mean, m.score(PROMPTS, CHOSEN) - m.score(PROMPTS, REJECTED), atol=1e-4)
    assert (std < 1e-3).all()
    j = m.difference_loss(["\n\nHuman: Hi\n\nAssistant:"], [[" Hello!", " Go away."]])
    assert 0.25 <= j <= 0.5
    with pytest.raises(TypeError):
        rewardkit.Trainer(saved, learning_rate=1.0)
    with pytest.raises(rewardkit.RewardkitError) as e:
        rewardkit.Trainer(saved, flip="below").step(PROMPTS, CHOSEN, REJECTED)
    assert "strengths" in str(e.value)


def test_token_id_training_evaluation_and_vote(model_dir):
    a, b = rewardkit.Model(model_dir), rewardkit.Model(model_dir)
    chosen = [a.tokenize(p, c) for p, c in zip(PROMPTS, CHOSEN)]
    rejected = [a.tokenize(p, r) for p, r in zip(PROMPTS, REJECTED)]
    mean_t, std_t = rewardkit.vote([a, b], PROMPTS, CHOSEN, REJECTED)
    mean_i, std_i = rewardkit.vote_tokens([a, b], chosen, rejected)
    np.testing.assert_allclose(mean_i, mean_t, atol=1e-6)
    np.testing.assert_allclose(std_i, std_t, atol=1e-6)
    with rewardkit.Trainer(a, lr=1e-3, schedule="constant") as t:
        assert t.evaluate_tokens(chosen, rejected)["mean_margin"] == pytest.approx(t.evaluate(PROMPTS, CHOSEN, REJECTED)["mean_margin"], abs=1e-6)
        losses = [t.step_tokens(chosen, rejected)["loss"] for _ in range(4)]
        assert losses[-1] < losses[0]
        # b did not train: the vote now sees disagreement.
        assert (rewardkit.vote_tokens([a, b], chosen, rejected)[1] > 0).all()
        with pytest.raises(ValueError):
            t.step_tokens(chosen, rejected[:1])
        with pytest.raises(rewardkit.RewardkitError) as e:
            t.evaluate_tokens([[1, 10**6]], [[1, 2]])
        assert e.value.status_name == "RK_ERR_OUT_OF_VOCAB"


def test_meta_step_on_token_ids_equals_the_text_step(model_dir):
    policy_prompts = ["\n\nHuman: Hi\n\nAssistant:"]
    policy_responses = [[" Hello!", " Go away.", " Hi there, how can I help?"]]
    a, b = rewardkit.Model(model_dir), rewardkit.Model(model_dir)
    chosen = [a.tokenize(p, c) for p, c in zip(PROMPTS, CHOSEN)]
    rejected = [a.tokenize(p, r) for p, r in zip(PROMPTS, REJECTED)]
    policy = [[a.tokenize(policy_prompts[0], r) for r in policy_responses[0]]]
    settings = dict(lr=1e-3, schedule="constant", meta_lr=0.05)
    with rewardkit.Trainer(a, **settings) as ta, rewardkit.Trainer(b, **settings) as tb:
        by_text = ta.meta_step(PROMPTS, CHOSEN, REJECTED, policy_prompts, policy_responses)
        by_ids = tb.meta_step_tokens(chosen, rejected, policy)
        assert by_ids["j_after"] > by_ids["j_before"] and by_ids["applied"]
        assert by_ids["loss"] == pytest.approx(by_text["loss"], abs=1e-6)
        assert a.difference_loss_tokens(policy) == pytest.approx(a.difference_loss(policy_prompts, policy_responses), abs=1e-9)
        with pytest.raises(rewardkit.RewardkitError) as e:
            a.difference_loss_tokens([[[1, 10**6], [1, 2]]])
        assert e.value.status_name == "RK_ERR_OUT_OF_VOCAB"
        np.testing.assert_allclose(b.score(PROMPTS, CHOSEN), a.score(PROMPTS, CHOSEN), atol=1e-6)
        with pytest.raises(rewardkit.RewardkitError):
            tb.meta_step_tokens(chosen, rejected, [[policy[0][0]]])  # k = 1 cannot spread
        assert by_ids["second_order_norm"] == 0.0
        # One response group per prompt, or the library would read past the offsets.
        with pytest.raises(ValueError):
            ta.meta_step(PROMPTS, CHOSEN, REJECTED, policy_prompts * 2, policy_responses)
        with pytest.raises(ValueError):
            a.difference_loss(policy_prompts * 2, policy_responses)
    # Second order: the exact meta-gradient adds meta_lr·H_J·g; an unknown order is refused.
    with rewardkit.Trainer(rewardkit.Model(model_dir), meta_order=2, **settings) as t2:
        s2 = t2.meta_step_tokens(chosen, rejected, policy)
        assert s2["applied"] and s2["second_order_norm"] > 0.0
    with pytest.raises(rewardkit.RewardkitError) as e:
        rewardkit.Trainer(rewardkit.Model(model_dir), meta_order=3)
    assert e.value.status_name == "RK_ERR_INVALID_ARGUMENT"


def test_ensemble_combines_members_and_sees_in_place_training(model_dir):
    a, b = rewardkit.Model(model_dir), rewardkit.Model(model_dir)
    responses = CHOSEN + REJECTED
    prompts = PROMPTS * 2
    ens = rewardkit.Ensemble([a, b], combine="mean_minus_var", lam=0.5)
    assert ens.members == 2
    before, _ = ens.score(prompts, responses)
    # A member trained in place is seen by the next call.
    with rewardkit.Trainer(b, lr=1e-2, schedule="constant") as t:
        t.step(PROMPTS, CHOSEN, REJECTED)
    combined, per_member = ens.score(prompts, responses)
    ra, rb = a.score(prompts, responses), b.score(prompts, responses)
    assert not np.allclose(ra, rb) and not np.allclose(before, combined)
    np.testing.assert_allclose(per_member[:, 0], ra, atol=1e-6)
    np.testing.assert_allclose(per_member[:, 1], rb, atol=1e-6)
    stack = np.stack([ra, rb])
    np.testing.assert_allclose(combined, stack.mean(0) - 0.5 * stack.var(0), atol=1e-5)
    ids = [a.tokenize(p, r) for p, r in zip(prompts, responses)]
    np.testing.assert_allclose(ens.score_tokens(ids)[0], combined, atol=1e-5)
    worst, _ = rewardkit.Ensemble([a, b], combine="min").score(prompts, responses)
    np.testing.assert_allclose(worst, stack.min(0), atol=1e-6)
    std, _ = rewardkit.Ensemble([a, b], combine="mean_minus_std", lam=1.0).score(prompts, responses)
    np.testing.assert_allclose(std, stack.mean(0) - stack.std(0), atol=1e-5)
    # The ensemble outlives its models' handles.
    a.close()
    b.close()
    np.testing.assert_allclose(ens.score(prompts, responses)[0], combined, atol=1e-6)
    with pytest.raises(rewardkit.InvalidArgumentError):
        rewardkit.Ensemble([], combine="average")
    with pytest.raises(rewardkit.RewardkitError) as e:
        rewardkit.Ensemble([rewardkit.Model(model_dir)], combine="mean_minus_std", lam=float("nan"))
    assert e.value.status_name == "RK_ERR_INVALID_ARGUMENT"
    with pytest.raises(rewardkit.RewardkitError):
        rewardkit.Ensemble([])


def test_normalised_rewards_from_the_config_statistics(model_dir, tmp_path):
    import json
    import shutil
    shutil.copytree(model_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg.update(mean=0.25, std=2.0, normalize_reward=True)  # as OpenRLHF stores them
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    raw = rewardkit.Model(model_dir).score(PROMPTS, CHOSEN)
    served = rewardkit.Model(tmp_path / "m").score(PROMPTS, CHOSEN)
    np.testing.assert_allclose(served, (raw - 0.25) / 2.0, atol=1e-6)
    np.testing.assert_allclose(rewardkit.Model(tmp_path / "m", normalize="off").score(PROMPTS, CHOSEN), raw, atol=1e-6)
    with pytest.raises(rewardkit.RewardkitError) as e:
        rewardkit.Model(model_dir, normalize="on")  # no statistics in this config.json
    assert e.value.status_name == "RK_ERR_INVALID_ARGUMENT"
    with pytest.raises(rewardkit.InvalidArgumentError):
        rewardkit.Model(model_dir, normalize="yes")


def test_conversations_are_rendered_by_the_checkpoint_chat_template(model_dir, tmp_path):
    import shutil
    shutil.copytree(model_dir, tmp_path / "m")
    (tmp_path / "m" / "chat_template.jinja").write_text(
        "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    chat = [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "hello"}]
    templated = rewardkit.Model(tmp_path / "m")
    assert templated.apply_chat_template(chat) == "<user>hi\n<assistant>hello\n"
    assert templated.apply_chat_template(chat[:1], add_generation_prompt=True) == "<user>hi\n<assistant>"
    want = templated.score(["<user>hi\n<assistant>"], ["hello\n"])
    np.testing.assert_allclose(templated.score_chats([chat]), want, atol=1e-6)
    # Without a template: the HH-RLHF text format.
    plain = rewardkit.Model(model_dir)
    assert plain.apply_chat_template(chat) == "\n\nHuman:  hi \n\nAssistant: hello"
    with pytest.raises(rewardkit.InvalidArgumentError):
        plain.score_chats([[{"content": "no role"}]])
    # A template chosen at load overrides the checkpoint's, and "hh" forces the HH format.
    chosen = rewardkit.Model(model_dir, chat_template="{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")
    assert chosen.apply_chat_template(chat) == "[user] hi [assistant]hello"
    assert rewardkit.Model(tmp_path / "m", chat_template="hh").apply_chat_template(chat) == plain.apply_chat_template(chat)
    with pytest.raises(rewardkit.InvalidArgumentError):
        rewardkit.Model(model_dir, chat_template="{% for m in messages %}")


def test_a_peft_adapter_merges_at_load():
    import json
    REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    fixtures = os.path.join(REPO, "tests", "fixtures")
    g = json.load(open(os.path.join(fixtures, "peft", "goldens.json")))
    base = os.path.join(fixtures, "parity", "llama_gqa")
    m = rewardkit.Model(base, adapter=os.path.join(fixtures, "peft", "all7"), n_threads=1)
    np.testing.assert_allclose(m.score_tokens(g["cases"]), g["adapters"]["all7"]["rewards"], atol=1e-4)
    with pytest.raises(rewardkit.RewardkitError) as e:
        rewardkit.Model(base, adapter=os.path.join(fixtures, "peft", "missing"))
    assert e.value.status_name == "RK_ERR_NOT_FOUND"


def test_lora_training_saves_an_adapter(model_dir, tmp_path):
    m = rewardkit.Model(model_dir, n_threads=1)
    before = m.score(PROMPTS, CHOSEN)
    t = rewardkit.Trainer(m, lr=5e-3, trainable="lora", lora_rank=4, lora_alpha=8, lora_targets="q,v", schedule="constant")
    for _ in range(3):
        t.step(PROMPTS, CHOSEN, REJECTED)
    after = m.score(PROMPTS, CHOSEN)
    assert np.abs(after - before).max() > 1e-4, "the factors and head moved the rewards"
    t.save(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    reloaded = rewardkit.Model(model_dir, adapter=tmp_path / "adapter", n_threads=1)
    np.testing.assert_allclose(reloaded.score(PROMPTS, CHOSEN), after, atol=1e-4)
    with pytest.raises(rewardkit.InvalidArgumentError):
        rewardkit.Trainer(rewardkit.Model(model_dir), trainable="lora", lora_targets="q,x")
    with pytest.raises(rewardkit.RewardkitError):
        rewardkit.Trainer(rewardkit.Model(model_dir), trainable="lora", lora_rank=0)
    with pytest.raises(rewardkit.InvalidArgumentError):
        rewardkit.Trainer(rewardkit.Model(model_dir), trainable="lora", lora_dropout=1.0)


def test_adapters_over_one_base_are_ensemble_members(model_dir, tmp_path):
    """Two adapters trained over one base, held as two Models over its weights: each scores
    as the merged load, the base handle may close first, and they vote as an Ensemble."""
    dirs = []
    for seed in (1, 2):
        m = rewardkit.Model(model_dir, n_threads=1)
        t = rewardkit.Trainer(m, lr=1e-2, trainable="lora", lora_rank=2, lora_dropout=0.1, seed=seed, schedule="constant")
        t.step(PROMPTS, CHOSEN, REJECTED)
        t.save(str(tmp_path / str(seed)))
        dirs.append(tmp_path / str(seed))
    base = rewardkit.Model(model_dir, n_threads=1)
    members = [base.with_adapter(d) for d in dirs]
    base.close()
    for d, m in zip(dirs, members):
        merged = rewardkit.Model(model_dir, adapter=d, n_threads=1)
        np.testing.assert_allclose(m.score(PROMPTS, CHOSEN), merged.score(PROMPTS, CHOSEN), atol=1e-4)
    e = rewardkit.Ensemble(members, combine="min")
    combined, per_member = e.score(PROMPTS, CHOSEN)
    assert per_member.shape == (2, 2) and np.abs(per_member[:, 0] - per_member[:, 1]).max() > 0
    np.testing.assert_allclose(combined, per_member.min(axis=1), atol=1e-6)
    with pytest.raises(rewardkit.RewardkitError) as err:
        members[0].with_adapter(dirs[1])
    assert "LoRA factors already" in str(err.value)
    with pytest.raises(rewardkit.RewardkitError):
        rewardkit.Trainer(members[0], trainable="all")
