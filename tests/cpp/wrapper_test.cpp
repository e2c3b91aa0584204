// Checks the C++ wrapper (bindings/cpp/rewardkit.hpp) against itself: the token-id calls agree
// with the text calls, a resumed trainer continues a saved run, mistakes are exceptions.
// Usage: wrapper_test MODEL_DIR SCRATCH_DIR; prints "wrapper: all checks passed" and exits 0.

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "rewardkit.hpp"

namespace {

int failures = 0;

void expect(bool ok, const char *what) {
    if (!ok) {
        std::fprintf(stderr, "FAILED: %s\n", what);
        failures++;
    }
}

bool close(float a, float b, float tol) { return std::fabs(a - b) <= tol; }

const std::vector<std::string> kPrompts = {"\n\nHuman: How do I boil an egg?\n\nAssistant:", "\n\nHuman: Say something kind.\n\nAssistant:"};
const std::vector<std::string> kChosen = {" Put it in boiling water for nine minutes.", " You are doing great today."};
const std::vector<std::string> kRejected = {" No.", " Go away."};

std::vector<std::vector<uint32_t>> tokens(const rewardkit::Model &m, const std::vector<std::string> &responses) {
    std::vector<std::vector<uint32_t>> out;
    for (size_t i = 0; i < responses.size(); i++) out.push_back(m.tokenize(kPrompts[i], responses[i]));
    return out;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s MODEL_DIR SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    const std::string checkpoint = std::string(argv[2]) + "/wrapper-checkpoint";
    try {
        rewardkit::Model a(argv[1]), b(argv[1]);
        const auto chosen = tokens(a, kChosen), rejected = tokens(a, kRejected);

        // Token ids give the text calls' results.
        const auto by_text = a.score(kPrompts, kChosen), by_ids = a.score_tokens(chosen);
        for (size_t i = 0; i < by_text.size(); i++) expect(close(by_text[i], by_ids[i], 1e-5f), "score_tokens == score");
        // A conversation, rendered (the tiny model has no template: the HH format) and scored.
        const std::string chat = R"([{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}])";
        expect(a.apply_chat_template(chat) == "\n\nHuman: Hi\n\nAssistant: Hello", "HH rendering");
        expect(a.apply_chat_template(R"([{"role":"user","content":"Hi"}])", true) == "\n\nHuman: Hi\n\nAssistant:",
               "generation prompt");
        expect(close(a.score_chats({chat})[0], a.score({"\n\nHuman: Hi\n\nAssistant:"}, {" Hello"})[0], 1e-5f),
               "score_chats == score of the rendering");
        const auto vt = rewardkit::vote({&a, &b}, kPrompts, kChosen, kRejected);
        const auto vi = rewardkit::vote_tokens({&a, &b}, chosen, rejected);
        for (size_t i = 0; i < vt.first.size(); i++) {
            expect(close(vt.first[i], vi.first[i], 1e-6f) && close(vt.second[i], vi.second[i], 1e-6f), "vote_tokens == vote");
            expect(close(vt.first[i], by_text[i] - a.score(kPrompts, kRejected)[i], 1e-5f), "vote mean == reward difference");
        }

        rk_trainer_params tp = rewardkit::trainer_params();
        tp.lr = 1e-3;
        tp.schedule = RK_SCHEDULE_CONSTANT;
        rewardkit::Trainer trainer(a, tp);
        const rk_eval_stats et = trainer.evaluate(kPrompts, kChosen, kRejected), ei = trainer.evaluate_tokens(chosen, rejected);
        expect(et.pairs == 2 && std::fabs(et.mean_margin - ei.mean_margin) < 1e-6, "evaluate_tokens == evaluate");
        double first_loss = 0, last_loss = 0;
        for (int s = 0; s < 4; s++) {
            const rk_step_stats st = s % 2 ? trainer.step(kPrompts, kChosen, kRejected) : trainer.step_tokens(chosen, rejected);
            expect(st.applied && std::isfinite(st.loss), "a step applies");
            (s == 0 ? first_loss : last_loss) = st.loss;
        }
        expect(last_loss < first_loss, "loss goes down over 4 steps");

        // Save, take two more steps; a restarted trainer that resumes lands on the same weights.
        trainer.save(checkpoint);
        trainer.step_tokens(chosen, rejected);
        trainer.step_tokens(chosen, rejected);
        rewardkit::Model restarted(checkpoint);
        rewardkit::Trainer continued(restarted, tp);
        expect(continued.resume(checkpoint) == 4, "resume reports the saved step count");
        continued.step_tokens(chosen, rejected);
        continued.step_tokens(chosen, rejected);
        const auto want = a.score_tokens(chosen), got = restarted.score_tokens(chosen);
        for (size_t i = 0; i < want.size(); i++) expect(close(want[i], got[i], 1e-6f), "resumed run == uninterrupted run");

        // A MetaRM step on token ids equals the same step on texts.
        {
            rewardkit::Model c(argv[1]), d(argv[1]);
            rk_trainer_params mp = tp;
            mp.meta_lr = 0.05;
            rewardkit::Trainer tc(c, mp), td(d, mp);
            const std::string hi = "\n\nHuman: Hi\n\nAssistant:";
            const std::vector<std::string> replies = {" Hello!", " Go away.", " Hi there, how can I help?"};
            std::vector<std::vector<uint32_t>> group;
            for (const auto &r : replies) group.push_back(c.tokenize(hi, r));
            const rk_meta_step_stats by_text = tc.meta_step(kPrompts, kChosen, kRejected, {{hi}, {replies}});
            const rk_meta_step_stats by_ids = td.meta_step_tokens(chosen, rejected, {group});
            expect(by_ids.j_after > by_ids.j_before && by_ids.applied, "meta_step_tokens ascends J and applies");
            expect(std::fabs(by_ids.loss - by_text.loss) < 1e-6, "meta_step_tokens == meta_step");
            const double j_text = c.difference_loss({{hi}, {replies}}), j_ids = c.difference_loss_tokens({group});
            expect(std::fabs(j_text - j_ids) < 1e-9 && j_ids > 0.25, "difference_loss_tokens == difference_loss");
            const auto sc = c.score_tokens(chosen), sd = d.score_tokens(chosen);
            for (size_t i = 0; i < sc.size(); i++) expect(close(sc[i], sd[i], 1e-6f), "same weights after either meta step");
            expect(by_ids.second_order_norm == 0.0, "a first-order step adds no second-order term");
        }
        // Second-order MetaRM: the exact meta-gradient adds meta_lr * H_J * g.
        {
            rewardkit::Model e(argv[1]);
            rk_trainer_params mp = tp;
            mp.meta_lr = 0.05;
            mp.meta_order = 2;
            rewardkit::Trainer te(e, mp);
            const std::string hi = "\n\nHuman: Hi\n\nAssistant:";
            const rk_meta_step_stats s = te.meta_step(kPrompts, kChosen, kRejected, {{hi}, {{" Hello!", " Go away.", " Hi there!"}}});
            expect(s.applied && s.second_order_norm > 0.0, "a second-order meta step adds meta_lr * H_J * g");
        }

        // Mistakes are exceptions carrying the status and the library's message.
        try {
            trainer.step_tokens({{1u, 4000000000u}}, {{1u, 2u}});
            expect(false, "an out-of-vocabulary id throws");
        } catch (const rewardkit::Error &e) {
            expect(e.status() == RK_ERR_OUT_OF_VOCAB, "out-of-vocabulary status");
        }
        try {
            rewardkit::vote_tokens({&a}, chosen, {rejected[0]});
            expect(false, "mismatched pair counts throw");
        } catch (const rewardkit::Error &e) {
            expect(e.status() == RK_ERR_INVALID_ARGUMENT, "invalid-argument status");
        }
        try {
            rewardkit::vote({&a}, kPrompts, kChosen, {kRejected[0]});
            expect(false, "mismatched text pair counts throw");
        } catch (const rewardkit::Error &e) {
            expect(e.status() == RK_ERR_INVALID_ARGUMENT, "text vote: invalid-argument status");
        }
        try {
            trainer.step(kPrompts, kChosen, kRejected, {0.5f});
            expect(false, "one strength for several pairs throws");
        } catch (const rewardkit::Error &e) {
            expect(e.status() == RK_ERR_INVALID_ARGUMENT, "strengths: invalid-argument status");
        }
        try {
            a.difference_loss({{"one prompt", "another prompt"}, {{" a", " b"}}});
            expect(false, "more prompts than response groups throws");
        } catch (const rewardkit::Error &e) {
            expect(e.status() == RK_ERR_INVALID_ARGUMENT, "policy shape status");
        }
        try {
            continued.resume(std::string(argv[2]) + "/no-such-checkpoint");
            expect(false, "resuming from nothing throws");
        } catch (const rewardkit::Error &e) {
            expect(e.status() == RK_ERR_NOT_FOUND && std::string(e.what()).find("no-such-checkpoint") != std::string::npos, "not-found status names the path");
        }
    } catch (const rewardkit::Error &e) {
        std::fprintf(stderr, "unexpected rewardkit error: %s\n", e.what());
        return 1;
    }
    if (failures) return 1;
    std::printf("wrapper: all checks passed\n");
    return 0;
}
