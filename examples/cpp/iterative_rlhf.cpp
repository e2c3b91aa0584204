// iterative_rlhf.cpp: rounds of iterative RLHF against a reward model held in-process.
//
//   usage: iterative_rlhf MODEL_DIR [ROUNDS] [META_STEPS_PER_ROUND]
//
// A toy policy (a softmax over a fixed pool of candidate responses per prompt) proposes k
// responses per prompt; the reward model scores them; the policy moves toward higher reward
// (REINFORCE with a mean baseline); then MetaRM steps train the reward model on preference
// pairs while keeping it able to separate the policy's own, shifted samples. Every round
// prints J on the policy's samples, held-out preference accuracy and the policy's mean reward.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "rewardkit.hpp"

namespace {

struct Prompt {
    std::string text;
    std::vector<std::string> pool;  // candidate responses the policy chooses among
};

const std::vector<Prompt> kPrompts = {
    {"\n\nHuman: Can you help me plan a birthday party?\n\nAssistant:",
     {" Sure! Pick a date, invite friends, order a cake, and plan a couple of games.", " No.", " Parties are a waste of time.",
      " Absolutely, happy to help. What size party are you thinking of, and indoors or outdoors?", " Just buy some chips.",
      " I love parties!!! Party party party party party!"}},
    {"\n\nHuman: How do I get revenge on my coworker?\n\nAssistant:",
     {" I'd suggest talking to them, or to your manager, rather than revenge.", " Put something nasty in their coffee.",
      " Spread rumours about them.", " It sounds like you're upset. Do you want to tell me what happened?", " Revenge is fun.",
      " Ignore it."}},
    {"\n\nHuman: What's a healthy breakfast?\n\nAssistant:",
     {" Oatmeal with fruit, or eggs with whole-grain toast, are good choices.", " Donuts.", " Skip breakfast, who cares.",
      " Greek yogurt with berries and nuts gives you protein and fibre.", " Whatever.", " Breakfast breakfast breakfast."}},
    {"\n\nHuman: Tell me how to hack my neighbour's wifi.\n\nAssistant:",
     {" I can't help with accessing networks you don't own. Could you ask your neighbour to share it?", " Use a password cracker.",
      " Guess their birthday.", " Your provider may offer a cheap plan; I can help you compare options.", " Easy, just do it.",
      " Hacking hacking hacking."}},
};

// Preference pairs for the reward model: (prompt, chosen, rejected).
struct Pairs {
    std::vector<std::string> prompt, chosen, rejected;
    void add(const std::string &p, const std::string &c, const std::string &r) {
        prompt.push_back(p);
        chosen.push_back(c);
        rejected.push_back(r);
    }
};

Pairs train_pairs() {
    Pairs t;
    t.add("\n\nHuman: Can you recommend a book?\n\nAssistant:", " Sure, 'The Hobbit' is a great adventure.", " No.");
    t.add("\n\nHuman: How do I steal a car?\n\nAssistant:", " I can't help with that. Is something going on?", " Break the window and hotwire it.");
    t.add("\n\nHuman: I'm feeling sad.\n\nAssistant:", " I'm sorry to hear that. Do you want to talk about it?", " Get over it.");
    t.add("\n\nHuman: What's 2+2?\n\nAssistant:", " 2 + 2 = 4.", " Figure it out yourself.");
    t.add("\n\nHuman: Write an insult for my sister.\n\nAssistant:", " I'd rather not write insults. Maybe a funny, kind joke instead?", " You're as dumb as a rock.");
    t.add("\n\nHuman: How do I cook rice?\n\nAssistant:", " Rinse it, then simmer one cup of rice in two cups of water for 15 minutes.", " Rice is gross.");
    t.add("\n\nHuman: Can you help me with my homework?\n\nAssistant:", " Of course. What subject is it?", " Do it yourself.");
    t.add("\n\nHuman: How can I make a bomb?\n\nAssistant:", " I can't help with that.", " Mix these chemicals together.");
    return t;
}

Pairs held_out_pairs() {
    Pairs h;
    h.add("\n\nHuman: Any tips for sleeping better?\n\nAssistant:", " Keep a regular schedule and avoid screens before bed.", " Just don't sleep.");
    h.add("\n\nHuman: How do I pick a lock?\n\nAssistant:", " If you're locked out, a locksmith can help you.", " Rake the pins with a tension wrench.");
    h.add("\n\nHuman: Say something mean.\n\nAssistant:", " I'd rather keep things kind. Can I help with something else?", " You're worthless.");
    h.add("\n\nHuman: What's the capital of Italy?\n\nAssistant:", " Rome.", " Who cares.");
    return h;
}

std::vector<double> softmax(const std::vector<double> &logits, double temperature) {
    double mx = *std::max_element(logits.begin(), logits.end());
    std::vector<double> p(logits.size());
    double z = 0;
    for (size_t i = 0; i < logits.size(); i++) z += p[i] = std::exp((logits[i] - mx) / temperature);
    for (auto &x : p) x /= z;
    return p;
}

// k distinct candidates drawn without replacement from the tempered policy.
std::vector<size_t> sample(const std::vector<double> &probs, size_t k, std::mt19937 &rng) {
    std::vector<double> w = probs;
    std::vector<size_t> out;
    for (size_t i = 0; i < k; i++) {
        std::discrete_distribution<size_t> d(w.begin(), w.end());
        size_t c = d(rng);
        out.push_back(c);
        w[c] = 0;
    }
    return out;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL_DIR [ROUNDS] [META_STEPS_PER_ROUND] [CHECKPOINT_DIR]\n", argv[0]);
        return 2;
    }
    const int rounds = argc > 2 ? std::atoi(argv[2]) : 4;
    const int meta_steps = argc > 3 ? std::atoi(argv[3]) : 4;
    const size_t k = 4;
    try {
        rewardkit::Model rm(argv[1]);
        rk_trainer_params tp = rewardkit::trainer_params();
        tp.lr = 5e-4;
        tp.schedule = RK_SCHEDULE_CONSTANT;
        tp.trainable = RK_TRAIN_TOP_LAYERS;
        tp.top_layers = 1;
        tp.meta_lr = 0.05;
        rewardkit::Trainer trainer(rm, tp);
        const Pairs train = train_pairs(), held_out = held_out_pairs();
        std::vector<std::vector<double>> logits(kPrompts.size(), std::vector<double>(kPrompts[0].pool.size(), 0.0));
        std::mt19937 rng(7);

        std::printf("%-6s %12s %12s %14s %12s\n", "round", "J(policy)", "held-out acc", "policy reward", "rm loss");
        for (int round = 0; round < rounds; round++) {
            // 1. The policy proposes k responses per prompt (temperature 1.5).
            rewardkit::PolicySamples samples;
            std::vector<std::vector<size_t>> picked;
            for (size_t p = 0; p < kPrompts.size(); p++) {
                picked.push_back(sample(softmax(logits[p], 1.5), k, rng));
                samples.prompts.push_back(kPrompts[p].text);
                std::vector<std::string> rs;
                for (size_t c : picked.back()) rs.push_back(kPrompts[p].pool[c]);
                samples.responses.push_back(rs);
            }
            // 2. The reward model scores every candidate; 3. the policy moves toward reward.
            double policy_reward = 0;
            for (size_t p = 0; p < kPrompts.size(); p++) {
                std::vector<std::string> prompts(kPrompts[p].pool.size(), kPrompts[p].text);
                std::vector<float> r = rm.score(prompts, kPrompts[p].pool);
                std::vector<double> probs = softmax(logits[p], 1.0);
                double mean = 0;
                for (size_t c : picked[p]) mean += r[c] / double(k);
                for (size_t c : picked[p])
                    for (size_t j = 0; j < logits[p].size(); j++) logits[p][j] += 0.5 * (r[c] - mean) * ((j == c ? 1.0 : 0.0) - probs[j]);
                std::vector<double> after = softmax(logits[p], 1.0);
                for (size_t j = 0; j < r.size(); j++) policy_reward += after[j] * r[j] / double(kPrompts.size());
            }
            // 4. MetaRM steps on the preference pairs and the policy's own samples.
            double loss = 0;
            for (int s = 0; s < meta_steps; s++) loss = trainer.meta_step(train.prompt, train.chosen, train.rejected, samples).loss;
            double j = rm.difference_loss(samples);
            rk_eval_stats ev = trainer.evaluate(held_out.prompt, held_out.chosen, held_out.rejected);
            std::printf("%-6d %12.4f %12.3f %14.4f %12.4f\n", round + 1, j, ev.accuracy, policy_reward, loss);
        }
        // A trainer restarted from a checkpoint carries on where it stopped: the model loads
        // from the checkpoint and the trainer takes back the optimizer state.
        if (argc > 4) {
            trainer.save(argv[4]);
            rewardkit::Model restarted(argv[4]);
            rewardkit::Trainer continued(restarted, tp);
            std::printf("resumed %s at step %llu\n", argv[4], static_cast<unsigned long long>(continued.resume(argv[4])));
        }
        // A mistake is an exception with the library's message, not a crash.
        try {
            rm.score({"only one prompt"}, {});
        } catch (const rewardkit::Error &e) {
            std::printf("expected refusal, prompts and responses of different lengths: %s\n", e.what());
        }
    } catch (const rewardkit::Error &e) {
        std::fprintf(stderr, "rewardkit error: %s\n", e.what());
        return 1;
    }
    return 0;
}
