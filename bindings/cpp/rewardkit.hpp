// rewardkit.hpp: a header-only C++17 wrapper over the rewardkit C ABI (include/rewardkit.h).
//
// RAII handles (Model, Trainer), an exception type carrying the status code and the library's
// message, std::vector/std::string overloads. It only calls the C functions, so it adds no ABI
// coupling to how the library was built: any rewardkit shared library with a matching C
// header works.
//
//   rewardkit::Model model("models/tiny-rm");
//   std::vector<float> r = model.score({"Q: hi\nA:"}, {" hello"});
//   rewardkit::Trainer trainer(model, params);
//   auto stats = trainer.step(prompts, chosen, rejected);
#pragma once

#include <cstdint>
#include <cmath>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "rewardkit.h"

namespace rewardkit {

/// A failed call: the status code and the library's message for it.
class Error : public std::runtime_error {
public:
    Error(rk_status status, const std::string &message)
        : std::runtime_error(std::string(rk_status_name(static_cast<int32_t>(status))) + ": " + message), status_(status) {}
    rk_status status() const noexcept { return status_; }

private:
    rk_status status_;
};

namespace detail {
inline void check(rk_status s) {
    if (s != RK_OK) throw Error(s, rk_last_error_message());
}

/// Borrowed C string pointers of a vector of strings (valid while the strings live).
inline std::vector<const char *> c_strs(const std::vector<std::string> &v) {
    std::vector<const char *> out;
    out.reserve(v.size());
    for (const auto &s : v) out.push_back(s.c_str());
    return out;
}

/// The items of a list of lists laid out flat, with n + 1 offsets: list i is
/// items[offsets[i] .. offsets[i+1]]. The C ABI's layout for token sequences and for policy
/// response groups.
template <typename T> std::pair<std::vector<T>, std::vector<size_t>> flatten(const std::vector<std::vector<T>> &lists) {
    std::pair<std::vector<T>, std::vector<size_t>> out;
    out.second.push_back(0);
    for (const auto &l : lists) {
        out.first.insert(out.first.end(), l.begin(), l.end());
        out.second.push_back(out.first.size());
    }
    return out;
}

template <typename T> T sized() {
    T t{};
    t.struct_size = sizeof(T);
    return t;
}

inline const float *opt(const std::vector<float> &v) { return v.empty() ? nullptr : v.data(); }

/// Per-pair arrays are empty or one entry per pair.
inline void check_per_pair(size_t n, const std::vector<float> &strengths, const std::vector<float> &alphas) {
    if ((!strengths.empty() && strengths.size() != n) || (!alphas.empty() && alphas.size() != n))
        throw Error(RK_ERR_INVALID_ARGUMENT, "strengths and alphas must be empty or have one entry per pair");
}

inline void check_texts(const std::vector<std::string> &p, const std::vector<std::string> &c, const std::vector<std::string> &r) {
    if (p.size() != c.size() || p.size() != r.size()) throw Error(RK_ERR_INVALID_ARGUMENT, "prompts, chosen and rejected must have one entry per pair");
}

inline void check_tokens(const std::vector<std::vector<uint32_t>> &c, const std::vector<std::vector<uint32_t>> &r) {
    if (c.size() != r.size()) throw Error(RK_ERR_INVALID_ARGUMENT, "chosen and rejected must have one sequence per pair");
}
}  // namespace detail

/// Default load options (rk_model_params_init), to change before constructing a Model.
inline rk_model_params model_params() {
    rk_model_params p;
    detail::check(rk_model_params_init(&p, sizeof p));
    return p;
}

/// Default trainer options (rk_trainer_params_init), to change before constructing a Trainer.
inline rk_trainer_params trainer_params() {
    rk_trainer_params p;
    detail::check(rk_trainer_params_init(&p, sizeof p));
    return p;
}

/// Policy samples for MetaRM: per prompt, k >= 2 responses.
struct PolicySamples {
    std::vector<std::string> prompts;
    std::vector<std::vector<std::string>> responses;  // one group per prompt

