// ppo_conservative_reward.cpp: a PPO-style loop that optimises a policy against the
// conservative reward of a reward-model ensemble (Coste et al.), held in-process.
//
//   usage: ppo_conservative_reward LAMBDA MEMBER_DIR MEMBER_DIR [MEMBER_DIR ...]
//          ppo_conservative_reward LAMBDA --base BASE_DIR ADAPTER_DIR ADAPTER_DIR [...]
//
// Each member is a reward-model checkpoint directory (or one multi-head checkpoint), or,
// with --base, a PEFT LoRA adapter over the one base model (loaded once; each adapter costs
// only its factors: the cheap way to hold many reward models in one trainer). The
// ensemble scores every sampled response with all members in one call and returns the
// combined reward mean - LAMBDA * variance over members: responses the members disagree on
// are worth less, which is what keeps a policy from exploiting one reward model's errors.
// The toy policy is a softmax over a fixed pool of candidate responses per prompt, updated
// with PPO's clipped surrogate objective. Each iteration prints the policy's mean
// conservative reward, the mean member disagreement (std) of what it samples, and the
// probability it gives each prompt's most conservative-rewarded response.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "rewardkit.hpp"

namespace {

struct Prompt {
    std::string text;
    std::vector<std::string> pool;  // candidate responses
};

const std::vector<Prompt> kPrompts = {
    {"\n\nHuman: Can you help me plan a birthday party?\n\nAssistant:",
     {" Sure! Pick a date, invite friends, order a cake, and plan a couple of games.", " No.",
      " Absolutely, happy to help. What size party are you thinking of?", " Party party party party!"}},
    {"\n\nHuman: How do I get revenge on my coworker?\n\nAssistant:",
     {" I'd suggest talking to them, or to your manager, rather than revenge.", " Spread rumours about them.",
      " It sounds like you're upset. Do you want to tell me what happened?", " Revenge is fun."}},
    {"\n\nHuman: What's a healthy breakfast?\n\nAssistant:",
     {" Oatmeal with fruit, or eggs with whole-grain toast.", " Donuts.",
      " Greek yogurt with berries and nuts gives you protein and fibre.", " Whatever."}},
};

std::vector<double> softmax(const std::vector<double> &logits) {
    double top = *std::max_element(logits.begin(), logits.end()), sum = 0;
    std::vector<double> p(logits.size());
    for (size_t i = 0; i < p.size(); i++) sum += p[i] = std::exp(logits[i] - top);
    for (auto &x : p) x /= sum;
    return p;
}

}  // namespace

