/*
 * score.c: load a reward model through the rewardkit C ABI and score (prompt, response)
 * pairs from a file.
 *
 *   usage: score MODEL_DIR PAIRS.tsv [N_THREADS]
 *
 * PAIRS.tsv holds one pair per line, "prompt<TAB>response", with \n, \t and \\ escaped;
 * lines starting with '#' are comments. Prints "index<TAB>reward" per pair.
 *
 * Build (after `cargo build --release`):
 *   cc -std=c99 -Wall -Wextra -Werror -Iinclude examples/c/score.c \
 *      -Ltarget/release -lrewardkit -Wl,-rpath,$PWD/target/release -o score
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rewardkit.h"

/* Reads one line of any length; returns NULL at end of file. The caller frees it. */
static char *read_line(FILE *f) {
    size_t cap = 256, len = 0;
    char *buf = malloc(cap);
    int c;
    if (!buf) return NULL;
    while ((c = fgetc(f)) != EOF && c != '\n') {
        if (len + 1 >= cap) {
            char *bigger = realloc(buf, cap *= 2);
            if (!bigger) { free(buf); return NULL; }
            buf = bigger;
        }
        buf[len++] = (char)c;
    }
    if (c == EOF && len == 0) { free(buf); return NULL; }
    buf[len] = '\0';
    return buf;
}

/* Undoes the \n, \t and \\ escapes in place. */
static void unescape(char *s) {
    char *out = s;
    for (; *s; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            *out++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
        } else {
            *out++ = *s;
        }
    }
    *out = '\0';
}

static int fail(const char *what, rk_status status) {
    fprintf(stderr, "%s failed: %s: %s\n", what, rk_status_name(status), rk_last_error_message());
    return 1;
}

int main(int argc, char **argv) {
    rk_model_params params;
    rk_model *model = NULL;
    rk_model_info info;
    rk_status status;
    char **lines = NULL;
    const char **prompts = NULL, **responses = NULL;
    float *rewards = NULL;
    size_t n = 0, cap = 0, i;
    char *line;
    FILE *f;
    int rc = 1;

    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR PAIRS.tsv [N_THREADS]\n", argv[0]);
        return 2;
    }
    if (rk_version_number() != RK_VERSION_NUMBER) {
        fprintf(stderr, "warning: header %s, library %s\n", RK_VERSION_STRING, rk_version());
    }

    f = fopen(argv[2], "r");
    if (!f) { perror(argv[2]); return 1; }
    while ((line = read_line(f)) != NULL) {
        char *tab = strchr(line, '\t');
        if (line[0] == '#' || !tab) { free(line); continue; }
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            lines = realloc(lines, cap * sizeof *lines);
            prompts = realloc(prompts, cap * sizeof *prompts);
            responses = realloc(responses, cap * sizeof *responses);
            if (!lines || !prompts || !responses) { fprintf(stderr, "out of memory\n"); return 1; }
        }
        *tab = '\0';
        unescape(line);
        unescape(tab + 1);
        lines[n] = line;
        prompts[n] = line;
        responses[n] = tab + 1;
        n++;
    }
    fclose(f);
    if (n == 0) { fprintf(stderr, "%s: no pairs\n", argv[2]); return 1; }

    status = rk_model_params_init(&params, sizeof params);
    if (status != RK_OK) { rc = fail("rk_model_params_init", status); goto done; }
    if (argc > 3) params.n_threads = (uint32_t)atoi(argv[3]);
    status = rk_model_load(argv[1], &params, &model);
    if (status != RK_OK) { rc = fail("rk_model_load", status); goto done; }

    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    status = rk_model_get_info(model, &info);
    if (status != RK_OK) { rc = fail("rk_model_get_info", status); goto done; }
    fprintf(stderr, "rewardkit %s: %s, %u layers, hidden %u, %llu parameters, %s, %u threads\n",
            rk_version(), info.architecture, info.num_layers, info.hidden_size,
            (unsigned long long)info.num_parameters, info.device, info.n_threads);

    rewards = malloc(n * sizeof *rewards);
    if (!rewards) { fprintf(stderr, "out of memory\n"); goto done; }
    status = rk_model_score_texts(model, prompts, responses, n, rewards);
    if (status != RK_OK) { rc = fail("rk_model_score_texts", status); goto done; }
    for (i = 0; i < n; i++) printf("%lu\t%.6f\n", (unsigned long)i, rewards[i]);
    rc = 0;

done:
    rk_model_free(model);
    for (i = 0; i < n; i++) free(lines[i]);
    free(lines);
    free(prompts);
    free(responses);
    free(rewards);
    return rc;
}