    void check() const {
        if (prompts.size() != responses.size()) throw Error(RK_ERR_INVALID_ARGUMENT, "policy samples need one response group per prompt");
    }
};

/// A loaded reward model. Movable, not copyable. Scoring is safe from many threads at once.
class Model {
public:
    explicit Model(const std::string &path, const rk_model_params &params = model_params()) {
        detail::check(rk_model_load(path.c_str(), &params, &handle_));
    }
    Model(Model &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Model &operator=(Model &&other) noexcept {
        if (this != &other) {
            rk_model_free(handle_);
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }
    Model(const Model &) = delete;
    Model &operator=(const Model &) = delete;
    ~Model() { rk_model_free(handle_); }

    rk_model *get() const noexcept { return handle_; }

    /// Rewards of prompts[i] + responses[i].
    std::vector<float> score(const std::vector<std::string> &prompts, const std::vector<std::string> &responses) const {
        if (prompts.size() != responses.size()) throw Error(RK_ERR_INVALID_ARGUMENT, "prompts and responses differ in length");
        std::vector<float> out(prompts.size());
        auto p = detail::c_strs(prompts), r = detail::c_strs(responses);
        detail::check(rk_model_score_texts(handle_, p.data(), r.data(), p.size(), out.data()));
        return out;
    }

    /// Rewards of whole conversations, each a JSON array of turns
    /// (`[{"role":"user","content":"..."},{"role":"assistant","content":"..."}]`), rendered by
    /// the model's chat template (the HH-RLHF format for a checkpoint without one).
    std::vector<float> score_chats(const std::vector<std::string> &conversations_json) const {
        std::vector<float> out(conversations_json.size());
        auto c = detail::c_strs(conversations_json);
        detail::check(rk_model_score_chats(handle_, c.data(), c.size(), out.data()));
        return out;
    }

    /// The text of a conversation (a JSON array of turns) as the model reads it; with
    /// `add_generation_prompt`, ending with the opening of an assistant turn.
    std::string apply_chat_template(const std::string &conversation_json, bool add_generation_prompt = false) const {
        size_t n = 0;
        uint8_t gen = add_generation_prompt ? 1 : 0;
        rk_status s = rk_model_apply_chat_template(handle_, conversation_json.c_str(), gen, nullptr, 0, &n);
        if (s != RK_ERR_BUFFER_TOO_SMALL) detail::check(s);
        std::string text(n + 1, '\0');
        detail::check(rk_model_apply_chat_template(handle_, conversation_json.c_str(), gen, &text[0], text.size(), &n));
        text.resize(n);
        return text;
    }

    /// Rewards of pre-tokenized sequences.
    std::vector<float> score_tokens(const std::vector<std::vector<uint32_t>> &seqs) const {
        auto flat = detail::flatten(seqs);
        std::vector<float> out(seqs.size());
        detail::check(rk_model_score_tokens(handle_, flat.first.data(), flat.second.data(), seqs.size(), out.data()));
        return out;
    }

    /// Token ids of prompt + response as the model scores them.
    std::vector<uint32_t> tokenize(const std::string &prompt, const std::string &response) const {
        size_t n = 0;
        rk_status s = rk_model_tokenize(handle_, prompt.c_str(), response.c_str(), nullptr, 0, &n);
        if (s != RK_ERR_BUFFER_TOO_SMALL) detail::check(s);
        std::vector<uint32_t> ids(n);
        detail::check(rk_model_tokenize(handle_, prompt.c_str(), response.c_str(), ids.data(), ids.size(), &n));
        return ids;
    }

    /// A second model over this one's weights (shared, not copied) with the PEFT LoRA adapter
    /// in `adapter_dir` applied unmerged: many adapters over one backbone cost one backbone
    /// plus their factors, e.g. as the members of an Ensemble. This model may be destroyed
    /// first; an update of its weights is seen by the new one.
    Model with_adapter(const std::string &adapter_dir) const {
        rk_model *h = nullptr;
        detail::check(rk_model_load_adapter(handle_, adapter_dir.c_str(), &h));
        return Model(h);
    }

    /// A checksum of every parameter: equal across ranks exactly when the weights are.
    std::uint64_t weights_checksum() const {
        std::uint64_t c = 0;
        detail::check(rk_model_weights_checksum(handle_, &c));
        return c;
    }

    rk_model_info info() const {
        auto i = detail::sized<rk_model_info>();
        detail::check(rk_model_get_info(handle_, &i));
        return i;
    }

    /// MetaRM's difference loss J of this model on policy samples.
    double difference_loss(const PolicySamples &policy) const {
        policy.check();
        auto flat = detail::flatten(policy.responses);
        auto p = detail::c_strs(policy.prompts), r = detail::c_strs(flat.first);
        double j = NAN;
        detail::check(rk_model_difference_loss_texts(handle_, p.data(), p.size(), r.data(), flat.second.data(), &j));
        return j;
    }

    /// As difference_loss() on token ids: policy[p] holds the k >= 2 id sequences (prompt and
    /// response together) the policy produced for prompt p.
    double difference_loss_tokens(const std::vector<std::vector<std::vector<uint32_t>>> &policy) const {
        auto groups = detail::flatten(policy);  // sequences, and each prompt's range of them
        auto s = detail::flatten(groups.first);
        double j = NAN;
        detail::check(rk_model_difference_loss_tokens(handle_, s.first.data(), s.second.data(), groups.second.data(), policy.size(), &j));
        return j;
    }

private:
    explicit Model(rk_model *handle) noexcept : handle_(handle) {}
    rk_model *handle_ = nullptr;
};

/// Preference strength by ensemble vote: (mean, population std) of the reward differences over
/// the members, every head of every model (a shared-backbone ensemble votes with its heads).
inline std::pair<std::vector<float>, std::vector<float>> vote(const std::vector<const Model *> &models, const std::vector<std::string> &prompts,
                                                              const std::vector<std::string> &chosen, const std::vector<std::string> &rejected) {
    detail::check_texts(prompts, chosen, rejected);
    std::vector<const rk_model *> handles;
    for (const auto *m : models) handles.push_back(m->get());
    auto p = detail::c_strs(prompts), c = detail::c_strs(chosen), r = detail::c_strs(rejected);
    std::pair<std::vector<float>, std::vector<float>> out{std::vector<float>(p.size()), std::vector<float>(p.size())};
    detail::check(rk_vote_texts(handles.data(), handles.size(), p.data(), c.data(), r.data(), p.size(), out.first.data(), out.second.data()));
    return out;
}

/// As vote() on token-id sequences; every model reads the same ids.
inline std::pair<std::vector<float>, std::vector<float>> vote_tokens(const std::vector<const Model *> &models, const std::vector<std::vector<uint32_t>> &chosen,
                                                                     const std::vector<std::vector<uint32_t>> &rejected) {
    detail::check_tokens(chosen, rejected);
    std::vector<const rk_model *> handles;
    for (const auto *m : models) handles.push_back(m->get());
    auto c = detail::flatten(chosen), r = detail::flatten(rejected);
    std::pair<std::vector<float>, std::vector<float>> out{std::vector<float>(chosen.size()), std::vector<float>(chosen.size())};
    detail::check(rk_vote_tokens(handles.data(), handles.size(), c.first.data(), c.second.data(), r.first.data(), r.second.data(), chosen.size(),
                                 out.first.data(), out.second.data()));
    return out;
}

/// Default ensemble options (rk_ensemble_params_init): the mean, lambda 0.
inline rk_ensemble_params ensemble_params(rk_combine combine = RK_COMBINE_MEAN, float lambda = 0.0f) {
    rk_ensemble_params p;
    detail::check(rk_ensemble_params_init(&p, sizeof p));
    p.combine = combine;
    p.lambda = lambda;
    return p;
}

/// What an ensemble says about n sequences: the combined reward of each, and each member's
/// (members[i * n_members + m]).
struct EnsembleScores {
    std::vector<float> rewards;
    std::vector<float> members;
    size_t n_members = 0;
    float member(size_t i, size_t m) const { return members[i * n_members + m]; }
};

/// Several reward models scored as one, with a combined (e.g. conservative) reward: the mean,
/// the worst case, or the mean less lambda times the members' variance or std. Shares the
/// models' weights (in-place training of a member is seen by the next call; the Models may be
/// destroyed first). Movable, not copyable; scoring is safe from many threads at once.
class Ensemble {
public:
    explicit Ensemble(const std::vector<const Model *> &models, const rk_ensemble_params &params = ensemble_params()) {
        std::vector<const rk_model *> handles;
        for (const auto *m : models) handles.push_back(m->get());
        detail::check(rk_ensemble_create(handles.data(), handles.size(), &params, &handle_));
        detail::check(rk_ensemble_members(handle_, &members_));
    }
    Ensemble(Ensemble &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)), members_(other.members_) {}
    Ensemble &operator=(Ensemble &&other) noexcept {
        if (this != &other) {
            rk_ensemble_free(handle_);
            handle_ = std::exchange(other.handle_, nullptr);
            members_ = other.members_;
        }
        return *this;
    }
    Ensemble(const Ensemble &) = delete;
    Ensemble &operator=(const Ensemble &) = delete;
    ~Ensemble() { rk_ensemble_free(handle_); }

    size_t members() const noexcept { return members_; }

    /// Scores prompts[i] + responses[i] with every member.
    EnsembleScores score(const std::vector<std::string> &prompts, const std::vector<std::string> &responses) const {
        if (prompts.size() != responses.size()) throw Error(RK_ERR_INVALID_ARGUMENT, "prompts and responses differ in length");
        EnsembleScores out{std::vector<float>(prompts.size()), std::vector<float>(prompts.size() * members_), members_};
        auto p = detail::c_strs(prompts), r = detail::c_strs(responses);
        detail::check(rk_ensemble_score_texts(handle_, p.data(), r.data(), p.size(), out.members.data(), out.rewards.data()));
        return out;
    }

    /// As score() on token-id sequences; every model reads the same ids.
    EnsembleScores score_tokens(const std::vector<std::vector<uint32_t>> &seqs) const {
        auto flat = detail::flatten(seqs);
        EnsembleScores out{std::vector<float>(seqs.size()), std::vector<float>(seqs.size() * members_), members_};
        detail::check(rk_ensemble_score_tokens(handle_, flat.first.data(), flat.second.data(), seqs.size(), out.members.data(), out.rewards.data()));
        return out;
    }

private:
    rk_ensemble *handle_ = nullptr;
    size_t members_ = 0;
};

/// A trainer updating a model in place. One per model; calls are serialised internally.
class Trainer {
public:
    Trainer(const Model &model, const rk_trainer_params &params = trainer_params()) {
        detail::check(rk_trainer_create(model.get(), &params, &handle_));
    }
    Trainer(Trainer &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)), hook_(std::move(other.hook_)) {}
    Trainer &operator=(Trainer &&other) noexcept {
        if (this != &other) {
            rk_trainer_free(handle_);
            handle_ = std::exchange(other.handle_, nullptr);
            hook_ = std::move(other.hook_);
        }
        return *this;
    }

