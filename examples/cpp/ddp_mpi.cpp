// Data-parallel reward-model training over MPI: the host's MPI_Allreduce averages rewardkit's
// flat gradient buffer at every optimizer step, so every rank applies the identical update.
//
//   mpirun -np 2 ddp_mpi MODEL_DIR PAIRS.jsonl[.gz] STEPS BATCH_PAIRS OUT_DIR
//
// Rank r at step s trains on pairs [(s*W + r)*B, (s*W + r + 1)*B) of the file's usable pairs in
// file order, so `mpirun -np 1 ... STEPS W*B` sees the union of what W ranks see and ends with
// the same weights (to float rounding). Rank 0's weights are broadcast first; every rank saves
// a rewardkit checkpoint to OUT_DIR/rank-<r>/ and rank 0 prints whether the weight checksums
// agree. (MPI_Allreduce gives every rank the same sum for two ranks; for bitwise identical sums
// on more, reduce to one rank and broadcast.)
// The C API is all this needs; MPI's deprecated C++ bindings do not build warning-free.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "rewardkit.hpp"

namespace {

struct Pairs {
    std::vector<std::string> prompts, chosen, rejected;
};

Pairs read_pairs(const char *path) {
    rk_pairs *handle = nullptr;
    rewardkit::detail::check(rk_pairs_load(path, 1, &handle));
    Pairs out;
    size_t n = 0;
    rk_status s = rk_pairs_count(handle, &n, nullptr);
    for (size_t i = 0; s == RK_OK && i < n; i++) {
        const char *p = nullptr, *c = nullptr, *r = nullptr;
        s = rk_pairs_get(handle, i, &p, &c, &r, nullptr);
        if (s == RK_OK) {
            out.prompts.emplace_back(p);
            out.chosen.emplace_back(c);
            out.rejected.emplace_back(r);
        }
    }
    rk_pairs_free(handle);
    rewardkit::detail::check(s);
    return out;
}

}  // namespace

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (argc < 6) {
        if (rank == 0) std::fprintf(stderr, "usage: mpirun -np W %s MODEL_DIR PAIRS.jsonl STEPS BATCH_PAIRS OUT_DIR\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    const int steps = std::atoi(argv[3]);
    const size_t b = static_cast<size_t>(std::atoi(argv[4]));
    int rc = 0;
    try {
        Pairs pairs = read_pairs(argv[2]);
        if (pairs.prompts.size() < static_cast<size_t>(steps) * world * b) throw std::runtime_error("not enough pairs for the steps asked");
        rk_model_params mp = rewardkit::model_params();
        mp.n_threads = 1;
        rewardkit::Model model(argv[1], mp);
        rk_trainer_params tp = rewardkit::trainer_params();
        tp.lr = 1e-4;
        tp.schedule = RK_SCHEDULE_CONSTANT;
        tp.trainable = RK_TRAIN_TOP_LAYERS;
        tp.top_layers = 1;
        rewardkit::Trainer trainer(model, tp);

        // Every rank starts from rank 0's weights.
        std::vector<float> w = trainer.weights();
        MPI_Bcast(w.data(), static_cast<int>(w.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
        trainer.set_weights(w);
        trainer.set_allreduce(
            [world](float *buffer, size_t n, const rk_allreduce_info &) {
                if (MPI_Allreduce(MPI_IN_PLACE, buffer, static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
                    throw std::runtime_error("MPI_Allreduce failed");
                for (size_t i = 0; i < n; i++) buffer[i] /= static_cast<float>(world);
            },
            static_cast<uint32_t>(rank), static_cast<uint32_t>(world));

        for (int s = 0; s < steps; s++) {
            const size_t lo = (static_cast<size_t>(s) * world + rank) * b;
            auto slice = [&](const std::vector<std::string> &v) { return std::vector<std::string>(v.begin() + lo, v.begin() + lo + b); };
            rk_step_stats st = trainer.step(slice(pairs.prompts), slice(pairs.chosen), slice(pairs.rejected));
            std::printf("rank %d step %llu loss %.4f grad_norm %.4f local_grad_norm %.4f\n", rank, static_cast<unsigned long long>(st.step), st.loss,
                        st.grad_norm, st.local_grad_norm);
        }
        trainer.save(std::string(argv[5]) + "/rank-" + std::to_string(rank));

        unsigned long long checksum = model.weights_checksum();
        std::vector<unsigned long long> all(world);
        MPI_Gather(&checksum, 1, MPI_UNSIGNED_LONG_LONG, all.data(), 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            bool same = true;
            for (auto c : all) same = same && c == all[0];
            std::printf("ranks identical: %s (checksum %016llx)\n", same ? "yes" : "NO", checksum);
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
        rc = 1;
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Finalize();
    return rc;
}
