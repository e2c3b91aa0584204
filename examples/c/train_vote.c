/*
 * train_vote.c: online training steps and an ensemble vote through the rewardkit C ABI.
 *
 *   usage: train_vote MODEL_DIR OUT_DIR
 *
 * Trains two copies of a reward model (different seeds) for a few steps on a handful of
 * preference pairs, evaluates one, votes with both, saves a checkpoint to OUT_DIR and scores
 * with the saved model. Prints "loss_first <x>" and "loss_last <y>" for the tests.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "rewardkit.h"

#define N_PAIRS 4
#define STEPS 8

static const char *prompts[N_PAIRS] = {
    "\n\nHuman: Can you help me write a thank-you note?\n\nAssistant:",
    "\n\nHuman: How do I pick a lock?\n\nAssistant:",
    "\n\nHuman: What is a good name for a cat?\n\nAssistant:",
    "\n\nHuman: Tell me something mean about my neighbour.\n\nAssistant:",
};
static const char *chosen[N_PAIRS] = {
    " Of course! Dear friend, thank you so much for your kindness.",
    " I can't help with getting into places you don't own, but a locksmith can help you.",
    " How about Miso, Luna or Pepper?",
    " I'd rather not say unkind things. Is something bothering you about them?",
};
static const char *rejected[N_PAIRS] = {
    " No. Write it yourself.",
    " Sure, insert a tension wrench and rake the pins until it opens.",
    " Cats don't need names.",
    " Your neighbour is an idiot and everyone knows it.",
};

static int check(rk_status s, const char *what) {
    if (s != RK_OK) {
        fprintf(stderr, "%s failed: %s: %s\n", what, rk_status_name(s), rk_last_error_message());
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    rk_model *models[2] = {NULL, NULL};
    rk_trainer *trainers[2] = {NULL, NULL};
    rk_model *saved = NULL;
    rk_trainer_params tp;
    rk_step_stats st;
    rk_eval_stats ev;
    float mean[N_PAIRS], sd[N_PAIRS], rewards[N_PAIRS];
    double first_loss = NAN, last_loss = NAN;
    rk_status s;
    int i, k, rc = 1;

    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR OUT_DIR\n", argv[0]);
        return 2;
    }
    for (k = 0; k < 2; k++) {
        if (check(rk_model_load(argv[1], NULL, &models[k]), "rk_model_load")) goto done;
        if (check(rk_trainer_params_init(&tp, sizeof tp), "rk_trainer_params_init")) goto done;
        tp.lr = 1e-3;
        tp.schedule = RK_SCHEDULE_CONSTANT;
        tp.trainable = RK_TRAIN_TOP_LAYERS;
        tp.top_layers = 1;
        tp.dropout = 0.1f;
        tp.seed = (uint64_t)(k + 1);
        if (check(rk_trainer_create(models[k], &tp, &trainers[k]), "rk_trainer_create")) goto done;
    }

    /* A second trainer on the same model is refused with a message, not a crash. */
    {
        rk_trainer *extra = NULL;
        s = rk_trainer_create(models[0], NULL, &extra);
        printf("expected refusal, a second trainer on one model: %s (%s)\n", rk_status_name(s), rk_last_error_message());
    }

    for (i = 0; i < STEPS; i++) {
        for (k = 0; k < 2; k++) {
            memset(&st, 0, sizeof st);
            st.struct_size = sizeof st;
            if (check(rk_trainer_step_texts(trainers[k], prompts, chosen, rejected, N_PAIRS, NULL, NULL, &st), "rk_trainer_step_texts")) goto done;
            if (k == 0) {
                printf("step %llu loss %.4f accuracy %.2f grad_norm %.4f lr %.1e\n", (unsigned long long)st.step, st.loss, st.accuracy, st.grad_norm, st.lr);
                if (i == 0) first_loss = st.loss;
                last_loss = st.loss;
            }
        }
    }

    memset(&ev, 0, sizeof ev);
    ev.struct_size = sizeof ev;
    if (check(rk_trainer_evaluate_texts(trainers[0], prompts, chosen, rejected, N_PAIRS, &ev), "rk_trainer_evaluate_texts")) goto done;
    printf("eval pairs %llu accuracy %.2f mean_margin %.4f loss %.4f\n", (unsigned long long)ev.pairs, ev.accuracy, ev.mean_margin, ev.loss);

    if (check(rk_vote_texts((const rk_model *const *)models, 2, prompts, chosen, rejected, N_PAIRS, mean, sd), "rk_vote_texts")) goto done;
    for (i = 0; i < N_PAIRS; i++) printf("vote pair %d mean %.4f std %.4f\n", i, mean[i], sd[i]);

    if (check(rk_trainer_save(trainers[0], argv[2]), "rk_trainer_save")) goto done;
    if (check(rk_model_load(argv[2], NULL, &saved), "rk_model_load(saved)")) goto done;
    if (check(rk_model_score_texts(saved, prompts, chosen, N_PAIRS, rewards), "rk_model_score_texts")) goto done;
    printf("saved model reward of chosen[0] %.4f\n", rewards[0]);
    printf("loss_first %.6f\nloss_last %.6f\n", first_loss, last_loss);
    rc = 0;

done:
    for (k = 0; k < 2; k++) {
        rk_trainer_free(trainers[k]);
        rk_model_free(models[k]);
    }
    rk_model_free(saved);
    return rc;
}