    /// The host's all-reduce: replaces `buffer` (`n` float32 gradients of this rank, host
    /// memory, or CUDA memory when `info.buffer_kind == RK_BUFFER_CUDA`) with their mean over
    /// ranks. Throw to fail the step (the exception comes out of the step call).
    using AllReduce = std::function<void(float *buffer, size_t n, const rk_allreduce_info &info)>;

    /// Joins a data-parallel run as `rank` of `world_size` (see rk_trainer_set_allreduce); an
    /// empty function leaves it.
    void set_allreduce(AllReduce fn, uint32_t rank, uint32_t world_size) {
        std::unique_ptr<Hook> hook = fn ? std::make_unique<Hook>(Hook{std::move(fn), nullptr}) : nullptr;
        detail::check(rk_trainer_set_allreduce(handle_, hook ? &Trainer::trampoline : nullptr, hook.get(), rank, world_size));
        hook_ = std::move(hook);
    }

    /// Scalars in the trained parameters: the length of gradients() and weights().
    size_t trained_size() const {
        size_t n = 0;
        detail::check(rk_trainer_trained_size(handle_, &n));
        return n;
    }

    /// Pull-style (defer_apply): the pending gradient, to all-reduce and hand back.
    std::vector<float> gradients() const {
        std::vector<float> g(trained_size());
        detail::check(rk_trainer_get_gradients(handle_, g.data(), g.size()));
        return g;
    }
    void set_gradients(const std::vector<float> &g) { detail::check(rk_trainer_set_gradients(handle_, g.data(), g.size())); }
    rk_step_stats apply() {
        auto st = detail::sized<rk_step_stats>();
        detail::check(rk_trainer_apply(handle_, &st));
        return st;
    }
    void discard_gradients() { detail::check(rk_trainer_discard_gradients(handle_)); }

