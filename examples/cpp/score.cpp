// score.cpp: score (prompt, response) pairs with the C++ wrapper, from several threads at once
// sharing one model.
//
//   usage: score MODEL_DIR PAIRS.tsv
//
// PAIRS.tsv: "prompt<TAB>response" per line with \n, \t, \\ escaped; '#' lines are comments.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "rewardkit.hpp"

static std::string unescape(const std::string &s) {
    std::string out;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] == '\\' && i + 1 < s.size()) {
            char c = s[++i];
            out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
        } else {
            out += s[i];
        }
    }
    return out;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MODEL_DIR PAIRS.tsv\n", argv[0]);
        return 2;
    }
    std::vector<std::string> prompts, responses;
    std::ifstream in(argv[2]);
    for (std::string line; std::getline(in, line);) {
        size_t tab = line.find('\t');
        if (line.empty() || line[0] == '#' || tab == std::string::npos) continue;
        prompts.push_back(unescape(line.substr(0, tab)));
        responses.push_back(unescape(line.substr(tab + 1)));
    }
    try {
        rewardkit::Model model(argv[1]);
        rk_model_info info = model.info();
        std::fprintf(stderr, "rewardkit %s (header %s): %s, %u layers, %llu parameters\n", rewardkit::version().c_str(), RK_VERSION_STRING,
                     info.architecture, info.num_layers, static_cast<unsigned long long>(info.num_parameters));
        const std::vector<float> rewards = model.score(prompts, responses);
        // Four threads score the same pairs on the same handle; results must agree.
        std::vector<std::vector<float>> results(4);
        std::vector<std::thread> threads;
        for (auto &r : results) threads.emplace_back([&model, &prompts, &responses, &r] { r = model.score(prompts, responses); });
        for (auto &t : threads) t.join();
        bool agree = true;
        for (const auto &r : results)
            for (size_t i = 0; i < r.size(); i++) agree = agree && std::fabs(r[i] - rewards[i]) < 1e-5f;
        for (size_t i = 0; i < rewards.size(); i++) std::printf("%zu\t%.6f\n", i, rewards[i]);
        std::printf("threads agree: %s\n", agree ? "yes" : "no");
        return agree ? 0 : 1;
    } catch (const rewardkit::Error &e) {
        std::fprintf(stderr, "rewardkit error (%d): %s\n", static_cast<int>(e.status()), e.what());
        return 1;
    }
}