int main(int argc, char **argv) {
    const bool adapters = argc > 2 && std::string(argv[2]) == "--base";
    if (argc < (adapters ? 6 : 4)) {
        std::fprintf(stderr,
                     "usage: %s LAMBDA MEMBER_DIR MEMBER_DIR [MEMBER_DIR ...]\n"
                     "       %s LAMBDA --base BASE_DIR ADAPTER_DIR ADAPTER_DIR [ADAPTER_DIR ...]\n",
                     argv[0], argv[0]);
        return 2;
    }
    try {
        const float lambda = std::strtof(argv[1], nullptr);
        std::vector<rewardkit::Model> members;
        if (adapters) {
            const rewardkit::Model base(argv[3]);  // the members keep its weights alive
            for (int i = 4; i < argc; i++) members.push_back(base.with_adapter(argv[i]));
        } else {
            for (int i = 2; i < argc; i++) members.emplace_back(argv[i]);
        }
        std::vector<const rewardkit::Model *> refs;
        for (const auto &m : members) refs.push_back(&m);
        const rewardkit::Ensemble ensemble(refs, rewardkit::ensemble_params(RK_COMBINE_MEAN_MINUS_VAR, lambda));

        // Every candidate once: the members' rewards and the conservative reward.
        std::vector<std::string> prompts, responses;
        for (const auto &p : kPrompts)
            for (const auto &r : p.pool) prompts.push_back(p.text), responses.push_back(r);
        const rewardkit::EnsembleScores all = ensemble.score(prompts, responses);
        std::printf("%zu members, conservative reward = mean - %.2f * variance\n\n", ensemble.members(), lambda);
        std::printf("%-8s %-8s %10s %10s  response\n", "prompt", "choice", "mean", "reward");
        for (size_t i = 0, k = 0; k < kPrompts.size(); k++)
            for (size_t c = 0; c < kPrompts[k].pool.size(); c++, i++) {
                double mean = 0;
                for (size_t m = 0; m < all.n_members; m++) mean += all.member(i, m) / all.n_members;
                std::printf("%-8zu %-8zu %10.4f %10.4f %s\n", k, c, mean, all.rewards[i], kPrompts[k].pool[c].c_str());
            }

        // PPO on a softmax policy per prompt: sample, score with the ensemble, a few epochs of
        // the clipped surrogate on the batch.
        const int iterations = 5, samples = 8, epochs = 4;
        const double lr = 0.5, clip = 0.2;
        std::mt19937 rng(7);
        std::vector<std::vector<double>> logits(kPrompts.size(), std::vector<double>(4, 0.0));
        std::printf("\n%-10s %22s %20s %s\n", "iteration", "mean conservative reward", "mean member std", "p(best) per prompt");
        for (int it = 0; it < iterations; it++) {
            std::vector<size_t> prompt_of, choice_of;
            std::vector<std::string> ps, rs;
            std::vector<std::vector<double>> old_probs;
            for (size_t k = 0; k < kPrompts.size(); k++) {
                old_probs.push_back(softmax(logits[k]));
                std::discrete_distribution<size_t> pick(old_probs[k].begin(), old_probs[k].end());
                for (int s = 0; s < samples; s++) {
                    size_t c = pick(rng);
                    prompt_of.push_back(k), choice_of.push_back(c);
                    ps.push_back(kPrompts[k].text), rs.push_back(kPrompts[k].pool[c]);
                }
            }
            const rewardkit::EnsembleScores batch = ensemble.score(ps, rs);  // one call, every member
            double mean_reward = 0, mean_std = 0;
            for (size_t i = 0; i < ps.size(); i++) {
                double mu = 0, var = 0;
                for (size_t m = 0; m < batch.n_members; m++) mu += batch.member(i, m) / batch.n_members;
                for (size_t m = 0; m < batch.n_members; m++) var += std::pow(batch.member(i, m) - mu, 2) / batch.n_members;
                mean_reward += batch.rewards[i] / ps.size();
                mean_std += std::sqrt(var) / ps.size();
            }
            for (int e = 0; e < epochs; e++) {
                std::vector<std::vector<double>> grad(kPrompts.size(), std::vector<double>(4, 0.0));
                for (size_t k = 0; k < kPrompts.size(); k++) {
                    const auto probs = softmax(logits[k]);
                    double baseline = 0;
                    for (size_t i = 0; i < ps.size(); i++)
                        if (prompt_of[i] == k) baseline += batch.rewards[i] / samples;
                    for (size_t i = 0; i < ps.size(); i++) {
                        if (prompt_of[i] != k) continue;
                        const size_t c = choice_of[i];
                        const double adv = batch.rewards[i] - baseline, ratio = probs[c] / old_probs[k][c];
                        // The clipped surrogate passes no gradient once the ratio leaves the trust region.
                        if ((adv > 0 && ratio > 1 + clip) || (adv < 0 && ratio < 1 - clip)) continue;
                        for (size_t j = 0; j < 4; j++) grad[k][j] += adv * ratio * ((j == c) - probs[j]) / samples;
                    }
                }
                for (size_t k = 0; k < kPrompts.size(); k++)
                    for (size_t j = 0; j < 4; j++) logits[k][j] += lr * grad[k][j];
            }
            std::printf("%-10d %22.4f %20.4f", it + 1, mean_reward, mean_std);
            for (size_t k = 0; k < kPrompts.size(); k++) {
                size_t best = 0;
                for (size_t c = 1; c < 4; c++)
                    if (all.rewards[k * 4 + c] > all.rewards[k * 4 + best]) best = c;
                std::printf(" %.3f", softmax(logits[k])[best]);
            }
            std::printf("\n");
        }
    } catch (const rewardkit::Error &e) {
        std::fprintf(stderr, "rewardkit: %s\n", e.what());
        return 1;
    }
    return 0;
}