    /// The trained weights, flat (broadcast them so that every rank starts identical).
    std::vector<float> weights() const {
        std::vector<float> w(trained_size());
        detail::check(rk_trainer_get_weights(handle_, w.data(), w.size()));
        return w;
    }
    void set_weights(const std::vector<float> &w) { detail::check(rk_trainer_set_weights(handle_, w.data(), w.size())); }
    Trainer(const Trainer &) = delete;
    Trainer &operator=(const Trainer &) = delete;
    ~Trainer() { rk_trainer_free(handle_); }

    /// One step on preference pairs; `strengths` (from a vote) and `alphas` (per-pair
    /// smoothing) each empty or one per pair.
    rk_step_stats step(const std::vector<std::string> &prompts, const std::vector<std::string> &chosen, const std::vector<std::string> &rejected,
                       const std::vector<float> &strengths = {}, const std::vector<float> &alphas = {}) {
        detail::check_texts(prompts, chosen, rejected);
        detail::check_per_pair(prompts.size(), strengths, alphas);
        auto p = detail::c_strs(prompts), c = detail::c_strs(chosen), r = detail::c_strs(rejected);
        auto st = detail::sized<rk_step_stats>();
        run(rk_trainer_step_texts(handle_, p.data(), c.data(), r.data(), p.size(), detail::opt(strengths), detail::opt(alphas), &st));
        return st;
    }

    /// One step on token-id sequences: chosen[i] is preferred over rejected[i].
    rk_step_stats step_tokens(const std::vector<std::vector<uint32_t>> &chosen, const std::vector<std::vector<uint32_t>> &rejected,
                              const std::vector<float> &strengths = {}, const std::vector<float> &alphas = {}) {
        detail::check_tokens(chosen, rejected);
        detail::check_per_pair(chosen.size(), strengths, alphas);
        auto c = detail::flatten(chosen), r = detail::flatten(rejected);
        auto st = detail::sized<rk_step_stats>();
        run(rk_trainer_step_tokens(handle_, c.first.data(), c.second.data(), r.first.data(), r.second.data(), chosen.size(),
                                             detail::opt(strengths), detail::opt(alphas), &st));
        return st;
    }

    /// One MetaRM step: preference pairs plus the policy's own samples.
    rk_meta_step_stats meta_step(const std::vector<std::string> &prompts, const std::vector<std::string> &chosen, const std::vector<std::string> &rejected,
                                 const PolicySamples &policy, const std::vector<float> &strengths = {}, const std::vector<float> &alphas = {}) {
        detail::check_texts(prompts, chosen, rejected);
        detail::check_per_pair(prompts.size(), strengths, alphas);
        policy.check();
        auto flat = detail::flatten(policy.responses);
        auto p = detail::c_strs(prompts), c = detail::c_strs(chosen), r = detail::c_strs(rejected);
        auto pp = detail::c_strs(policy.prompts), pr = detail::c_strs(flat.first);
        auto st = detail::sized<rk_meta_step_stats>();
        run(rk_trainer_meta_step_texts(handle_, p.data(), c.data(), r.data(), p.size(), detail::opt(strengths), detail::opt(alphas), pp.data(),
                                                 pp.size(), pr.data(), flat.second.data(), &st));
        return st;
    }

    /// One MetaRM step on token ids: policy[p] holds the k >= 2 id sequences (prompt and
    /// response together) the policy produced for prompt p.
    rk_meta_step_stats meta_step_tokens(const std::vector<std::vector<uint32_t>> &chosen, const std::vector<std::vector<uint32_t>> &rejected,
                                        const std::vector<std::vector<std::vector<uint32_t>>> &policy, const std::vector<float> &strengths = {},
                                        const std::vector<float> &alphas = {}) {
        detail::check_tokens(chosen, rejected);
        detail::check_per_pair(chosen.size(), strengths, alphas);
        auto groups = detail::flatten(policy);  // sequences, and each prompt's range of them
        auto c = detail::flatten(chosen), r = detail::flatten(rejected), p = detail::flatten(groups.first);
        auto st = detail::sized<rk_meta_step_stats>();
        run(rk_trainer_meta_step_tokens(handle_, c.first.data(), c.second.data(), r.first.data(), r.second.data(), chosen.size(),
                                                  detail::opt(strengths), detail::opt(alphas), p.first.data(), p.second.data(), groups.second.data(),
                                                  policy.size(), &st));
        return st;
    }

    rk_eval_stats evaluate(const std::vector<std::string> &prompts, const std::vector<std::string> &chosen, const std::vector<std::string> &rejected) {
        detail::check_texts(prompts, chosen, rejected);
        auto p = detail::c_strs(prompts), c = detail::c_strs(chosen), r = detail::c_strs(rejected);
        auto st = detail::sized<rk_eval_stats>();
        run(rk_trainer_evaluate_texts(handle_, p.data(), c.data(), r.data(), p.size(), &st));
        return st;
    }

    rk_eval_stats evaluate_tokens(const std::vector<std::vector<uint32_t>> &chosen, const std::vector<std::vector<uint32_t>> &rejected) {
        detail::check_tokens(chosen, rejected);
        auto c = detail::flatten(chosen), r = detail::flatten(rejected);
        auto st = detail::sized<rk_eval_stats>();
        run(rk_trainer_evaluate_tokens(handle_, c.first.data(), c.second.data(), r.first.data(), r.second.data(), chosen.size(), &st));
        return st;
    }

    void save(const std::string &dir) { run(rk_trainer_save(handle_, dir.c_str())); }

    // Continues the run saved in `dir` (load the Model from the same `dir`); returns the
    // optimizer steps that run had taken.
    std::uint64_t resume(const std::string &dir) {
        std::uint64_t steps = 0;
        run(rk_trainer_resume(handle_, dir.c_str(), &steps));
        return steps;
    }

private:
    struct Hook {
        AllReduce fn;
        std::exception_ptr error;
    };

    static int32_t trampoline(void *user, float *buffer, size_t n, const rk_allreduce_info *info) noexcept {
        auto *hook = static_cast<Hook *>(user);
        try {
            hook->fn(buffer, n, *info);
            return RK_OK;
        } catch (const Error &e) {
            hook->error = std::current_exception();
            return e.status();
        } catch (...) {
            hook->error = std::current_exception();
            return RK_ERR_INTERNAL;
        }
    }

    /// Checks a status; an exception the all-reduce threw during the call comes out as itself.
    void run(rk_status s) {
        if (hook_ && hook_->error) {
            std::exception_ptr e = std::exchange(hook_->error, nullptr);
            std::rethrow_exception(e);
        }
        detail::check(s);
    }

    rk_trainer *handle_ = nullptr;
    std::unique_ptr<Hook> hook_;
};

/// The library's version ("MAJOR.MINOR.PATCH") and whether it matches this header.
inline std::string version() { return rk_version(); }
inline bool version_matches_header() { return rk_version_number() == RK_VERSION_NUMBER; }

}  // namespace rewardkit
