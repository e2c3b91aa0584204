/*
 * The hostile-input suite: every export of the C ABI called the way a careless or hostile
 * host would (NULLs, sizes that overflow, bad UTF-8, bad ids, non-finite floats, corrupt and
 * oversized files, concurrent scorers during steps), plus the CLI on corrupt GGUF and JSONL
 * files. Each case runs in its own child process with a time limit and (outside ASan) an
 * address-space limit, so a crash, an abort, a hang or a runaway allocation fails that case
 * alone. A case also fails when any call returns RK_ERR_PANIC or the child prints a Rust
 * panic: a caught panic is a bug, not a pass. After most failures the case checks that the
 * handle still works, because a refused call must change nothing.
 *
 *   hostile MODEL_DIR SCRATCH_DIR REWARDKIT_CLI REPO_DIR [CASE_SUBSTRING]
 *
 * Prints one line per failed case and "N passed, M failed"; exits 1 if any failed.
 * HOSTILE_ASAN=1 (set when built with -fsanitize=address) skips the address-space limit.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rewardkit.h"

static const char *MODEL, *SCRATCH, *CLI, *REPO;
static char CASE_DIR[4096];
static int failed;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "  line %d: check failed: ", __LINE__);          \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            failed = 1;                                                      \
        }                                                                    \
    } while (0)

/* Checks a status; RK_ERR_PANIC always fails (a caught panic is a bug). */
#define EXPECT(call, want)                                                                                   \
    do {                                                                                                     \
        rk_status got_ = (call);                                                                             \
        if (got_ == RK_ERR_PANIC) {                                                                          \
            fprintf(stderr, "  line %d: %s panicked: %s\n", __LINE__, #call, rk_last_error_message());       \
            failed = 1;                                                                                      \
        } else if (got_ != (want)) {                                                                         \
            fprintf(stderr, "  line %d: %s gave %s, want %s (%s)\n", __LINE__, #call, rk_status_name(got_),   \
                    rk_status_name(want), rk_last_error_message());                                          \
            failed = 1;                                                                                      \
        }                                                                                                    \
    } while (0)

/* ---------- files ---------- */

static char *path_in(const char *dir, const char *name) {
    static char buf[8][4096];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 4096, "%s/%s", dir, name);
    return p;
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        exit(3);
    }
    fclose(f);
}

static void write_text(const char *path, const char *text) { write_file(path, text, strlen(text)); }

static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    char *data;
    long len;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    data = malloc((size_t)len + 1);
    if (fread(data, 1, (size_t)len, f) != (size_t)len) len = 0;
    data[len] = 0;
    fclose(f);
    if (n) *n = (size_t)len;
    return data;
}

/* A sparse file of `n` bytes (no disk used): oversized without costing anything. */
static void sparse_file(const char *path, off_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, n) != 0) exit(3);
    close(fd);
}

/* A model directory `name` inside the case dir: the tiny model's files linked, and its
 * config.json copied with `key` set to the JSON `value` (NULL key: unchanged; NULL value:
 * the key removed). */
static char *model_dir(const char *name, const char *key, const char *value) {
    static char dir[4096];
    char *config, *out, *line, *save = NULL;
    size_t n, used = 0;
    int replaced = 0;
    snprintf(dir, sizeof dir, "%s/%s", CASE_DIR, name);
    mkdir(dir, 0755);
    symlink(path_in(MODEL, "model.safetensors"), path_in(dir, "model.safetensors"));
    symlink(path_in(MODEL, "tokenizer.json"), path_in(dir, "tokenizer.json"));
    config = read_file(path_in(MODEL, "config.json"), &n);
    out = malloc(n + (value ? strlen(value) : 0) + (key ? strlen(key) : 0) + 64);
    for (line = strtok_r(config, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char want[256];
        if (key) snprintf(want, sizeof want, "  \"%s\":", key);
        if (key && strncmp(line, want, strlen(want)) == 0) {
            int comma = line[strlen(line) - 1] == ',';
            replaced = 1;
            if (value) used += (size_t)sprintf(out + used, "  \"%s\": %s%s\n", key, value, comma ? "," : "");
            continue;
        }
        used += (size_t)sprintf(out + used, "%s\n", line);
        if (key && value && !replaced && strcmp(line, "{") == 0) {
            used += (size_t)sprintf(out + used, "  \"%s\": %s,\n", key, value);
            replaced = 1;
        }
    }
    write_file(path_in(dir, "config.json"), out, used);
    free(config);
    free(out);
    return dir;
}

/* A model directory whose model.safetensors is the given bytes (config and tokenizer linked). */
static char *weights_dir(const char *name, const void *data, size_t n) {
    char *dir = model_dir(name, NULL, NULL);
    unlink(path_in(dir, "model.safetensors"));
    write_file(path_in(dir, "model.safetensors"), data, n);
    return dir;
}

/* A safetensors file: 8-byte header length, the JSON header, then `data`. */
static char *safetensors(const char *header, const void *data, size_t data_len, size_t *n) {
    uint64_t h = strlen(header);
    char *out = malloc(8 + h + data_len);
    memcpy(out, &h, 8);
    memcpy(out + 8, header, h);
    if (data_len) memcpy(out + 8 + h, data, data_len);
    *n = 8 + h + data_len;
    return out;
}

/* The tiny model's weights with the 4 bytes at data offset `at` replaced by `bits`. */
static char *weights_with_float(const char *name, size_t at, uint32_t bits) {
    size_t n;
    char *w = read_file(path_in(MODEL, "model.safetensors"), &n);
    uint64_t h;
    char *dir;
    memcpy(&h, w, 8);
    memcpy(w + 8 + h + at, &bits, 4);
    dir = weights_dir(name, w, n);
    free(w);
    return dir;
}

/* ---------- the library ---------- */

static rk_model *load(const char *dir) {
    rk_model *m = NULL;
    rk_status s = rk_model_load(dir, NULL, &m);
    if (s != RK_OK) {
        fprintf(stderr, "  cannot load %s: %s %s\n", dir, rk_status_name(s), rk_last_error_message());
        exit(1);
    }
    return m;
}

static rk_model *tiny(void) { return load(MODEL); }

static const char *P[] = {"\n\nHuman: How do I boil an egg?\n\nAssistant:", "\n\nHuman: Say something kind.\n\nAssistant:"};
static const char *C[] = {" Put it in boiling water for nine minutes.", " You are doing great today."};
static const char *R[] = {" No.", " Go away."};

/* Whether the model still scores (finite rewards): a refused call must leave it usable. */
static int scores_ok(const rk_model *m, float out[2]) {
    float tmp[2];
    float *o = out ? out : tmp;
    rk_status s = rk_model_score_texts(m, P, C, 2, o);
    return s == RK_OK && isfinite(o[0]) && isfinite(o[1]);
}

static rk_trainer_params trainer_params(void) {
    rk_trainer_params p;
    if (rk_trainer_params_init(&p, sizeof p) != RK_OK) exit(3);
    p.lr = 1e-3;
    p.schedule = RK_SCHEDULE_CONSTANT;
    return p;
}

static rk_trainer *trainer_on(rk_model *m, const rk_trainer_params *p) {
    rk_trainer *t = NULL;
    rk_status s = rk_trainer_create(m, p, &t);
    if (s != RK_OK) {
        fprintf(stderr, "  cannot create a trainer: %s %s\n", rk_status_name(s), rk_last_error_message());
        exit(1);
    }
    return t;
}

static rk_status step(rk_trainer *t, const float *strengths, const float *alphas) {
    rk_step_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    return rk_trainer_step_texts(t, P, C, R, 2, strengths, alphas, &st);
}

/* Token ids of the two chosen and two rejected responses. */
static uint32_t IDS[2][2][512];
static size_t LEN[2][2];

static void tokenize_pairs(const rk_model *m) {
    int i;
    for (i = 0; i < 2; i++) {
        if (rk_model_tokenize(m, P[i], C[i], IDS[0][i], 512, &LEN[0][i]) != RK_OK) exit(3);
        if (rk_model_tokenize(m, P[i], R[i], IDS[1][i], 512, &LEN[1][i]) != RK_OK) exit(3);
    }
}

/* side 0: chosen, 1: rejected, laid out flat with offsets. */
static void flat(int side, uint32_t *ids, size_t *offsets) {
    size_t at = 0;
    int i;
    offsets[0] = 0;
    for (i = 0; i < 2; i++) {
        memcpy(ids + at, IDS[side][i], LEN[side][i] * sizeof *ids);
        at += LEN[side][i];
        offsets[i + 1] = at;
    }
}

/* ---------- cases: version, status, errors ---------- */

static int c_version(const void *arg) {
    (void)arg;
    CHECK(strcmp(rk_version(), RK_VERSION_STRING) == 0, "version %s", rk_version());
    CHECK(rk_version_number() == RK_VERSION_NUMBER, "version number");
    return failed;
}

static int c_status_names(const void *arg) {
    int codes[] = {-1, 18, 999, INT_MIN, INT_MAX}, i;
    (void)arg;
    for (i = 0; i <= 17; i++) CHECK(strncmp(rk_status_name(i), "RK_", 3) == 0 && strcmp(rk_status_name(i), "RK_UNKNOWN_STATUS") != 0, "code %d", i);
    for (i = 0; i < 5; i++) CHECK(strcmp(rk_status_name(codes[i]), "RK_UNKNOWN_STATUS") == 0, "code %d", codes[i]);
    CHECK(rk_last_error_message() != NULL, "message before any error");
    return failed;
}

static void *other_thread_error(void *arg) {
    rk_model *m = NULL;
    (void)arg;
    if (rk_model_load("/no/such/model/in/thread", NULL, &m) != RK_ERR_NOT_FOUND) return NULL;
    return strstr(rk_last_error_message(), "in/thread") ? (void *)1 : NULL;
}

static int c_errors_per_thread(const void *arg) {
    pthread_t t;
    void *ok;
    rk_model *m = NULL;
    (void)arg;
    EXPECT(rk_model_load("/no/such/model/here", NULL, &m), RK_ERR_NOT_FOUND);
    pthread_create(&t, NULL, other_thread_error, NULL);
    pthread_join(t, &ok);
    CHECK(ok != NULL, "the other thread sees its own message");
    CHECK(strstr(rk_last_error_message(), "model/here") != NULL, "this thread keeps its message: %s", rk_last_error_message());
    return failed;
}

/* ---------- params init ---------- */

static int c_model_params_init(const void *arg) {
    unsigned char buf[sizeof(rk_model_params) + 16];
    rk_model_params *p = (rk_model_params *)buf;
    (void)arg;
    EXPECT(rk_model_params_init(NULL, sizeof *p), RK_ERR_NULL_POINTER);
    memset(buf, 0xAB, sizeof buf);
    EXPECT(rk_model_params_init(p, 0), RK_ERR_INVALID_ARGUMENT);
    /* Smaller than the first published layout (which ends before `share_prefixes`). */
    EXPECT(rk_model_params_init(p, offsetof(rk_model_params, share_prefixes) - 1), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_params_init(p, sizeof *p + 1), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_params_init(p, SIZE_MAX), RK_ERR_INVALID_ARGUMENT);
    CHECK(buf[0] == 0xAB, "a refused init writes nothing");
    /* A caller built against the header before `share_prefixes`: only its bytes are written. */
    EXPECT(rk_model_params_init(p, offsetof(rk_model_params, share_prefixes)), RK_OK);
    CHECK(buf[offsetof(rk_model_params, share_prefixes)] == 0xAB, "old layout: nothing written past it");
    /* A caller built before `chat_template` was appended: its load gets the checkpoint's template. */
    {
        rk_model *m = NULL;
        memset(buf, 0xAB, sizeof buf);
        EXPECT(rk_model_params_init(p, offsetof(rk_model_params, chat_template)), RK_OK);
        CHECK(buf[offsetof(rk_model_params, chat_template)] == 0xAB, "pre-chat_template layout: nothing written past it");
        EXPECT(rk_model_load(MODEL, p, &m), RK_OK);
        CHECK(m != NULL && scores_ok(m, NULL), "pre-chat_template layout loads and scores");
        rk_model_free(m);
    }
    EXPECT(rk_model_params_init(p, sizeof *p), RK_OK);
    CHECK(p->struct_size == sizeof *p && p->dtype == RK_DTYPE_F32 && p->batch_token_budget == 4096 && p->append_eos == 0 && p->share_prefixes == 1, "defaults");
    CHECK(buf[sizeof *p] == 0xAB, "nothing written past the struct");
    return failed;
}

/* A caller built against the header before `flip_fraction` was appended. */
typedef struct {
    unsigned char bytes[offsetof(rk_trainer_params, flip_fraction)];
} old_trainer_params;

static int c_trainer_params_init(const void *arg) {
    unsigned char buf[sizeof(rk_trainer_params) + 16];
    rk_trainer_params *p = (rk_trainer_params *)buf;
    size_t old = sizeof(old_trainer_params);
    (void)arg;
    EXPECT(rk_trainer_params_init(NULL, sizeof *p), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_params_init(p, 8), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_params_init(p, sizeof *p + 1), RK_ERR_INVALID_ARGUMENT);
    memset(buf, 0xCD, sizeof buf);
    EXPECT(rk_trainer_params_init(p, old), RK_OK);
    CHECK(p->struct_size == old && buf[old] == 0xCD, "an old caller's size: only its bytes are written");
    EXPECT(rk_trainer_params_init(p, sizeof *p), RK_OK);
    CHECK(p->lr == 5e-6 && p->beta2 == 0.95 && p->grad_accum == 1 && p->flip == RK_FLIP_NONE && p->margin == RK_MARGIN_NONE, "defaults");
    CHECK(fabsf(p->flip_fraction - 0.1f) < 1e-7f && p->contrastive_dropout > 0.0f, "appended defaults");
    return failed;
}

/* The old-layout caller end to end: a shorter params struct creates a working trainer. */
static int c_old_layout_caller(const void *arg) {
    old_trainer_params old;
    rk_trainer_params *view = (rk_trainer_params *)&old;
    rk_model *m = tiny();
    rk_trainer *t = NULL;
    rk_step_stats st;
    (void)arg;
    EXPECT(rk_trainer_params_init((rk_trainer_params *)&old, sizeof old), RK_OK);
    view->lr = 1e-3;
    view->schedule = RK_SCHEDULE_CONSTANT;
    view->trainable = RK_TRAIN_HEAD;
    EXPECT(rk_trainer_create(m, (rk_trainer_params *)&old, &t), RK_OK);
    /* An old, shorter output struct: the library writes only what the caller has. */
    memset(&st, 0x5A, sizeof st);
    st.struct_size = offsetof(rk_step_stats, lr);
    EXPECT(rk_trainer_step_texts(t, P, C, R, 2, NULL, NULL, &st), RK_OK);
    CHECK(st.step == 1 && isfinite(st.loss) && st.struct_size == offsetof(rk_step_stats, lr), "prefix written");
    CHECK(((unsigned char *)&st)[offsetof(rk_step_stats, lr)] == 0x5A, "nothing past the caller's struct");
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

/* ---------- model load: arguments ---------- */

static int c_load_args(const void *arg) {
    rk_model *m = (rk_model *)1;
    rk_model_params p;
    (void)arg;
    EXPECT(rk_model_load(NULL, NULL, &m), RK_ERR_NULL_POINTER);
    CHECK(m == NULL, "out set to NULL on failure");
    EXPECT(rk_model_load(MODEL, NULL, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_load("/no/such/dir", NULL, &m), RK_ERR_NOT_FOUND);
    EXPECT(rk_model_load("caf\xe9", NULL, &m), RK_ERR_INVALID_UTF8);
    EXPECT(rk_model_load(path_in(MODEL, "model.safetensors"), NULL, &m), RK_ERR_NOT_FOUND);
    EXPECT(rk_model_load(CASE_DIR, NULL, &m), RK_ERR_NOT_FOUND);
    EXPECT(rk_model_params_init(&p, sizeof p), RK_OK);
    p.struct_size = 0;
    EXPECT(rk_model_load(MODEL, &p, &m), RK_ERR_INVALID_ARGUMENT);
    p.struct_size = sizeof p + 8;
    EXPECT(rk_model_load(MODEL, &p, &m), RK_ERR_INVALID_ARGUMENT);
    return failed;
}

/* rk_model_load_adapter: a refused adapter leaves the base scoring as before; an accepted one
   outlives its base. */
static int c_load_adapter(const void *arg) {
    rk_model *base = tiny(), *m = (rk_model *)1;
    float before[2], after[2];
    (void)arg;
    CHECK(scores_ok(base, before), "base scores");
    EXPECT(rk_model_load_adapter(NULL, "x", &m), RK_ERR_NULL_POINTER);
    CHECK(m == NULL, "out set to NULL on failure");
    EXPECT(rk_model_load_adapter(base, NULL, &m), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_load_adapter(base, "x", NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_load_adapter(base, "ad\xff" "apter", &m), RK_ERR_INVALID_UTF8);
    EXPECT(rk_model_load_adapter(base, "/no/such/adapter", &m), RK_ERR_NOT_FOUND);
    EXPECT(rk_model_load_adapter(base, "/dev/null", &m), RK_ERR_NOT_FOUND);
    EXPECT(rk_model_load_adapter(base, MODEL, &m), RK_ERR_NOT_FOUND);
    write_text(path_in(CASE_DIR, "adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": 1e30}");
    write_text(path_in(CASE_DIR, "adapter_model.safetensors"), "not safetensors");
    EXPECT(rk_model_load_adapter(base, CASE_DIR, &m), RK_ERR_CORRUPT_FILE);
    write_text(path_in(CASE_DIR, "adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_dropout\": 1.5}");
    EXPECT(rk_model_load_adapter(base, CASE_DIR, &m), RK_ERR_CORRUPT_FILE);
    /* An adapter made for another base (the parity model): shapes differ. */
    char all7[4096], parity[4096];
    snprintf(all7, sizeof all7, "%s/tests/fixtures/peft/all7", REPO);
    snprintf(parity, sizeof parity, "%s/tests/fixtures/parity/llama_gqa", REPO);
    EXPECT(rk_model_load_adapter(base, all7, &m), RK_ERR_INVALID_ARGUMENT);
    CHECK(m == NULL, "no handle on failure");
    CHECK(scores_ok(base, after) && before[0] == after[0] && before[1] == after[1], "base unchanged");
    rk_model_free(base);
    /* Its own base: scores outlive the base handle, and an adapter over an adapter is refused. */
    rk_model *gqa = load(parity), *over = NULL, *twice = NULL;
    EXPECT(rk_model_load_adapter(gqa, all7, &over), RK_OK);
    rk_model_free(gqa);
    uint32_t ids[] = {1, 2, 3, 4, 5};
    size_t offsets[] = {0, 5};
    float r = NAN;
    EXPECT(rk_model_score_tokens(over, ids, offsets, 1, &r), RK_OK);
    CHECK(isfinite(r), "an adapter scores after its base handle is freed");
    EXPECT(rk_model_load_adapter(over, all7, &twice), RK_ERR_INVALID_ARGUMENT);
    CHECK(twice == NULL, "no handle on failure");
    rk_model_free(over);
    return failed;
}

typedef struct {
    const char *name;
    void (*mutate)(rk_model_params *);
    rk_status want;
} model_param_case;

#define MP(id, stmt) static void mp_##id(rk_model_params *p) { stmt; }
MP(dtype, p->dtype = 42)
MP(dtype_neg, p->dtype = -1)
MP(device_tpu, p->device = "tpu")
MP(device_big, p->device = "cuda:99999999999999999999999")
MP(device_utf8, p->device = "cu\xff")
MP(separator_utf8, p->separator = "\xc3")
MP(append_eos_2, p->append_eos = 2)
MP(append_eos_255, p->append_eos = 255)
MP(threads_huge, p->n_threads = 100000)
MP(threads_max, p->n_threads = UINT32_MAX)
MP(max_length_huge, p->max_length = 100000000)
MP(max_length_over_model, p->max_length = 4096)
MP(budget_zero, p->batch_token_budget = 0)
MP(budget_max, p->batch_token_budget = UINT32_MAX)
MP(batch_max, p->max_batch_size = UINT32_MAX)
MP(head_seed_max, p->head_seed = UINT64_MAX)
MP(one_thread, p->n_threads = 1)
MP(share_prefixes_2, p->share_prefixes = 2)
MP(share_prefixes_off, p->share_prefixes = 0)
MP(separator_ok, p->separator = " | ")
MP(normalize_bad, p->normalize = 9)
MP(normalize_on_without_stats, p->normalize = RK_NORMALIZE_ON)
MP(normalize_off, p->normalize = RK_NORMALIZE_OFF)
MP(adapter_absent, p->adapter = "/nonexistent/rewardkit-adapter")
MP(adapter_utf8, p->adapter = "ad\xff" "apter")
MP(adapter_not_a_directory, p->adapter = "/dev/null")
MP(chat_template_empty, p->chat_template = "")
MP(chat_template_utf8, p->chat_template = "{{ \xff }}")
MP(chat_template_broken, p->chat_template = "{% for m in messages %}")
MP(chat_template_hh, p->chat_template = "hh")
MP(chat_template_model, p->chat_template = "model")
MP(chat_template_source, p->chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}")

static const model_param_case MODEL_PARAM_CASES[] = {
    {"dtype 42", mp_dtype, RK_ERR_INVALID_ARGUMENT},
    {"dtype -1", mp_dtype_neg, RK_ERR_INVALID_ARGUMENT},
    {"device tpu", mp_device_tpu, RK_ERR_INVALID_ARGUMENT},
    {"device cuda index overflow", mp_device_big, RK_ERR_INVALID_ARGUMENT},
    {"device not UTF-8", mp_device_utf8, RK_ERR_INVALID_UTF8},
    {"separator not UTF-8", mp_separator_utf8, RK_ERR_INVALID_UTF8},
    {"append_eos byte 2", mp_append_eos_2, RK_ERR_INVALID_ARGUMENT},
    {"append_eos byte 255", mp_append_eos_255, RK_ERR_INVALID_ARGUMENT},
    {"n_threads 100000", mp_threads_huge, RK_ERR_INVALID_ARGUMENT},
    {"n_threads UINT32_MAX", mp_threads_max, RK_ERR_INVALID_ARGUMENT},
    {"max_length 1e8", mp_max_length_huge, RK_ERR_INVALID_ARGUMENT},
    {"max_length above the model's", mp_max_length_over_model, RK_ERR_INVALID_ARGUMENT},
    {"token budget 0", mp_budget_zero, RK_ERR_INVALID_ARGUMENT},
    {"token budget UINT32_MAX", mp_budget_max, RK_ERR_INVALID_ARGUMENT},
    {"max batch UINT32_MAX", mp_batch_max, RK_ERR_INVALID_ARGUMENT},
    {"head seed UINT64_MAX", mp_head_seed_max, RK_OK},
    {"one thread", mp_one_thread, RK_OK},
    {"share_prefixes 2", mp_share_prefixes_2, RK_ERR_INVALID_ARGUMENT},
    {"share_prefixes 0", mp_share_prefixes_off, RK_OK},
    {"separator", mp_separator_ok, RK_OK},
    {"normalize 9", mp_normalize_bad, RK_ERR_INVALID_ARGUMENT},
    {"normalize on, no mean/std in config.json", mp_normalize_on_without_stats, RK_ERR_INVALID_ARGUMENT},
    {"normalize off", mp_normalize_off, RK_OK},
    {"adapter absent", mp_adapter_absent, RK_ERR_NOT_FOUND},
    {"adapter not UTF-8", mp_adapter_utf8, RK_ERR_INVALID_UTF8},
    {"adapter /dev/null", mp_adapter_not_a_directory, RK_ERR_NOT_FOUND},
    {"chat_template empty", mp_chat_template_empty, RK_ERR_INVALID_ARGUMENT},
    {"chat_template not UTF-8", mp_chat_template_utf8, RK_ERR_INVALID_UTF8},
    {"chat_template that does not compile", mp_chat_template_broken, RK_ERR_INVALID_ARGUMENT},
    {"chat_template hh", mp_chat_template_hh, RK_OK},
    {"chat_template model", mp_chat_template_model, RK_OK},
    {"chat_template source", mp_chat_template_source, RK_OK},
};

static int c_model_param(const void *arg) {
    const model_param_case *c = arg;
    rk_model_params p;
    rk_model *m = NULL;
    EXPECT(rk_model_params_init(&p, sizeof p), RK_OK);
    c->mutate(&p);
    EXPECT(rk_model_load(MODEL, &p, &m), c->want);
    if (c->want == RK_OK) {
        CHECK(scores_ok(m, NULL), "scores");
        rk_model_free(m);
    } else {
        CHECK(m == NULL, "no handle on failure");
    }
    return failed;
}

/* ---------- model load: config.json ---------- */

typedef struct {
    const char *name, *key, *value;
    rk_status want;
} config_case;

static const config_case CONFIG_CASES[] = {
    {"model_type gpt2", "model_type", "\"gpt2\"", RK_ERR_UNSUPPORTED_MODEL},
    {"reward std without mean", "std", "1.0", RK_ERR_INVALID_ARGUMENT},
    {"reward mean without std", "mean", "0.5", RK_ERR_INVALID_ARGUMENT},
    {"normalize_reward without mean/std", "normalize_reward", "true", RK_ERR_INVALID_ARGUMENT},
    {"normalize_reward string", "normalize_reward", "\"yes\"", RK_ERR_INVALID_ARGUMENT},
    {"model_type number", "model_type", "7", RK_ERR_UNSUPPORTED_MODEL},
    {"hidden_act gelu", "hidden_act", "\"gelu\"", RK_ERR_UNSUPPORTED_MODEL},
    {"hidden_size 0", "hidden_size", "0", RK_ERR_INVALID_ARGUMENT},
    {"hidden_size -256", "hidden_size", "-256", RK_ERR_INVALID_ARGUMENT},
    {"hidden_size 1e12", "hidden_size", "1000000000000", RK_ERR_INVALID_ARGUMENT},
    {"hidden_size 2.5", "hidden_size", "2.5", RK_ERR_INVALID_ARGUMENT},
    {"hidden_size string", "hidden_size", "\"256\"", RK_ERR_INVALID_ARGUMENT},
    {"hidden_size 2^64", "hidden_size", "18446744073709551616", RK_ERR_INVALID_ARGUMENT},
    {"vocab_size 2^40", "vocab_size", "1099511627776", RK_ERR_INVALID_ARGUMENT},
    {"hidden_size missing", "hidden_size", NULL, RK_ERR_INVALID_ARGUMENT},
    {"num_hidden_layers 1e9", "num_hidden_layers", "1000000000", RK_ERR_INVALID_ARGUMENT},
    {"num_hidden_layers 5 (weights have 4)", "num_hidden_layers", "5", RK_ERR_SHAPE_MISMATCH},
    {"num_attention_heads 0", "num_attention_heads", "0", RK_ERR_INVALID_ARGUMENT},
    {"num_key_value_heads 3", "num_key_value_heads", "3", RK_ERR_INVALID_ARGUMENT},
    {"num_key_value_heads 1e9", "num_key_value_heads", "1000000000", RK_ERR_INVALID_ARGUMENT},
    {"head_dim odd", "head_dim", "31", RK_ERR_INVALID_ARGUMENT},
    {"intermediate_size 2^40", "intermediate_size", "1099511627776", RK_ERR_INVALID_ARGUMENT},
    {"max_position_embeddings 1e9", "max_position_embeddings", "1000000000", RK_ERR_INVALID_ARGUMENT},
    {"max_position_embeddings 2^62", "max_position_embeddings", "4611686018427387904", RK_ERR_INVALID_ARGUMENT},
    {"max_position_embeddings 0", "max_position_embeddings", "0", RK_ERR_INVALID_ARGUMENT},
    {"rope_theta 0", "rope_theta", "0", RK_ERR_INVALID_ARGUMENT},
    {"rope_theta -1", "rope_theta", "-1", RK_ERR_INVALID_ARGUMENT},
    {"rope_theta 1e400", "rope_theta", "1e400", RK_ERR_CORRUPT_FILE},
    {"rms_norm_eps -1", "rms_norm_eps", "-1", RK_ERR_INVALID_ARGUMENT},
    {"rms_norm_eps 0", "rms_norm_eps", "0", RK_ERR_INVALID_ARGUMENT},
    {"rms_norm_eps 5", "rms_norm_eps", "5", RK_ERR_INVALID_ARGUMENT},
    {"rope_scaling linear factor 0", "rope_scaling", "{\"type\": \"linear\", \"factor\": 0}", RK_ERR_INVALID_ARGUMENT},
    {"rope_scaling llama3 high == low", "rope_scaling",
     "{\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 4, \"high_freq_factor\": 4, \"original_max_position_embeddings\": 8192}",
     RK_ERR_INVALID_ARGUMENT},
    {"rope_scaling yarn", "rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4}", RK_ERR_UNSUPPORTED_MODEL},
    {"rope_scaling without factor", "rope_scaling", "{\"type\": \"linear\"}", RK_ERR_INVALID_ARGUMENT},
    {"pad_token_id >= vocab", "pad_token_id", "4096", RK_ERR_INVALID_ARGUMENT},
    {"eos_token_id 2^40", "eos_token_id", "1099511627776", RK_ERR_INVALID_ARGUMENT},
    {"eos_token_id list with a string", "eos_token_id", "[2, \"x\"]", RK_ERR_INVALID_ARGUMENT},
    {"ensemble heads 1e9", "rewardkit_ensemble_heads", "1000000000", RK_ERR_INVALID_ARGUMENT},
    {"ensemble heads 0", "rewardkit_ensemble_heads", "0", RK_ERR_INVALID_ARGUMENT},
    {"ensemble heads 2 (head has 1 row)", "rewardkit_ensemble_heads", "2", RK_ERR_UNSUPPORTED_MODEL},
    {"initializer_range -1", "initializer_range", "-1", RK_ERR_INVALID_ARGUMENT},
    {"tie_word_embeddings string", "tie_word_embeddings", "\"yes\"", RK_ERR_INVALID_ARGUMENT},
    {"qwen2 sliding window", "model_type", "\"qwen2\", \"use_sliding_window\": true", RK_ERR_UNSUPPORTED_MODEL},
    {"max_position_embeddings 10485760 (Llama 4)", "max_position_embeddings", "10485760", RK_OK},
};

static int c_config(const void *arg) {
    const config_case *c = arg;
    rk_model *m = NULL;
    EXPECT(rk_model_load(model_dir("m", c->key, c->value), NULL, &m), c->want);
    if (c->want == RK_OK) {
        struct rusage ru;
        CHECK(scores_ok(m, NULL), "scores");
        getrusage(RUSAGE_SELF, &ru);
        /* Nothing is allocated from max_position_embeddings: rotary tables are per length. */
        CHECK(ru.ru_maxrss < 1024 * 1024, "peak RSS %ld kB", ru.ru_maxrss);
        rk_model_free(m);
    }
    return failed;
}

/* Config files that are not config files. */
static int c_config_files(const void *arg) {
    char *dir = model_dir("m", NULL, NULL);
    char *cfg = path_in(dir, "config.json");
    rk_model *m = NULL;
    char *deep;
    (void)arg;
    unlink(cfg);
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_NOT_FOUND);
    CHECK(strstr(rk_last_error_message(), "config.json") != NULL, "names config.json: %s", rk_last_error_message());
    write_text(cfg, "");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    write_text(cfg, "{\"model_type\": \"llama\",");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    write_text(cfg, "[1, 2, 3]");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_INVALID_ARGUMENT);
    write_text(cfg, "\xff\xfe{}");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    deep = malloc(200001);
    memset(deep, '[', 200000);
    deep[200000] = 0;
    write_text(cfg, deep);
    free(deep);
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    unlink(cfg);
    symlink("/dev/zero", cfg);
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_IO);
    unlink(cfg);
    mkdir(cfg, 0755);
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_IO);
    rmdir(cfg);
    sparse_file(cfg, (off_t)200 << 20);
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    CHECK(m == NULL, "no handle");
    return failed;
}

/* ---------- model load: weights ---------- */

static int c_weights_headers(const void *arg) {
    rk_model *m = NULL;
    size_t n;
    char *st;
    uint64_t huge = UINT64_C(1) << 63;
    char raw[16];
    (void)arg;
    EXPECT(rk_model_load(weights_dir("empty", "", 0), NULL, &m), RK_ERR_CORRUPT_FILE);
    memcpy(raw, &huge, 8);
    memcpy(raw + 8, "{}      ", 8);
    EXPECT(rk_model_load(weights_dir("len2^63", raw, 16), NULL, &m), RK_ERR_CORRUPT_FILE);
    huge = 1000;
    memcpy(raw, &huge, 8);
    EXPECT(rk_model_load(weights_dir("len-past-end", raw, 16), NULL, &m), RK_ERR_CORRUPT_FILE);
    st = safetensors("not json at all", NULL, 0, &n);
    EXPECT(rk_model_load(weights_dir("not-json", st, n), NULL, &m), RK_ERR_CORRUPT_FILE);
    free(st);
    st = safetensors("{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [256], \"data_offsets\": [0, 1024]}}", "x", 1, &n);
    EXPECT(rk_model_load(weights_dir("offsets-past-end", st, n), NULL, &m), RK_ERR_CORRUPT_FILE);
    free(st);
    st = safetensors("{\"a\": {\"dtype\": \"F32\", \"shape\": [1099511627776, 1099511627776], \"data_offsets\": [0, 4]}}", "abcd", 4, &n);
    EXPECT(rk_model_load(weights_dir("shape-overflow", st, n), NULL, &m), RK_ERR_CORRUPT_FILE);
    free(st);
    st = safetensors("{\"a\": {\"dtype\": \"F99\", \"shape\": [1], \"data_offsets\": [0, 4]}}", "abcd", 4, &n);
    EXPECT(rk_model_load(weights_dir("bad-dtype", st, n), NULL, &m), RK_ERR_CORRUPT_FILE);
    free(st);
    st = safetensors("{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", "abcd", 4, &n);
    EXPECT(rk_model_load(weights_dir("missing-tensors", st, n), NULL, &m), RK_ERR_SHAPE_MISMATCH);
    free(st);
    CHECK(m == NULL, "no handle");
    return failed;
}

static int c_weights_files(const void *arg) {
    rk_model *m = NULL;
    char *dir = model_dir("m", NULL, NULL);
    char *w = path_in(dir, "model.safetensors");
    (void)arg;
    unlink(w);
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_NOT_FOUND);
    symlink("/dev/zero", w);
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_NOT_FOUND); /* not a regular file: no weights found */
    unlink(w);
    mkdir(w, 0755);
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_NOT_FOUND);
    rmdir(w);
    write_text(path_in(dir, "pytorch_model.bin"), "pickle");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_UNSUPPORTED_MODEL);
    return failed;
}

static int c_weight_nan(const void *arg) {
    rk_model *m = NULL;
    (void)arg;
    EXPECT(rk_model_load(weights_with_float("nan", 0, 0x7fc00000u), NULL, &m), RK_ERR_CORRUPT_FILE);
    CHECK(strstr(rk_last_error_message(), "non-finite") != NULL, "message: %s", rk_last_error_message());
    EXPECT(rk_model_load(weights_with_float("inf", 4096, 0x7f800000u), NULL, &m), RK_ERR_CORRUPT_FILE);
    EXPECT(rk_model_load(weights_with_float("neg-inf", 8, 0xff800000u), NULL, &m), RK_ERR_CORRUPT_FILE);
    EXPECT(rk_model_load(weights_with_float("finite-change", 0, 0x3f800000u), NULL, &m), RK_OK);
    rk_model_free(m);
    return failed;
}

static int c_weight_shapes(const void *arg) {
    rk_model *m = NULL;
    size_t n;
    char *st;
    (void)arg;
    /* Every backbone tensor absent but a head with a bias, and a head of 2 rows. */
    EXPECT(rk_model_load(model_dir("wider", "hidden_size", "512"), NULL, &m), RK_ERR_SHAPE_MISMATCH);
    EXPECT(rk_model_load(model_dir("vocab", "vocab_size", "4000"), NULL, &m), RK_ERR_SHAPE_MISMATCH);
    st = safetensors("{\"model.embed_tokens.weight\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", "abcdefgh", 8, &n);
    EXPECT(rk_model_load(weights_dir("int-weight", st, n), NULL, &m), RK_ERR_SHAPE_MISMATCH);
    free(st);
    return failed;
}

static int c_index_files(const void *arg) {
    rk_model *m = NULL;
    char *dir = model_dir("m", NULL, NULL);
    char *idx = path_in(dir, "model.safetensors.index.json");
    char *big;
    size_t i, at = 0;
    (void)arg;
    unlink(path_in(dir, "model.safetensors"));
    write_text(idx, "not json");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    write_text(idx, "{\"metadata\": {}}");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    write_text(idx, "{\"weight_map\": {}}");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    write_text(idx, "{\"weight_map\": {\"a\": \"../../../../etc/passwd\"}}");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    write_text(idx, "{\"weight_map\": {\"a\": \"/etc/passwd\"}}");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    write_text(idx, "{\"weight_map\": {\"a\": \"missing-shard.safetensors\"}}");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_NOT_FOUND);
    big = malloc(10000 * 40 + 64);
    at += (size_t)sprintf(big, "{\"weight_map\": {");
    for (i = 0; i < 10000; i++) at += (size_t)sprintf(big + at, "%s\"t%zu\": \"s%zu\"", i ? "," : "", i, i);
    sprintf(big + at, "}}");
    write_text(idx, big);
    free(big);
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    sparse_file(idx, (off_t)300 << 20);
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    return failed;
}

static int c_tokenizer_files(const void *arg) {
    rk_model *m = NULL;
    char *dir = model_dir("m", NULL, NULL);
    char *tok = path_in(dir, "tokenizer.json");
    float out[2];
    size_t n;
    uint32_t ids[4] = {1, 5, 6, 7};
    size_t offsets[2] = {0, 4};
    (void)arg;
    unlink(tok);
    write_text(tok, "{\"model\": {\"type\": \"Nonsense\"}}");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    write_text(tok, "");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    unlink(tok);
    symlink("/dev/zero", tok);
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_IO);
    unlink(tok);
    /* Inputs that made the tokenizers crate panic (found by the tokenizer_json fuzz target). */
    write_text(tok, "{\"version\": \"1.0\", \"decoder\": {\"type\": \"Strip\", \"content\": \"a\x01\"}, \"model\": {\"type\": \"BPE\"}}");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    write_text(tok, "{\"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": 5}, \"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}");
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_UNSUPPORTED_MODEL);
    unlink(tok);
    sparse_file(tok, (off_t)2 << 30);
    EXPECT(rk_model_load(dir, NULL, &m), RK_ERR_CORRUPT_FILE);
    unlink(tok);
    /* Without a tokenizer: ids score, text says what is missing. */
    EXPECT(rk_model_load(dir, NULL, &m), RK_OK);
    EXPECT(rk_model_score_texts(m, P, C, 2, out), RK_ERR_INVALID_ARGUMENT);
    CHECK(strstr(rk_last_error_message(), "tokenizer") != NULL, "names the tokenizer");
    EXPECT(rk_model_tokenize(m, P[0], C[0], NULL, 0, &n), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_score_tokens(m, ids, offsets, 1, out), RK_OK);
    rk_model_free(m);
    return failed;
}

/* ---------- scoring ---------- */

static int c_score_texts_args(const void *arg) {
    rk_model *m = tiny();
    float out[2] = {12345.0f, 12345.0f};
    const char *with_null[] = {P[0], NULL};
    const char *bad_utf8[] = {" fine", " caf\xe9"};
    (void)arg;
    EXPECT(rk_model_score_texts(NULL, P, C, 2, out), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_score_texts(m, P, C, 0, out), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_score_texts(m, P, C, SIZE_MAX, out), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_score_texts(m, P, C, (size_t)1 << 40, out), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_score_texts(m, NULL, C, 2, out), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_score_texts(m, P, NULL, 2, out), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_score_texts(m, with_null, C, 2, out), RK_ERR_NULL_POINTER);
    CHECK(strstr(rk_last_error_message(), "prompts[1]") != NULL, "names prompts[1]: %s", rk_last_error_message());
    EXPECT(rk_model_score_texts(m, P, bad_utf8, 2, out), RK_ERR_INVALID_UTF8);
    CHECK(strstr(rk_last_error_message(), "responses[1]") != NULL, "names responses[1]");
    EXPECT(rk_model_score_texts(m, P, C, 2, NULL), RK_ERR_NULL_POINTER);
    CHECK(out[0] == 12345.0f && out[1] == 12345.0f, "failed calls leave the output alone");
    CHECK(scores_ok(m, NULL), "still scores");
    rk_model_free(m);
    return failed;
}

static int c_score_empty_texts(const void *arg) {
    rk_model *m = tiny();
    const char *empty[] = {"", ""};
    float out[2];
    (void)arg;
    EXPECT(rk_model_score_texts(m, empty, empty, 2, out), RK_OK);
    CHECK(isfinite(out[0]), "finite");
    rk_model_free(m);
    return failed;
}

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A 10 MB prompt is cut before tokenizing: fast, bounded memory, same ids as a short one. */
static int c_score_huge_prompt(const void *arg) {
    rk_model *m = tiny();
    size_t n = 10u << 20, i, len_a, len_b;
    char *prompt = malloc(n + 1);
    const char *pair_p[1], *pair_r[1] = {" Sure."};
    float out[1];
    double t;
    uint32_t *a = malloc(4096 * sizeof *a), *b = malloc(4096 * sizeof *b);
    struct rusage ru;
    (void)arg;
    for (i = 0; i < n; i++) prompt[i] = "Human: tell me a long story please. "[i % 36];
    prompt[n] = 0;
    pair_p[0] = prompt;
    t = seconds();
    EXPECT(rk_model_score_texts(m, pair_p, pair_r, 1, out), RK_OK);
    CHECK(seconds() - t < 5.0, "10 MB prompt took %.1f s", seconds() - t);
    getrusage(RUSAGE_SELF, &ru);
    CHECK(ru.ru_maxrss < 1024 * 1024, "peak RSS %ld kB", ru.ru_maxrss);
    /* The kept end is exactly what tokenizing the last 100 kB gives. */
    EXPECT(rk_model_tokenize(m, prompt, " Sure.", a, 4096, &len_a), RK_OK);
    EXPECT(rk_model_tokenize(m, prompt + n - 36 * 3000, " Sure.", b, 4096, &len_b), RK_OK);
    CHECK(len_a == len_b && memcmp(a + 1, b + 1, (len_a - 1) * sizeof *a) == 0, "same ids (%zu vs %zu)", len_a, len_b);
    free(prompt);
    free(a);
    free(b);
    rk_model_free(m);
    return failed;
}

/* A 2 MB prompt with no whitespace cannot be cut safely: slower, but correct and bounded. */
static int c_score_prompt_without_spaces(const void *arg) {
    rk_model *m = tiny();
    size_t n = 2u << 20;
    char *prompt = malloc(n + 1);
    const char *pp[1], *rr[1] = {" ok"};
    float out[1];
    (void)arg;
    memset(prompt, 'x', n);
    prompt[n] = 0;
    pp[0] = prompt;
    EXPECT(rk_model_score_texts(m, pp, rr, 1, out), RK_OK);
    CHECK(isfinite(out[0]), "finite");
    free(prompt);
    rk_model_free(m);
    return failed;
}

static int c_score_tokens_args(const void *arg) {
    rk_model *m = tiny();
    uint32_t ids[6] = {1, 5, 6, 1, 7, 8};
    size_t good[3] = {0, 3, 6}, nonzero[3] = {1, 3, 6}, down[3] = {0, 4, 3}, empty[3] = {0, 3, 3}, huge[3] = {0, 3, SIZE_MAX};
    float out[2] = {7.0f, 7.0f};
    uint32_t oov[3] = {1, UINT32_MAX, 2};
    size_t oov_off[2] = {0, 3};
    (void)arg;
    EXPECT(rk_model_score_tokens(NULL, ids, good, 2, out), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_score_tokens(m, NULL, good, 2, out), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_score_tokens(m, ids, NULL, 2, out), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_score_tokens(m, ids, good, 2, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_score_tokens(m, ids, good, 0, out), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_score_tokens(m, ids, good, SIZE_MAX, out), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_score_tokens(m, ids, nonzero, 2, out), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_score_tokens(m, ids, down, 2, out), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_score_tokens(m, ids, empty, 2, out), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_score_tokens(m, ids, huge, 2, out), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_score_tokens(m, oov, oov_off, 1, out), RK_ERR_OUT_OF_VOCAB);
    CHECK(out[0] == 7.0f, "output untouched");
    EXPECT(rk_model_score_tokens(m, ids, good, 2, out), RK_OK);
    rk_model_free(m);
    return failed;
}

static int c_score_tokens_length(const void *arg) {
    rk_model *m = tiny();
    rk_model_info info;
    uint32_t *ids;
    size_t offsets[2], i;
    float out[1];
    (void)arg;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    EXPECT(rk_model_get_info(m, &info), RK_OK);
    ids = malloc((info.max_length + 1) * sizeof *ids);
    for (i = 0; i <= info.max_length; i++) ids[i] = (uint32_t)(i % 100 + 3);
    offsets[0] = 0;
    offsets[1] = info.max_length + 1;
    EXPECT(rk_model_score_tokens(m, ids, offsets, 1, out), RK_ERR_INVALID_ARGUMENT);
    offsets[1] = info.max_length;
    EXPECT(rk_model_score_tokens(m, ids, offsets, 1, out), RK_OK);
    free(ids);
    rk_model_free(m);
    return failed;
}

static int c_tokenize_args(const void *arg) {
    rk_model *m = tiny();
    uint32_t ids[256];
    size_t n = 0, need;
    (void)arg;
    EXPECT(rk_model_tokenize(m, P[0], C[0], ids, 256, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_tokenize(m, NULL, C[0], ids, 256, &n), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_tokenize(m, "\xff", C[0], ids, 256, &n), RK_ERR_INVALID_UTF8);
    EXPECT(rk_model_tokenize(m, P[0], C[0], NULL, 0, &n), RK_ERR_BUFFER_TOO_SMALL);
    need = n;
    CHECK(need > 1, "size needed reported");
    EXPECT(rk_model_tokenize(m, P[0], C[0], ids, need - 1, &n), RK_ERR_BUFFER_TOO_SMALL);
    EXPECT(rk_model_tokenize(m, P[0], C[0], NULL, 256, &n), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_tokenize(m, P[0], C[0], ids, need, &n), RK_OK);
    CHECK(n == need, "exact capacity");
    EXPECT(rk_model_tokenize(NULL, P[0], C[0], ids, 256, &n), RK_ERR_NULL_POINTER);
    rk_model_free(m);
    return failed;
}

/* Conversations: hostile JSON is refused with a message, the output is left alone, and a
 * deeply nested or huge conversation neither crashes nor hangs. */
static int c_chat_args(const void *arg) {
    rk_model *m = tiny();
    float out[2] = {12345.0f, 12345.0f};
    char text[256];
    size_t n = 7, need, i;
    const char *ok[] = {"[{\"role\": \"user\", \"content\": \"hi\"}]",
                        "[{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]"};
    const char *bad[] = {"", "{}", "[]", "[1]", "[{\"content\": \"no role\"}]", "[{\"role\": 3}]",
                         "[{\"role\": \"user\", \"content\": 3}]", "[{\"role\": \"alien\", \"content\": \"x\"}]",
                         "[{\"role\": \"user\", \"content\": \"x\"}", "[{\"role\": \"user\", \"content\": \"\\u0000\"}]"};
    const char *pair[2];
    char *deep;
    (void)arg;
    EXPECT(rk_model_score_chats(NULL, ok, 2, out), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_score_chats(m, NULL, 2, out), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_score_chats(m, ok, 0, out), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_score_chats(m, ok, SIZE_MAX, out), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_score_chats(m, ok, 2, NULL), RK_ERR_NULL_POINTER);
    for (i = 0; i < sizeof bad / sizeof *bad; i++) {
        pair[0] = ok[0];
        pair[1] = bad[i];
        rk_status s = rk_model_score_chats(m, pair, 2, out);
        /* A NUL inside content is a valid conversation (rendered as text, it scores). */
        if (i == 9) {
            EXPECT(s, RK_OK);
            continue;
        }
        CHECK(s == RK_ERR_INVALID_ARGUMENT, "bad conversation %zu refused (status %d)", i, (int)s);
        CHECK(strstr(rk_last_error_message(), "conversations[1]") != NULL, "names conversations[1]: %s", rk_last_error_message());
        CHECK(out[0] == 12345.0f && out[1] == 12345.0f, "failed calls leave the output alone");
    }
    /* 100k nested arrays: serde_json's depth limit refuses it, no stack overflow. */
    deep = malloc(200001);
    memset(deep, '[', 100000);
    memset(deep + 100000, ']', 100000);
    deep[200000] = 0;
    pair[1] = deep;
    EXPECT(rk_model_score_chats(m, pair, 2, out), RK_ERR_INVALID_ARGUMENT);
    free(deep);
    EXPECT(rk_model_score_chats(m, ok, 2, out), RK_OK);
    CHECK(isfinite(out[0]) && isfinite(out[1]), "finite rewards");

    EXPECT(rk_model_apply_chat_template(m, ok[1], 0, text, sizeof text, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_apply_chat_template(m, NULL, 0, text, sizeof text, &n), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_apply_chat_template(m, ok[1], 2, text, sizeof text, &n), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_model_apply_chat_template(m, "[", 0, text, sizeof text, &n), RK_ERR_INVALID_ARGUMENT);
    n = 7;
    EXPECT(rk_model_apply_chat_template(m, ok[1], 0, NULL, 16, &n), RK_ERR_NULL_POINTER);
    CHECK(n == 7, "a refused call leaves out_len alone");
    EXPECT(rk_model_apply_chat_template(m, ok[1], 0, NULL, 0, &n), RK_ERR_BUFFER_TOO_SMALL);
    need = n;
    CHECK(need == strlen("\n\nHuman: hi\n\nAssistant: yo"), "length reported (%zu)", need);
    memset(text, 'Z', sizeof text);
    EXPECT(rk_model_apply_chat_template(m, ok[1], 0, text, need, &n), RK_ERR_BUFFER_TOO_SMALL);
    CHECK(text[0] == 'Z', "too small: nothing written");
    EXPECT(rk_model_apply_chat_template(m, ok[1], 0, text, need + 1, &n), RK_OK);
    CHECK(n == need && text[need] == 0 && strcmp(text, "\n\nHuman: hi\n\nAssistant: yo") == 0, "exact capacity: %s", text);
    EXPECT(rk_model_apply_chat_template(m, ok[0], 1, text, sizeof text, &n), RK_OK);
    CHECK(strcmp(text, "\n\nHuman: hi\n\nAssistant:") == 0, "generation prompt: %s", text);
    CHECK(scores_ok(m, NULL), "still scores");
    rk_model_free(m);
    return failed;
}

static int c_info_args(const void *arg) {
    rk_model *m = tiny();
    unsigned char buf[sizeof(rk_model_info) + 32];
    rk_model_info *info = (rk_model_info *)buf;
    (void)arg;
    EXPECT(rk_model_get_info(m, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_get_info(NULL, info), RK_ERR_NULL_POINTER);
    memset(buf, 0, sizeof buf);
    EXPECT(rk_model_get_info(m, info), RK_ERR_INVALID_ARGUMENT);
    memset(buf, 0xEE, sizeof buf);
    info->struct_size = offsetof(rk_model_info, num_heads);
    EXPECT(rk_model_get_info(m, info), RK_OK);
    CHECK(info->num_layers == 4 && info->has_tokenizer == 1 && buf[offsetof(rk_model_info, num_heads)] == 0xEE, "older caller: prefix only");
    info->struct_size = sizeof buf;
    EXPECT(rk_model_get_info(m, info), RK_OK);
    CHECK(info->struct_size == sizeof(rk_model_info) && info->num_heads == 1 && buf[sizeof(rk_model_info)] == 0xEE, "newer caller: our size only");
    rk_model_free(m);
    return failed;
}

/* ---------- trainers ---------- */

typedef struct {
    const char *name;
    void (*mutate)(rk_trainer_params *);
    rk_status want;
} trainer_param_case;

#define TP(id, stmt) static void tp_##id(rk_trainer_params *p) { stmt; }
TP(lr_nan, p->lr = NAN)
TP(lora_rank_0, p->trainable = RK_TRAIN_LORA; p->lora_rank = 0)
TP(lora_rank_huge, p->trainable = RK_TRAIN_LORA; p->lora_rank = UINT32_MAX)
TP(lora_alpha_nan, p->trainable = RK_TRAIN_LORA; p->lora_alpha = NAN)
TP(lora_alpha_neg, p->trainable = RK_TRAIN_LORA; p->lora_alpha = -8)
TP(lora_targets_0, p->trainable = RK_TRAIN_LORA; p->lora_targets = 0)
TP(lora_targets_high, p->trainable = RK_TRAIN_LORA; p->lora_targets = RK_LORA_ALL + 1)
TP(lora_targets_huge, p->trainable = RK_TRAIN_LORA; p->lora_targets = UINT32_MAX)
TP(lora_rslora_2, p->trainable = RK_TRAIN_LORA; p->lora_rslora = 2)
TP(lora_ok, p->trainable = RK_TRAIN_LORA; p->lora_rank = 2; p->lora_targets = RK_LORA_Q | RK_LORA_V)
TP(lora_dropout_nan, p->trainable = RK_TRAIN_LORA; p->lora_dropout = NAN)
TP(lora_dropout_one, p->trainable = RK_TRAIN_LORA; p->lora_dropout = 1.0f)
TP(lora_dropout_neg, p->trainable = RK_TRAIN_LORA; p->lora_dropout = -0.1f)
TP(lora_dropout_ok, p->trainable = RK_TRAIN_LORA; p->lora_dropout = 0.1f)
TP(trainable_4, p->trainable = 4)
TP(lr_inf, p->lr = INFINITY)
TP(lr_neg, p->lr = -1)
TP(wd_inf, p->weight_decay = INFINITY)
TP(wd_nan, p->weight_decay = NAN)
TP(wd_lr, p->lr = 0.5; p->weight_decay = 2)
TP(beta1_one, p->beta1 = 1.0)
TP(beta2_neg, p->beta2 = -0.1)
TP(eps_zero, p->eps = 0)
TP(eps_inf, p->eps = INFINITY)
TP(clip_neg, p->max_grad_norm = -1)
TP(clip_nan, p->max_grad_norm = NAN)
TP(accum_zero, p->grad_accum = 0)
TP(accum_max, p->grad_accum = UINT32_MAX)
TP(dropout_one, p->dropout = 1.0f)
TP(dropout_nan, p->dropout = NAN)
TP(schedule_bad, p->schedule = 99)
TP(trainable_bad, p->trainable = 7)
TP(top_layers_many, p->trainable = RK_TRAIN_TOP_LAYERS; p->top_layers = 1000)
TP(flip_bad, p->flip = 9)
TP(flip_threshold_nan, p->flip = RK_FLIP_BELOW; p->flip_threshold = NAN)
TP(flip_fraction_two, p->flip = RK_FLIP_LOWEST_FRACTION; p->flip_fraction = 2.0f)
TP(smooth_bad, p->smooth = -4)
TP(smooth_alpha_two, p->smooth = RK_SMOOTH_CONSTANT; p->smooth_alpha = 2.0f)
TP(smooth_alpha_nan, p->smooth = RK_SMOOTH_NEGATIVE_ONLY; p->smooth_alpha = NAN)
TP(margin_bad, p->margin = 17)
TP(margin_scale_inf, p->margin = RK_MARGIN_RAW; p->margin_scale = INFINITY)
TP(centering_nan, p->centering = NAN)
TP(centering_neg, p->centering = -1)
TP(meta_lr_inf, p->meta_lr = INFINITY)
TP(contrastive_bad, p->contrastive = 5)
TP(items_bad, p->contrastive = RK_CONTRASTIVE_SIMCSE; p->contrastive_items = 3)
TP(prototypes_max, p->contrastive = RK_CONTRASTIVE_SWAV; p->swav_prototypes = UINT32_MAX)
TP(prototypes_one, p->contrastive = RK_CONTRASTIVE_SWAV; p->swav_prototypes = 1)
TP(sinkhorn_max, p->contrastive = RK_CONTRASTIVE_SWAV; p->sinkhorn_iterations = UINT32_MAX)
TP(temperature_neg, p->contrastive = RK_CONTRASTIVE_SIMCSE; p->contrastive_temperature = -1.0f)
TP(beta_nan, p->contrastive = RK_CONTRASTIVE_SIMCSE; p->contrastive_beta = NAN)
TP(cl_dropout_one, p->contrastive = RK_CONTRASTIVE_SIMCSE; p->contrastive_dropout = 1.0f)
TP(epsilon_inf, p->contrastive = RK_CONTRASTIVE_SWAV; p->sinkhorn_epsilon = INFINITY)
TP(view_layers_max, p->contrastive = RK_CONTRASTIVE_SIMCSE; p->contrastive_view_layers = UINT32_MAX)
TP(view_layers_all_ok, p->contrastive = RK_CONTRASTIVE_SIMCSE; p->contrastive_view_layers = 0)
TP(measure_j_after_2, p->measure_j_after = 2)
TP(meta_order_0, p->meta_order = 0)
TP(meta_order_3, p->meta_order = 3)
TP(size_zero, p->struct_size = 0)
TP(size_big, p->struct_size = sizeof *p + 1)
TP(swav_diff_ok, p->contrastive = RK_CONTRASTIVE_SWAV; p->contrastive_items = RK_ITEMS_DIFFERENCES)
TP(all_rules_ok, p->flip = RK_FLIP_LOWEST_FRACTION; p->smooth = RK_SMOOTH_PER_PAIR; p->margin = RK_MARGIN_ABS; p->trainable = RK_TRAIN_TOP_LAYERS;
   p->top_layers = 2)

static const trainer_param_case TRAINER_PARAM_CASES[] = {
    {"lr NaN", tp_lr_nan, RK_ERR_INVALID_ARGUMENT},
    {"lora rank 0", tp_lora_rank_0, RK_ERR_INVALID_ARGUMENT},
    {"lora rank UINT32_MAX", tp_lora_rank_huge, RK_ERR_INVALID_ARGUMENT},
    {"lora alpha NaN", tp_lora_alpha_nan, RK_ERR_INVALID_ARGUMENT},
    {"lora alpha -8", tp_lora_alpha_neg, RK_ERR_INVALID_ARGUMENT},
    {"lora targets 0", tp_lora_targets_0, RK_ERR_INVALID_ARGUMENT},
    {"lora targets beyond RK_LORA_ALL", tp_lora_targets_high, RK_ERR_INVALID_ARGUMENT},
    {"lora targets UINT32_MAX", tp_lora_targets_huge, RK_ERR_INVALID_ARGUMENT},
    {"lora rslora 2", tp_lora_rslora_2, RK_ERR_INVALID_ARGUMENT},
    {"lora r 2 on q, v", tp_lora_ok, RK_OK},
    {"lora dropout NaN", tp_lora_dropout_nan, RK_ERR_INVALID_ARGUMENT},
    {"lora dropout 1", tp_lora_dropout_one, RK_ERR_INVALID_ARGUMENT},
    {"lora dropout -0.1", tp_lora_dropout_neg, RK_ERR_INVALID_ARGUMENT},
    {"lora dropout 0.1", tp_lora_dropout_ok, RK_OK},
    {"trainable 4", tp_trainable_4, RK_ERR_INVALID_ARGUMENT},
    {"lr inf", tp_lr_inf, RK_ERR_INVALID_ARGUMENT},
    {"lr -1", tp_lr_neg, RK_ERR_INVALID_ARGUMENT},
    {"weight_decay inf", tp_wd_inf, RK_ERR_INVALID_ARGUMENT},
    {"weight_decay NaN", tp_wd_nan, RK_ERR_INVALID_ARGUMENT},
    {"lr * weight_decay >= 1", tp_wd_lr, RK_ERR_INVALID_ARGUMENT},
    {"beta1 1", tp_beta1_one, RK_ERR_INVALID_ARGUMENT},
    {"beta2 -0.1", tp_beta2_neg, RK_ERR_INVALID_ARGUMENT},
    {"eps 0", tp_eps_zero, RK_ERR_INVALID_ARGUMENT},
    {"eps inf", tp_eps_inf, RK_ERR_INVALID_ARGUMENT},
    {"max_grad_norm -1", tp_clip_neg, RK_ERR_INVALID_ARGUMENT},
    {"max_grad_norm NaN", tp_clip_nan, RK_ERR_INVALID_ARGUMENT},
    {"grad_accum 0", tp_accum_zero, RK_ERR_INVALID_ARGUMENT},
    {"grad_accum UINT32_MAX", tp_accum_max, RK_ERR_INVALID_ARGUMENT},
    {"dropout 1", tp_dropout_one, RK_ERR_INVALID_ARGUMENT},
    {"dropout NaN", tp_dropout_nan, RK_ERR_INVALID_ARGUMENT},
    {"schedule 99", tp_schedule_bad, RK_ERR_INVALID_ARGUMENT},
    {"trainable 7", tp_trainable_bad, RK_ERR_INVALID_ARGUMENT},
    {"top 1000 of 4 layers", tp_top_layers_many, RK_ERR_INVALID_ARGUMENT},
    {"flip 9", tp_flip_bad, RK_ERR_INVALID_ARGUMENT},
    {"flip threshold NaN", tp_flip_threshold_nan, RK_ERR_INVALID_ARGUMENT},
    {"flip fraction 2", tp_flip_fraction_two, RK_ERR_INVALID_ARGUMENT},
    {"smooth -4", tp_smooth_bad, RK_ERR_INVALID_ARGUMENT},
    {"smooth alpha 2", tp_smooth_alpha_two, RK_ERR_INVALID_ARGUMENT},
    {"smooth alpha NaN", tp_smooth_alpha_nan, RK_ERR_INVALID_ARGUMENT},
    {"margin 17", tp_margin_bad, RK_ERR_INVALID_ARGUMENT},
    {"margin scale inf", tp_margin_scale_inf, RK_ERR_INVALID_ARGUMENT},
    {"centering NaN", tp_centering_nan, RK_ERR_INVALID_ARGUMENT},
    {"centering -1", tp_centering_neg, RK_ERR_INVALID_ARGUMENT},
    {"meta_lr inf", tp_meta_lr_inf, RK_ERR_INVALID_ARGUMENT},
    {"contrastive 5", tp_contrastive_bad, RK_ERR_INVALID_ARGUMENT},
    {"contrastive items 3", tp_items_bad, RK_ERR_INVALID_ARGUMENT},
    {"SwAV prototypes UINT32_MAX", tp_prototypes_max, RK_ERR_INVALID_ARGUMENT},
    {"SwAV 1 prototype", tp_prototypes_one, RK_ERR_INVALID_ARGUMENT},
    {"Sinkhorn iterations UINT32_MAX", tp_sinkhorn_max, RK_ERR_INVALID_ARGUMENT},
    {"SimCSE temperature -1", tp_temperature_neg, RK_ERR_INVALID_ARGUMENT},
    {"contrastive beta NaN", tp_beta_nan, RK_ERR_INVALID_ARGUMENT},
    {"contrastive dropout 1", tp_cl_dropout_one, RK_ERR_INVALID_ARGUMENT},
    {"Sinkhorn epsilon inf", tp_epsilon_inf, RK_ERR_INVALID_ARGUMENT},
    {"contrastive view layers UINT32_MAX", tp_view_layers_max, RK_ERR_INVALID_ARGUMENT},
    {"contrastive views over every layer", tp_view_layers_all_ok, RK_OK},
    {"measure_j_after 2", tp_measure_j_after_2, RK_ERR_INVALID_ARGUMENT},
    {"meta_order 0", tp_meta_order_0, RK_ERR_INVALID_ARGUMENT},
    {"meta_order 3", tp_meta_order_3, RK_ERR_INVALID_ARGUMENT},
    {"struct_size 0", tp_size_zero, RK_ERR_INVALID_ARGUMENT},
    {"struct_size too big", tp_size_big, RK_ERR_INVALID_ARGUMENT},
    {"SwAV-diff", tp_swav_diff_ok, RK_OK},
    {"every noise rule", tp_all_rules_ok, RK_OK},
};

/* A refused create leaves the model as it was: a plain trainer (and a SwAV one with the
 * paper's prototypes) can be created right after. */
static int c_trainer_param(const void *arg) {
    const trainer_param_case *c = arg;
    rk_model *m = tiny();
    rk_trainer_params p = trainer_params();
    rk_trainer *t = (rk_trainer *)1;
    c->mutate(&p);
    EXPECT(rk_trainer_create(m, &p, &t), c->want);
    if (c->want != RK_OK) {
        CHECK(t == NULL, "no handle on failure");
        p = trainer_params();
        p.contrastive = RK_CONTRASTIVE_SWAV;
        EXPECT(rk_trainer_create(m, &p, &t), RK_OK);
    }
    CHECK(scores_ok(m, NULL), "model still scores");
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

static int c_trainer_create_args(const void *arg) {
    rk_model *m = tiny();
    rk_trainer *t = NULL, *second = NULL;
    rk_trainer_params p = trainer_params();
    (void)arg;
    EXPECT(rk_trainer_create(NULL, &p, &t), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_create(m, &p, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_create(m, NULL, &t), RK_OK);
    EXPECT(rk_trainer_create(m, &p, &second), RK_ERR_INVALID_ARGUMENT);
    /* A second SwAV trainer is refused too, and leaves no prototypes behind. */
    p.contrastive = RK_CONTRASTIVE_SWAV;
    p.swav_prototypes = 7;
    EXPECT(rk_trainer_create(m, &p, &second), RK_ERR_INVALID_ARGUMENT);
    EXPECT(step(t, NULL, NULL), RK_OK);
    rk_trainer_free(t);
    p.swav_prototypes = 9;
    EXPECT(rk_trainer_create(m, &p, &second), RK_OK);
    rk_trainer_free(second);
    rk_model_free(m);
    return failed;
}

/* A SwAV create refused for its optimizer settings leaves no prototypes: the next SwAV
 * trainer may choose another number of them. */
static int c_swav_refused_leaves_nothing(const void *arg) {
    rk_model *m = tiny();
    rk_trainer_params p = trainer_params();
    rk_trainer *t = NULL;
    (void)arg;
    p.contrastive = RK_CONTRASTIVE_SWAV;
    p.swav_prototypes = 11;
    p.lr = NAN;
    EXPECT(rk_trainer_create(m, &p, &t), RK_ERR_INVALID_ARGUMENT);
    p.lr = 1e-3;
    p.swav_prototypes = 13;
    EXPECT(rk_trainer_create(m, &p, &t), RK_OK);
    EXPECT(step(t, NULL, NULL), RK_OK);
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

/* ---------- steps ---------- */

static int c_step_args(const void *arg) {
    rk_model *m = tiny();
    rk_trainer *t = trainer_on(m, NULL);
    const char *with_null[] = {C[0], NULL};
    const char *bad[] = {C[0], "\xc3\x28"};
    rk_step_stats st;
    (void)arg;
    EXPECT(rk_trainer_step_texts(NULL, P, C, R, 2, NULL, NULL, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_step_texts(t, P, C, R, 0, NULL, NULL, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_step_texts(t, P, C, R, SIZE_MAX, NULL, NULL, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_step_texts(t, NULL, C, R, 2, NULL, NULL, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_step_texts(t, P, with_null, R, 2, NULL, NULL, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_step_texts(t, P, C, bad, 2, NULL, NULL, NULL), RK_ERR_INVALID_UTF8);
    memset(&st, 0, sizeof st);
    st.struct_size = 3;
    EXPECT(rk_trainer_step_texts(t, P, C, R, 2, NULL, NULL, &st), RK_ERR_INVALID_ARGUMENT);
    /* None of the refused calls counted: the next step is step 1. */
    st.struct_size = sizeof st;
    EXPECT(rk_trainer_step_texts(t, P, C, R, 2, NULL, NULL, &st), RK_OK);
    CHECK(st.step == 1 && st.micro_step == 1 && st.applied == 1, "step %llu micro %llu", (unsigned long long)st.step, (unsigned long long)st.micro_step);
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

static int c_step_tokens_overflow(const void *arg) {
    rk_model *m = tiny();
    rk_trainer *t = trainer_on(m, NULL);
    uint32_t ids[1024];
    size_t offsets[3], roffs[3], big[3] = {0, 2, SIZE_MAX};
    uint32_t rids[1024];
    (void)arg;
    tokenize_pairs(m);
    flat(0, ids, offsets);
    flat(1, rids, roffs);
    EXPECT(rk_trainer_step_tokens(t, ids, offsets, rids, roffs, SIZE_MAX, NULL, NULL, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_step_tokens(t, ids, offsets, rids, roffs, SIZE_MAX - 1, NULL, NULL, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_step_tokens(t, ids, big, rids, roffs, 2, NULL, NULL, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_step_tokens(t, ids, offsets, NULL, roffs, 2, NULL, NULL, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_step_tokens(t, ids, offsets, rids, NULL, 2, NULL, NULL, NULL), RK_ERR_NULL_POINTER);
    rids[0] = 100000;
    EXPECT(rk_trainer_step_tokens(t, ids, offsets, rids, roffs, 2, NULL, NULL, NULL), RK_ERR_OUT_OF_VOCAB);
    rids[0] = 1;
    /* Not poisoned: the trainer steps. */
    EXPECT(rk_trainer_step_tokens(t, ids, offsets, rids, roffs, 2, NULL, NULL, NULL), RK_OK);
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

static int c_step_labels(const void *arg) {
    rk_model *m = tiny();
    rk_trainer_params p = trainer_params();
    rk_trainer *t;
    float before[2], after[2];
    float nan_strength[2] = {0.5f, NAN}, huge[2] = {1e38f, 1e38f}, ok[2] = {-0.5f, 0.5f}, alpha_bad[2] = {0.1f, 1.5f}, alpha_ok[2] = {0.1f, 0.0f};
    (void)arg;
    p.flip = RK_FLIP_BELOW;
    p.margin = RK_MARGIN_RAW;
    p.margin_scale = 10.0f;
    p.smooth = RK_SMOOTH_PER_PAIR;
    t = trainer_on(m, &p);
    CHECK(scores_ok(m, before), "scores");
    EXPECT(step(t, NULL, alpha_ok), RK_ERR_INVALID_ARGUMENT);
    EXPECT(step(t, ok, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(step(t, nan_strength, alpha_ok), RK_ERR_INVALID_ARGUMENT);
    EXPECT(step(t, huge, alpha_ok), RK_ERR_INVALID_ARGUMENT);
    EXPECT(step(t, ok, alpha_bad), RK_ERR_INVALID_ARGUMENT);
    CHECK(scores_ok(m, after) && after[0] == before[0] && after[1] == before[1], "refused steps change no weight");
    EXPECT(step(t, ok, alpha_ok), RK_OK);
    CHECK(scores_ok(m, after) && after[0] != before[0], "a good step trains");
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

/* A learning rate that makes the weights overflow: refused before they change. */
static int c_step_non_finite(const void *arg) {
    rk_model *m = tiny();
    rk_trainer_params p = trainer_params();
    rk_trainer *t;
    float before[2], after[2];
    rk_eval_stats ev;
    (void)arg;
    p.lr = 1e300;
    p.max_grad_norm = 0;
    t = trainer_on(m, &p);
    CHECK(scores_ok(m, before), "scores");
    EXPECT(step(t, NULL, NULL), RK_ERR_NON_FINITE);
    CHECK(scores_ok(m, after) && after[0] == before[0] && after[1] == before[1], "weights unchanged");
    memset(&ev, 0, sizeof ev);
    ev.struct_size = sizeof ev;
    EXPECT(rk_trainer_evaluate_texts(t, P, C, R, 2, &ev), RK_OK);
    EXPECT(rk_trainer_save(t, path_in(CASE_DIR, "after-refusal")), RK_OK);
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

static int c_evaluate_args(const void *arg) {
    rk_model *m = tiny();
    rk_trainer *t = trainer_on(m, NULL);
    rk_eval_stats ev;
    (void)arg;
    memset(&ev, 0, sizeof ev);
    ev.struct_size = sizeof ev;
    EXPECT(rk_trainer_evaluate_texts(t, P, C, R, 2, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_evaluate_texts(NULL, P, C, R, 2, &ev), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_evaluate_texts(t, P, C, R, SIZE_MAX, &ev), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_evaluate_tokens(t, NULL, NULL, NULL, NULL, 2, &ev), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_evaluate_texts(t, P, C, R, 2, &ev), RK_OK);
    CHECK(ev.pairs == 2 && isfinite(ev.loss), "report");
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

/* ---------- MetaRM ---------- */

static const char *PP[] = {"\n\nHuman: Hi\n\nAssistant:", "\n\nHuman: Bye\n\nAssistant:"};
static const char *PR[] = {" Hello!", " Go away.", " Hi there.", " See you.", " Bye now."};

static int c_meta_args(const void *arg) {
    rk_model *m = tiny();
    rk_trainer *t = trainer_on(m, NULL);
    size_t offs[3] = {0, 3, 5}, down[3] = {0, 3, 2}, single[3] = {0, 1, 5}, start[3] = {1, 3, 5}, huge[3] = {0, 3, SIZE_MAX};
    rk_meta_step_stats st;
    double j;
    (void)arg;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    EXPECT(rk_trainer_meta_step_texts(t, P, C, R, 2, NULL, NULL, PP, SIZE_MAX, PR, offs, &st), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_meta_step_texts(t, P, C, R, 2, NULL, NULL, PP, 0, PR, offs, &st), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_meta_step_texts(t, P, C, R, 2, NULL, NULL, PP, 2, PR, down, &st), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_meta_step_texts(t, P, C, R, 2, NULL, NULL, PP, 2, PR, single, &st), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_meta_step_texts(t, P, C, R, 2, NULL, NULL, PP, 2, PR, start, &st), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_meta_step_texts(t, P, C, R, 2, NULL, NULL, PP, 2, PR, huge, &st), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_meta_step_texts(t, P, C, R, 2, NULL, NULL, PP, 2, NULL, offs, &st), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_meta_step_texts(t, P, C, R, 2, NULL, NULL, PP, 2, PR, NULL, &st), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_meta_step_texts(NULL, P, C, R, 2, NULL, NULL, PP, 2, PR, offs, &st), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_meta_step_texts(t, P, C, R, 2, NULL, NULL, PP, 2, PR, offs, &st), RK_OK);
    CHECK(st.step == 1 && isfinite(st.j_before) && st.j_after >= st.j_before - 1e-6, "meta step");
    EXPECT(rk_model_difference_loss_texts(m, PP, 2, PR, offs, &j), RK_OK);
    CHECK(j >= 0.25 && j < 0.67, "J %f", j);
    EXPECT(rk_model_difference_loss_texts(m, PP, 2, PR, offs, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_difference_loss_texts(NULL, PP, 2, PR, offs, &j), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_difference_loss_texts(m, PP, SIZE_MAX, PR, offs, &j), RK_ERR_INVALID_ARGUMENT);
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

static int c_meta_tokens(const void *arg) {
    rk_model *m = tiny();
    rk_trainer *t = trainer_on(m, NULL);
    uint32_t ids[1024], rids[1024], pol[64] = {1, 5, 6, 1, 7, 8, 1, 9, 10};
    size_t offsets[3], roffs[3], seq[4] = {0, 3, 6, 9}, groups[2] = {0, 3}, groups_big[2] = {0, SIZE_MAX}, groups_one[3] = {0, 1, 3};
    double j;
    (void)arg;
    tokenize_pairs(m);
    flat(0, ids, offsets);
    flat(1, rids, roffs);
    EXPECT(rk_trainer_meta_step_tokens(t, ids, offsets, rids, roffs, 2, NULL, NULL, pol, seq, groups, SIZE_MAX, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_meta_step_tokens(t, ids, offsets, rids, roffs, 2, NULL, NULL, pol, seq, groups_big, 1, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_meta_step_tokens(t, ids, offsets, rids, roffs, 2, NULL, NULL, pol, seq, groups_one, 2, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_meta_step_tokens(t, ids, offsets, rids, roffs, 2, NULL, NULL, pol, NULL, groups, 1, NULL), RK_ERR_NULL_POINTER);
    pol[4] = 99999;
    EXPECT(rk_trainer_meta_step_tokens(t, ids, offsets, rids, roffs, 2, NULL, NULL, pol, seq, groups, 1, NULL), RK_ERR_OUT_OF_VOCAB);
    EXPECT(rk_model_difference_loss_tokens(m, pol, seq, groups, 1, &j), RK_ERR_OUT_OF_VOCAB);
    pol[4] = 7;
    EXPECT(rk_trainer_meta_step_tokens(t, ids, offsets, rids, roffs, 2, NULL, NULL, pol, seq, groups, 1, NULL), RK_OK);
    EXPECT(rk_model_difference_loss_tokens(m, pol, seq, groups, 1, &j), RK_OK);
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

/* An ascent step that overflows the weights is refused; the model keeps scoring. */
static int c_meta_non_finite(const void *arg) {
    rk_model *m = tiny();
    rk_trainer_params p = trainer_params();
    rk_trainer *t;
    size_t offs[3] = {0, 3, 5};
    rk_status s;
    float before[2], after[2];
    (void)arg;
    p.meta_lr = 1e300;
    t = trainer_on(m, &p);
    CHECK(scores_ok(m, before), "scores");
    s = rk_trainer_meta_step_texts(t, P, C, R, 2, NULL, NULL, PP, 2, PR, offs, NULL);
    CHECK(s == RK_ERR_NON_FINITE || s == RK_OK, "status %s", rk_status_name(s));
    if (s != RK_OK) CHECK(scores_ok(m, after) && after[0] == before[0], "weights unchanged");
    CHECK(scores_ok(m, NULL), "still scores");
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

/* ---------- data parallelism ---------- */

/* A host all-reduce that misbehaves as `*(int *)user` says. */
enum { HOOK_STATUS, HOOK_NAN, HOOK_UNKNOWN_CODE, HOOK_IDENTITY };
static int hook_mode, hook_calls;
static int32_t hostile_hook(void *user, float *buffer, size_t n, const rk_allreduce_info *info) {
    size_t i;
    (void)user;
    hook_calls++;
    if (!info || info->struct_size < sizeof *info || info->buffer_kind != RK_BUFFER_HOST || info->world_size != 2) return RK_ERR_INVALID_ARGUMENT;
    switch (hook_mode) {
    case HOOK_STATUS:
        for (i = 0; i < n; i++) buffer[i] = 1e30f;  /* a half-done reduction must not leak */
        return RK_ERR_IO;
    case HOOK_NAN:
        buffer[n / 2] = NAN;
        return RK_OK;
    case HOOK_UNKNOWN_CODE:
        return -7;
    default:
        return RK_OK;
    }
}

static uint64_t checksum(const rk_model *m) {
    uint64_t c = 0;
    if (rk_model_weights_checksum(m, &c) != RK_OK) exit(3);
    return c;
}

static int c_allreduce_args(const void *arg) {
    rk_model *m = tiny();
    rk_trainer_params p = trainer_params();
    rk_trainer *t;
    (void)arg;
    p.grad_accum = 2;
    t = trainer_on(m, &p);
    EXPECT(rk_trainer_set_allreduce(NULL, hostile_hook, NULL, 0, 2), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_set_allreduce(t, hostile_hook, NULL, 0, 0), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_set_allreduce(t, hostile_hook, NULL, 2, 2), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_set_allreduce(t, hostile_hook, NULL, UINT32_MAX, UINT32_MAX), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_set_allreduce(t, NULL, NULL, 5, 0), RK_OK);  /* leaving: rank and size unused */
    /* Half an accumulation cycle: joining now would mix local and global gradients. */
    EXPECT(step(t, NULL, NULL), RK_OK);
    EXPECT(rk_trainer_set_allreduce(t, hostile_hook, NULL, 0, 2), RK_ERR_INVALID_ARGUMENT);
    EXPECT(step(t, NULL, NULL), RK_OK);
    hook_mode = HOOK_IDENTITY;
    EXPECT(rk_trainer_set_allreduce(t, hostile_hook, NULL, 1, 2), RK_OK);
    EXPECT(step(t, NULL, NULL), RK_OK);
    EXPECT(step(t, NULL, NULL), RK_OK);
    CHECK(hook_calls == 1, "one call per optimizer step, not per micro-step: %d", hook_calls);
    CHECK(scores_ok(m, NULL), "still scores");
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

static int c_allreduce_failures(const void *arg) {
    rk_model *m = tiny();
    rk_trainer_params p = trainer_params();
    rk_trainer *t;
    uint64_t before;
    size_t offs[3] = {0, 3, 5};
    (void)arg;
    t = trainer_on(m, &p);
    before = checksum(m);
    EXPECT(rk_trainer_set_allreduce(t, hostile_hook, NULL, 0, 2), RK_OK);
    hook_mode = HOOK_STATUS;
    EXPECT(step(t, NULL, NULL), RK_ERR_IO);
    CHECK(checksum(m) == before, "a failed hook changed the weights");
    CHECK(strstr(rk_last_error_message(), "all-reduce") != NULL, "message names the hook: %s", rk_last_error_message());
    EXPECT(rk_trainer_meta_step_texts(t, P, C, R, 2, NULL, NULL, PP, 2, PR, offs, NULL), RK_ERR_IO);
    CHECK(checksum(m) == before, "a failed MetaRM hook changed the weights");
    hook_mode = HOOK_NAN;
    EXPECT(step(t, NULL, NULL), RK_ERR_NON_FINITE);
    CHECK(checksum(m) == before, "a NaN from the hook reached the weights");
    hook_mode = HOOK_UNKNOWN_CODE;
    EXPECT(step(t, NULL, NULL), RK_ERR_INTERNAL);
    CHECK(checksum(m) == before, "an unknown code changed the weights");
    /* The trainer is not poisoned: a good hook steps. */
    hook_mode = HOOK_IDENTITY;
    EXPECT(step(t, NULL, NULL), RK_OK);
    CHECK(checksum(m) != before, "the good step trained");
    CHECK(scores_ok(m, NULL), "still scores");
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

static int c_pull_style_args(const void *arg) {
    rk_model *m = tiny();
    rk_trainer_params p = trainer_params();
    rk_trainer *t;
    size_t n = 0;
    float *g, *w;
    uint64_t before;
    rk_step_stats st;
    (void)arg;
    p.defer_apply = 1;
    t = trainer_on(m, &p);
    EXPECT(rk_trainer_trained_size(NULL, &n), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_trained_size(t, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_trained_size(t, &n), RK_OK);
    CHECK(n > 0, "trained size");
    g = calloc(n, sizeof *g);
    w = calloc(n, sizeof *w);
    /* Nothing pending yet. */
    EXPECT(rk_trainer_get_gradients(t, g, n), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_apply(t, NULL), RK_ERR_INVALID_ARGUMENT);
    before = checksum(m);
    EXPECT(step(t, NULL, NULL), RK_OK);
    CHECK(checksum(m) == before, "defer_apply changed the weights");
    EXPECT(rk_trainer_get_gradients(t, NULL, n), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_get_gradients(t, g, n - 1), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_get_gradients(t, g, SIZE_MAX), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_get_gradients(t, g, n), RK_OK);
    EXPECT(rk_trainer_set_gradients(t, g, SIZE_MAX / 2), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_set_gradients(t, NULL, n), RK_ERR_NULL_POINTER);
    g[n - 1] = INFINITY;
    EXPECT(rk_trainer_set_gradients(t, g, n), RK_ERR_NON_FINITE);
    g[n - 1] = 0;
    /* Pending: the weights are frozen until apply or discard. */
    EXPECT(rk_trainer_get_weights(t, w, n), RK_OK);
    EXPECT(rk_trainer_set_weights(t, w, n), RK_ERR_INVALID_ARGUMENT);
    EXPECT(step(t, NULL, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_set_gradients(t, g, n), RK_OK);
    memset(&st, 0, sizeof st);
    st.struct_size = 8; /* an old caller's tiny struct: written up to its size only */
    EXPECT(rk_trainer_apply(t, &st), RK_OK);
    CHECK(checksum(m) != before, "apply trained");
    EXPECT(rk_trainer_apply(t, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(step(t, NULL, NULL), RK_OK);
    EXPECT(rk_trainer_discard_gradients(t), RK_OK);
    EXPECT(rk_trainer_discard_gradients(NULL), RK_ERR_NULL_POINTER);
    /* Weights: lengths, NaN refused; a good set round-trips bitwise. */
    EXPECT(rk_trainer_get_weights(t, w, n + 1), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_trainer_get_weights(t, NULL, n), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_get_weights(t, w, n), RK_OK);
    before = checksum(m);
    w[0] = NAN;
    EXPECT(rk_trainer_set_weights(t, w, n), RK_ERR_NON_FINITE);
    CHECK(checksum(m) == before, "a refused set_weights changed the weights");
    EXPECT(rk_trainer_get_weights(t, w, n), RK_OK);
    EXPECT(rk_trainer_set_weights(t, w, n), RK_OK);
    CHECK(checksum(m) == before, "set_weights of the same values changed the checksum");
    EXPECT(rk_model_weights_checksum(NULL, &before), RK_ERR_NULL_POINTER);
    EXPECT(rk_model_weights_checksum(m, NULL), RK_ERR_NULL_POINTER);
    CHECK(scores_ok(m, NULL), "still scores");
    free(g);
    free(w);
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

static int c_pairs_files(const void *arg) {
    rk_pairs *d = NULL;
    size_t n = 0, skipped = 0, line = 0;
    const char *pr, *ch, *rj;
    char *bad = path_in(CASE_DIR, "bad.jsonl"), *good = path_in(CASE_DIR, "good.jsonl");
    (void)arg;
    write_text(bad, "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\nnot json\n{\"chosen\": 3}\n\xff\xfe\n");
    write_text(good, "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n");
    EXPECT(rk_pairs_load(NULL, 1, &d), RK_ERR_NULL_POINTER);
    EXPECT(rk_pairs_load(good, 1, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_pairs_load(good, 2, &d), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_pairs_load(path_in(CASE_DIR, "missing.jsonl"), 1, &d), RK_ERR_NOT_FOUND);
    CHECK(d == NULL, "a failed load wrote a handle");
    EXPECT(rk_pairs_load(CASE_DIR, 1, &d), RK_ERR_IO);
    EXPECT(rk_pairs_load("/dev/zero", 1, &d), RK_ERR_IO);
    EXPECT(rk_pairs_load(bad, 0, &d), RK_ERR_CORRUPT_FILE);
    CHECK(strstr(rk_last_error_message(), "line 2") != NULL, "message names the line: %s", rk_last_error_message());
    EXPECT(rk_pairs_load(bad, 1, &d), RK_OK);
    EXPECT(rk_pairs_count(d, NULL, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_pairs_count(NULL, &n, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_pairs_count(d, &n, &skipped), RK_OK);
    CHECK(n == 1 && skipped == 3, "n %zu skipped %zu", n, skipped);
    EXPECT(rk_pairs_get(d, 1, &pr, &ch, &rj, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_pairs_get(d, SIZE_MAX, &pr, &ch, &rj, NULL), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_pairs_get(d, 0, NULL, &ch, &rj, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_pairs_get(d, 0, &pr, &ch, &rj, &line), RK_OK);
    CHECK(line == 1 && !strcmp(pr, "p") && !strcmp(ch, "a") && !strcmp(rj, "b"), "pair 0");
    rk_pairs_free(d);
    rk_pairs_free(NULL);
    return failed;
}

/* ---------- vote ---------- */

static int c_vote_args(const void *arg) {
    rk_model *a = tiny(), *b = tiny();
    const rk_model *both[2], *with_null[2];
    float mean[2], sd[2];
    uint32_t ids[1024], rids[1024];
    size_t offsets[3], roffs[3];
    (void)arg;
    both[0] = a;
    both[1] = b;
    with_null[0] = a;
    with_null[1] = NULL;
    EXPECT(rk_vote_texts(NULL, 2, P, C, R, 2, mean, sd), RK_ERR_NULL_POINTER);
    EXPECT(rk_vote_texts(both, 0, P, C, R, 2, mean, sd), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_vote_texts(both, SIZE_MAX, P, C, R, 2, mean, sd), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_vote_texts(with_null, 2, P, C, R, 2, mean, sd), RK_ERR_NULL_POINTER);
    CHECK(strstr(rk_last_error_message(), "models[1]") != NULL, "names models[1]");
    EXPECT(rk_vote_texts(both, 2, P, C, R, SIZE_MAX, mean, sd), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_vote_texts(both, 2, P, C, R, 2, NULL, sd), RK_ERR_NULL_POINTER);
    EXPECT(rk_vote_texts(both, 2, P, C, R, 2, mean, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_vote_texts(both, 2, P, C, R, 2, mean, sd), RK_OK);
    CHECK(sd[0] < 1e-4f && isfinite(mean[0]), "identical members agree");
    tokenize_pairs(a);
    flat(0, ids, offsets);
    flat(1, rids, roffs);
    ids[1] = 4096;
    EXPECT(rk_vote_tokens(both, 2, ids, offsets, rids, roffs, 2, mean, sd), RK_ERR_OUT_OF_VOCAB);
    rk_model_free(a);
    rk_model_free(b);
    return failed;
}

/* ---------- ensemble ---------- */

static int c_ensemble_args(const void *arg) {
    rk_model *a = tiny(), *b = tiny();
    const rk_model *both[2], *with_null[2];
    rk_ensemble *e = (rk_ensemble *)1;
    rk_ensemble_params p;
    float rewards[2] = {7, 7}, members[4];
    size_t m = 0, offsets[3];
    uint32_t ids[1024];
    const char *prompts[2] = {P[0], P[1]};
    (void)arg;
    both[0] = a;
    both[1] = b;
    with_null[0] = a;
    with_null[1] = NULL;
    EXPECT(rk_ensemble_params_init(NULL, sizeof p), RK_ERR_NULL_POINTER);
    EXPECT(rk_ensemble_params_init(&p, 3), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_ensemble_params_init(&p, sizeof p), RK_OK);
    CHECK(p.combine == RK_COMBINE_MEAN && p.lambda == 0.0f, "defaults: the mean, lambda 0");
    EXPECT(rk_ensemble_create(both, 2, &p, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_ensemble_create(NULL, 2, &p, &e), RK_ERR_NULL_POINTER);
    CHECK(e == NULL, "a refused create leaves NULL");
    EXPECT(rk_ensemble_create(both, 0, &p, &e), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_ensemble_create(both, SIZE_MAX, &p, &e), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_ensemble_create(with_null, 2, &p, &e), RK_ERR_NULL_POINTER);
    CHECK(strstr(rk_last_error_message(), "models[1]") != NULL, "names models[1]");
    p.combine = 9;
    EXPECT(rk_ensemble_create(both, 2, &p, &e), RK_ERR_INVALID_ARGUMENT);
    p.combine = RK_COMBINE_MEAN_MINUS_VAR;
    p.lambda = NAN;
    EXPECT(rk_ensemble_create(both, 2, &p, &e), RK_ERR_INVALID_ARGUMENT);
    p.lambda = -1.0f;
    EXPECT(rk_ensemble_create(both, 2, &p, &e), RK_ERR_INVALID_ARGUMENT);
    p.lambda = INFINITY;
    EXPECT(rk_ensemble_create(both, 2, &p, &e), RK_ERR_INVALID_ARGUMENT);
    p.lambda = 0.5f;
    p.struct_size = sizeof p + 64;
    EXPECT(rk_ensemble_create(both, 2, &p, &e), RK_ERR_INVALID_ARGUMENT);
    p.struct_size = sizeof p;
    EXPECT(rk_ensemble_create(both, 2, &p, &e), RK_OK);
    EXPECT(rk_ensemble_members(e, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_ensemble_members(NULL, &m), RK_ERR_NULL_POINTER);
    EXPECT(rk_ensemble_members(e, &m), RK_OK);
    CHECK(m == 2, "two members");
    EXPECT(rk_ensemble_score_texts(NULL, prompts, C, 2, members, rewards), RK_ERR_NULL_POINTER);
    EXPECT(rk_ensemble_score_texts(e, prompts, C, 2, members, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_ensemble_score_texts(e, prompts, C, SIZE_MAX, members, rewards), RK_ERR_INVALID_ARGUMENT);
    EXPECT(rk_ensemble_score_texts(e, prompts, C, 0, members, rewards), RK_ERR_INVALID_ARGUMENT);
    CHECK(rewards[0] == 7 && rewards[1] == 7, "a refused call writes nothing");
    EXPECT(rk_ensemble_score_texts(e, prompts, C, 2, NULL, rewards), RK_OK);
    EXPECT(rk_ensemble_score_texts(e, prompts, C, 2, members, rewards), RK_OK);
    /* Identical members: no variance, so the penalised reward is each member's reward. */
    CHECK(fabsf(members[0] - members[1]) < 1e-5f && fabsf(rewards[0] - members[0]) < 1e-5f, "identical members");
    tokenize_pairs(a);
    flat(0, ids, offsets);
    ids[1] = 4096;
    rewards[0] = rewards[1] = 7;
    EXPECT(rk_ensemble_score_tokens(e, ids, offsets, 2, members, rewards), RK_ERR_OUT_OF_VOCAB);
    CHECK(rewards[0] == 7 && rewards[1] == 7, "a refused call writes nothing");
    /* The ensemble shares the weights: it outlives its models' handles. */
    rk_model_free(a);
    rk_model_free(b);
    EXPECT(rk_ensemble_score_texts(e, prompts, C, 2, members, rewards), RK_OK);
    rk_ensemble_free(e);
    rk_ensemble_free(NULL);
    return failed;
}

/* ---------- saves and resumes ---------- */

static int c_save_over_user_files(const void *arg) {
    rk_model *m = tiny();
    rk_trainer *t = trainer_on(m, NULL);
    char *file = path_in(CASE_DIR, "notes.txt"), *dir = path_in(CASE_DIR, "mine"), *link = path_in(CASE_DIR, "link");
    char *kept;
    (void)arg;
    write_text(file, "my notes");
    EXPECT(rk_trainer_save(t, file), RK_ERR_EXISTS);
    kept = read_file(file, NULL);
    CHECK(kept && strcmp(kept, "my notes") == 0, "the file survives");
    free(kept);
    mkdir(dir, 0755);
    write_text(path_in(dir, "thesis.tex"), "chapter 1");
    EXPECT(rk_trainer_save(t, dir), RK_ERR_EXISTS);
    kept = read_file(path_in(dir, "thesis.tex"), NULL);
    CHECK(kept && strcmp(kept, "chapter 1") == 0, "unrelated files survive");
    free(kept);
    symlink(dir, link);
    EXPECT(rk_trainer_save(t, link), RK_ERR_EXISTS);
    EXPECT(rk_trainer_save(t, path_in(CASE_DIR, "notes.txt/sub")), RK_ERR_IO);
    EXPECT(rk_trainer_save(t, NULL), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_save(t, "\xff\xfe"), RK_ERR_INVALID_UTF8);
    EXPECT(rk_trainer_save(NULL, dir), RK_ERR_NULL_POINTER);
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

static int c_save_replaces_checkpoints(const void *arg) {
    rk_model *m = tiny(), *back;
    rk_trainer *t = trainer_on(m, NULL);
    char *empty = path_in(CASE_DIR, "empty"), *ckpt = path_in(CASE_DIR, "ckpt");
    DIR *d;
    (void)arg;
    mkdir(empty, 0755);
    EXPECT(rk_trainer_save(t, empty), RK_OK);
    EXPECT(step(t, NULL, NULL), RK_OK);
    EXPECT(rk_trainer_save(t, ckpt), RK_OK);
    EXPECT(step(t, NULL, NULL), RK_OK);
    EXPECT(rk_trainer_save(t, ckpt), RK_OK);
    back = load(ckpt);
    CHECK(scores_ok(back, NULL), "the replaced checkpoint loads");
    rk_model_free(back);
    /* No temporary directories are left behind. */
    d = opendir(CASE_DIR);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) CHECK(strstr(e->d_name, ".tmp-") == NULL && strstr(e->d_name, ".old-") == NULL, "leftover %s", e->d_name);
        closedir(d);
    }
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

/* Sets `"key": value` in a checkpoint's trainer_state.json. */
static void patch_state(const char *ckpt, const char *key, const char *value) {
    char *path = path_in(ckpt, "trainer_state.json");
    size_t n;
    char *text = read_file(path, &n), *out = malloc(n + 256), *line, *save = NULL;
    size_t used = 0;
    char want[128];
    snprintf(want, sizeof want, "  \"%s\":", key);
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, want, strlen(want)) == 0)
            used += (size_t)sprintf(out + used, "  \"%s\": %s,\n", key, value);
        else
            used += (size_t)sprintf(out + used, "%s\n", line);
    }
    write_file(path, out, used);
    free(text);
    free(out);
}

static rk_trainer *saved_run(rk_model **model, char *ckpt) {
    rk_model *m = tiny();
    rk_trainer *t = trainer_on(m, NULL);
    if (step(t, NULL, NULL) != RK_OK || rk_trainer_save(t, ckpt) != RK_OK) exit(3);
    rk_trainer_free(t);
    rk_model_free(m);
    *model = load(ckpt);
    return trainer_on(*model, NULL);
}

static int c_resume_files(const void *arg) {
    char ckpt[4096];
    rk_model *m;
    rk_trainer *t;
    uint64_t steps = 99;
    char *state;
    (void)arg;
    snprintf(ckpt, sizeof ckpt, "%s/ckpt", CASE_DIR);
    t = saved_run(&m, ckpt);
    EXPECT(rk_trainer_resume(t, path_in(CASE_DIR, "missing"), &steps), RK_ERR_NOT_FOUND);
    EXPECT(rk_trainer_resume(t, NULL, &steps), RK_ERR_NULL_POINTER);
    EXPECT(rk_trainer_resume(NULL, ckpt, &steps), RK_ERR_NULL_POINTER);
    state = read_file(path_in(ckpt, "trainer_state.json"), NULL);
    write_text(path_in(ckpt, "trainer_state.json"), "{\"step\": ");
    EXPECT(rk_trainer_resume(t, ckpt, &steps), RK_ERR_CORRUPT_FILE);
    unlink(path_in(ckpt, "trainer_state.json"));
    symlink("/dev/zero", path_in(ckpt, "trainer_state.json"));
    EXPECT(rk_trainer_resume(t, ckpt, &steps), RK_ERR_IO);
    unlink(path_in(ckpt, "trainer_state.json"));
    write_text(path_in(ckpt, "trainer_state.json"), state);
    patch_state(ckpt, "step", "18446744073709551615");
    EXPECT(rk_trainer_resume(t, ckpt, &steps), RK_ERR_CORRUPT_FILE);
    patch_state(ckpt, "step", "-1");
    EXPECT(rk_trainer_resume(t, ckpt, &steps), RK_ERR_CORRUPT_FILE);
    CHECK(steps == 99, "out_steps untouched by refusals");
    /* Refused resumes change nothing: the trainer starts at step 1. */
    {
        rk_step_stats st;
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        EXPECT(rk_trainer_step_texts(t, P, C, R, 2, NULL, NULL, &st), RK_OK);
        CHECK(st.step == 1, "step %llu", (unsigned long long)st.step);
    }
    free(state);
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

/* A resumed step counter of 2^32 - 1 (which once wrapped powi and made every weight NaN). */
static int c_resume_large_step(const void *arg) {
    char ckpt[4096];
    rk_model *m;
    rk_trainer *t;
    uint64_t steps = 0;
    (void)arg;
    snprintf(ckpt, sizeof ckpt, "%s/ckpt", CASE_DIR);
    t = saved_run(&m, ckpt);
    patch_state(ckpt, "step", "4294967295");
    patch_state(ckpt, "micro_step", "4294967295");
    EXPECT(rk_trainer_resume(t, ckpt, &steps), RK_OK);
    CHECK(steps == 4294967295u, "steps %llu", (unsigned long long)steps);
    EXPECT(step(t, NULL, NULL), RK_OK);
    EXPECT(step(t, NULL, NULL), RK_OK);
    CHECK(scores_ok(m, NULL), "weights finite after the resumed steps");
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

/* Byte offset of tensor `name`'s data in a safetensors file (NULL if absent). */
static size_t tensor_offset(const char *file, const char *name) {
    char key[512], *at;
    size_t begin = 0;
    uint64_t h;
    memcpy(&h, file, 8);
    snprintf(key, sizeof key, "\"%s\"", name);
    at = strstr(file + 8, key);
    if (!at || !(at = strstr(at, "data_offsets"))) return 0;
    sscanf(strchr(at, '[') + 1, "%zu", &begin);
    return 8 + (size_t)h + begin;
}

static int c_resume_optimizer(const void *arg) {
    char ckpt[4096];
    rk_model *m;
    rk_trainer *t;
    uint64_t steps;
    size_t n, at;
    char *opt, *path;
    float bad;
    (void)arg;
    snprintf(ckpt, sizeof ckpt, "%s/ckpt", CASE_DIR);
    t = saved_run(&m, ckpt);
    path = path_in(ckpt, "optimizer.safetensors");
    opt = read_file(path, &n);
    at = tensor_offset(opt, "exp_avg_sq.score.weight");
    CHECK(at > 0, "found the second moment of the head");
    bad = -1.0f;
    memcpy(opt + at, &bad, 4);
    write_file(path, opt, n);
    EXPECT(rk_trainer_resume(t, ckpt, &steps), RK_ERR_CORRUPT_FILE);
    bad = NAN;
    memcpy(opt + at, &bad, 4);
    write_file(path, opt, n);
    EXPECT(rk_trainer_resume(t, ckpt, &steps), RK_ERR_CORRUPT_FILE);
    write_file(path, opt, 100);
    EXPECT(rk_trainer_resume(t, ckpt, &steps), RK_ERR_CORRUPT_FILE);
    unlink(path);
    EXPECT(rk_trainer_resume(t, ckpt, &steps), RK_ERR_NOT_FOUND);
    EXPECT(step(t, NULL, NULL), RK_OK);
    free(opt);
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

/* ---------- threads ---------- */

typedef struct {
    const rk_model *m;
    int ok;
} scorer_arg;

static void *scorer(void *arg) {
    scorer_arg *a = arg;
    int i;
    a->ok = 1;
    for (i = 0; i < 20; i++) a->ok &= scores_ok(a->m, NULL);
    return NULL;
}

static int c_scorers_during_steps(const void *arg) {
    rk_model *m = tiny();
    rk_trainer *t = trainer_on(m, NULL);
    pthread_t th[4];
    scorer_arg args[4];
    int i;
    (void)arg;
    for (i = 0; i < 4; i++) {
        args[i].m = m;
        pthread_create(&th[i], NULL, scorer, &args[i]);
    }
    for (i = 0; i < 5; i++) EXPECT(step(t, NULL, NULL), RK_OK);
    for (i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(args[i].ok, "scorer %d", i);
    }
    rk_trainer_free(t);
    rk_model_free(m);
    return failed;
}

static int c_free_order(const void *arg) {
    rk_model *m = tiny();
    rk_trainer *t = trainer_on(m, NULL);
    (void)arg;
    rk_model_free(m);
    EXPECT(step(t, NULL, NULL), RK_OK);
    rk_trainer_free(t);
    rk_trainer_free(NULL);
    rk_model_free(NULL);
    return failed;
}

/* ---------- the CLI on corrupt GGUF and JSONL files ---------- */

/* Runs the CLI with `args` (NULL-terminated); returns its exit code, stderr in `err`. */
static int run_cli(const char *const *args, char *err, size_t cap) {
    int fds[2], status;
    pid_t pid;
    size_t used = 0;
    ssize_t got;
    if (pipe(fds) != 0) exit(3);
    pid = fork();
    if (pid == 0) {
        const char *argv[32];
        int i;
        dup2(fds[1], 2);
        close(fds[0]);
        if (!freopen("/dev/null", "w", stdout)) exit(3);
        argv[0] = CLI;
        for (i = 0; args[i]; i++) argv[i + 1] = args[i];
        argv[i + 1] = NULL;
        execv(CLI, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    while ((got = read(fds[0], err + used, cap - 1 - used)) > 0 && used + (size_t)got < cap - 1) used += (size_t)got;
    err[used] = 0;
    close(fds[0]);
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The CLI refuses `args` cleanly: exit 1, an error line, no panic. */
static int cli_refuses(const char *const *args, const char *want) {
    char err[65536];
    int code = run_cli(args, err, sizeof err);
    CHECK(code == 1, "exit code %d, stderr: %s", code, err);
    CHECK(strstr(err, "error:") != NULL, "an error line: %s", err);
    CHECK(strstr(err, "panicked") == NULL, "no panic: %s", err);
    if (want) CHECK(strstr(err, want) != NULL, "stderr mentions `%s`: %s", want, err);
    return failed;
}

static int import_refuses(const void *data, size_t n, const char *want) {
    char *gguf = path_in(CASE_DIR, "in.gguf");
    const char *args[] = {"import-gguf", "--gguf", gguf, "--out", path_in(CASE_DIR, "out"), NULL};
    write_file(gguf, data, n);
    return cli_refuses(args, want);
}

static size_t gguf_header(unsigned char *b, uint64_t n_tensors, uint64_t n_kv) {
    uint32_t v = 3;
    memcpy(b, "GGUF", 4);
    memcpy(b + 4, &v, 4);
    memcpy(b + 8, &n_tensors, 8);
    memcpy(b + 16, &n_kv, 8);
    return 24;
}

static size_t put_u64(unsigned char *b, uint64_t v) { memcpy(b, &v, 8); return 8; }
static size_t put_u32(unsigned char *b, uint32_t v) { memcpy(b, &v, 4); return 4; }
static size_t put_str(unsigned char *b, const char *s) {
    size_t n = strlen(s);
    put_u64(b, n);
    memcpy(b + 8, s, n);
    return 8 + n;
}

static int c_gguf_garbage(const void *arg) {
    (void)arg;
    return import_refuses("GGUF but not really a file", 26, "GGUF");
}

static int c_gguf_dev_zero(const void *arg) {
    const char *args[] = {"import-gguf", "--gguf", "/dev/zero", "--out", path_in(CASE_DIR, "out"), NULL};
    (void)arg;
    return cli_refuses(args, "not a regular file");
}

static int c_gguf_alignment_zero(const void *arg) {
    unsigned char b[256];
    size_t at = gguf_header(b, 0, 1);
    (void)arg;
    at += put_str(b + at, "general.alignment");
    at += put_u32(b + at, 4);
    at += put_u32(b + at, 0);
    return import_refuses(b, at, "alignment");
}

static int c_gguf_huge_string(const void *arg) {
    unsigned char b[256];
    size_t at = gguf_header(b, 0, 1);
    (void)arg;
    at += put_u64(b + at, UINT64_C(1) << 63);
    memcpy(b + at, "abcdefgh", 8);
    return import_refuses(b, at + 8, NULL);
}

static int c_gguf_huge_array(const void *arg) {
    unsigned char b[256];
    size_t at = gguf_header(b, 0, 1);
    (void)arg;
    at += put_str(b + at, "tokenizer.ggml.tokens");
    at += put_u32(b + at, 9);
    at += put_u32(b + at, 8);
    at += put_u64(b + at, UINT64_C(1) << 62);
    return import_refuses(b, at, NULL);
}

static int c_gguf_huge_counts(const void *arg) {
    unsigned char b[64];
    size_t at = gguf_header(b, UINT64_MAX, UINT64_MAX);
    (void)arg;
    return import_refuses(b, at, NULL);
}

static int c_gguf_deep_array(const void *arg) {
    unsigned char b[4096];
    size_t at = gguf_header(b, 0, 1);
    int i;
    (void)arg;
    at += put_str(b + at, "k");
    at += put_u32(b + at, 9);
    for (i = 0; i < 100; i++) {
        at += put_u32(b + at, 9);
        at += put_u64(b + at, 1);
    }
    return import_refuses(b, at, NULL);
}

static int c_gguf_tensor_overflow(const void *arg) {
    unsigned char b[512];
    size_t at = gguf_header(b, 1, 0);
    int i;
    (void)arg;
    at += put_str(b + at, "token_embd.weight");
    at += put_u32(b + at, 4);
    for (i = 0; i < 4; i++) at += put_u64(b + at, UINT64_C(1) << 40);
    at += put_u32(b + at, 0);
    at += put_u64(b + at, 0);
    return import_refuses(b, at, NULL);
}

static int c_gguf_truncated_seed(const void *arg) {
    size_t n;
    char *seed = read_file(path_in(REPO, "fuzz/corpus/gguf_metadata/seed-tiny-llama"), &n);
    (void)arg;
    CHECK(seed != NULL, "seed GGUF");
    if (!seed) return failed;
    import_refuses(seed, n - 64, "outside the file");
    free(seed);
    return failed;
}

static int c_gguf_over_user_file(const void *arg) {
    size_t n;
    char *seed = read_file(path_in(REPO, "fuzz/corpus/gguf_metadata/seed-tiny-llama"), &n), *kept;
    char *gguf = path_in(CASE_DIR, "ok.gguf"), *out = path_in(CASE_DIR, "precious.txt");
    const char *args[] = {"import-gguf", "--gguf", gguf, "--out", out, NULL};
    (void)arg;
    write_file(gguf, seed, n);
    write_text(out, "keep me");
    cli_refuses(args, "refusing to replace");
    kept = read_file(out, NULL);
    CHECK(kept && strcmp(kept, "keep me") == 0, "the user's file survives");
    free(kept);
    free(seed);
    return failed;
}

static int eval_refuses(const char *data_file, const char *want, int skip) {
    const char *args[] = {"eval", "--model", MODEL, "--data", data_file, skip ? "--skip-bad-rows" : NULL, NULL};
    return cli_refuses(args, want);
}

static int c_jsonl_garbage(const void *arg) {
    char *f = path_in(CASE_DIR, "bad.jsonl");
    (void)arg;
    write_text(f, "{\"prompt\": \"Q\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{not json\n");
    return eval_refuses(f, "line 2", 0);
}

static int c_jsonl_invalid_utf8(const void *arg) {
    char *f = path_in(CASE_DIR, "bad.jsonl");
    (void)arg;
    write_text(f, "{\"prompt\": \"Q\xff\", \"chosen\": \"a\", \"rejected\": \"b\"}\n");
    return eval_refuses(f, "line 1", 0);
}

static int c_jsonl_not_objects(const void *arg) {
    char *f = path_in(CASE_DIR, "bad.jsonl");
    (void)arg;
    write_text(f, "[1, 2]\n\"text\"\n3\nnull\n");
    return eval_refuses(f, "line 1", 0);
}

static int c_jsonl_skip_bad_rows(const void *arg) {
    char *f = path_in(CASE_DIR, "mixed.jsonl");
    const char *args[] = {"eval", "--model", MODEL, "--data", f, "--skip-bad-rows", NULL};
    char err[65536];
    int code;
    (void)arg;
    write_text(f, "{oops\n{\"prompt\": \"Q\", \"chosen\": \"a\", \"rejected\": \"b\"}\n\xff\xfe\n{\"prompt\": \"Q\", \"chosen\": \"c\"}\n");
    code = run_cli(args, err, sizeof err);
    CHECK(code == 0, "exit %d: %s", code, err);
    CHECK(strstr(err, "skipped 3 of 4 rows") != NULL && strstr(err, "panicked") == NULL, "report: %s", err);
    return failed;
}

static int c_jsonl_huge_line(const void *arg) {
    char *f = path_in(CASE_DIR, "huge.jsonl.gz");
    char cmd[8192];
    FILE *gz;
    char *chunk = malloc(1 << 20);
    int i;
    (void)arg;
    memset(chunk, ' ', 1 << 20);
    snprintf(cmd, sizeof cmd, "gzip -1 -c > '%s'", f);
    gz = popen(cmd, "w");
    fputs("{\"prompt\": \"", gz);
    for (i = 0; i < 260; i++) fwrite(chunk, 1, 1 << 20, gz);
    fputs("\"}\n", gz);
    pclose(gz);
    free(chunk);
    return eval_refuses(f, "longer than", 0);
}

static int c_jsonl_empty_and_missing(const void *arg) {
    char *f = path_in(CASE_DIR, "empty.jsonl");
    (void)arg;
    write_text(f, "\n\n   \n");
    eval_refuses(f, "no usable", 0);
    eval_refuses(path_in(CASE_DIR, "missing.jsonl"), "missing.jsonl", 0);
    return eval_refuses("/dev/zero", "not a regular file", 0);
}

static int c_score_bad_ids_row(const void *arg) {
    char *f = path_in(CASE_DIR, "ids.jsonl");
    const char *args[] = {"score", "--model", MODEL, "--input", f, NULL};
    (void)arg;
    write_text(f, "{\"ids\": [1, 4294967296]}\n");
    return cli_refuses(args, "line 1");
}

/* ---------- the runner ---------- */

typedef struct {
    char name[160];
    int (*fn)(const void *);
    const void *arg;
} hcase;

static hcase CASES[512];
static int n_cases;

static void add(const char *name, int (*fn)(const void *), const void *arg) {
    snprintf(CASES[n_cases].name, sizeof CASES[n_cases].name, "%s", name);
    CASES[n_cases].fn = fn;
    CASES[n_cases].arg = arg;
    n_cases++;
}

static void register_cases(void) {
    size_t i;
    char name[160];
    add("version", c_version, NULL);
    add("status names", c_status_names, NULL);
    add("errors are per thread", c_errors_per_thread, NULL);
    add("model params init", c_model_params_init, NULL);
    add("trainer params init", c_trainer_params_init, NULL);
    add("old-layout caller", c_old_layout_caller, NULL);
    add("load arguments", c_load_args, NULL);
    add("adapter over a loaded model", c_load_adapter, NULL);
    for (i = 0; i < sizeof MODEL_PARAM_CASES / sizeof *MODEL_PARAM_CASES; i++) {
        snprintf(name, sizeof name, "model params: %s", MODEL_PARAM_CASES[i].name);
        add(name, c_model_param, &MODEL_PARAM_CASES[i]);
    }
    for (i = 0; i < sizeof CONFIG_CASES / sizeof *CONFIG_CASES; i++) {
        snprintf(name, sizeof name, "config.json: %s", CONFIG_CASES[i].name);
        add(name, c_config, &CONFIG_CASES[i]);
    }
    add("config.json: missing, empty, truncated, array, deep, /dev/zero, directory, oversized", c_config_files, NULL);
    add("safetensors: corrupt headers", c_weights_headers, NULL);
    add("safetensors: missing, device, directory, pickle", c_weights_files, NULL);
    add("safetensors: non-finite weights", c_weight_nan, NULL);
    add("safetensors: shapes against the config", c_weight_shapes, NULL);
    add("index: corrupt, traversal, missing, many shards, oversized", c_index_files, NULL);
    add("tokenizer.json: corrupt, empty, /dev/zero, panicking inputs, oversized, absent", c_tokenizer_files, NULL);
    add("score texts: arguments", c_score_texts_args, NULL);
    add("score texts: empty strings", c_score_empty_texts, NULL);
    add("score texts: 10 MB prompt", c_score_huge_prompt, NULL);
    add("score texts: 2 MB prompt without whitespace", c_score_prompt_without_spaces, NULL);
    add("score tokens: arguments and offsets", c_score_tokens_args, NULL);
    add("score tokens: length limit", c_score_tokens_length, NULL);
    add("tokenize: arguments and capacity", c_tokenize_args, NULL);
    add("chat: hostile conversations and capacity", c_chat_args, NULL);
    add("info: arguments and struct sizes", c_info_args, NULL);
    for (i = 0; i < sizeof TRAINER_PARAM_CASES / sizeof *TRAINER_PARAM_CASES; i++) {
        snprintf(name, sizeof name, "trainer params: %s", TRAINER_PARAM_CASES[i].name);
        add(name, c_trainer_param, &TRAINER_PARAM_CASES[i]);
    }
    add("trainer create: arguments, second trainer", c_trainer_create_args, NULL);
    add("trainer create: refused SwAV leaves no prototypes", c_swav_refused_leaves_nothing, NULL);
    add("step: arguments", c_step_args, NULL);
    add("step tokens: overflowing counts and offsets", c_step_tokens_overflow, NULL);
    add("step: strengths and alphas", c_step_labels, NULL);
    add("step: non-finite update refused", c_step_non_finite, NULL);
    add("evaluate: arguments", c_evaluate_args, NULL);
    add("meta step texts: arguments", c_meta_args, NULL);
    add("meta step tokens: arguments", c_meta_tokens, NULL);
    add("meta step: overflowing ascent", c_meta_non_finite, NULL);
    add("all-reduce hook: arguments, joining mid-cycle, one call per optimizer step", c_allreduce_args, NULL);
    add("all-reduce hook: error status, NaN, unknown code leave the weights unchanged", c_allreduce_failures, NULL);
    add("pull-style gradients and weights: lengths, pending state, non-finite", c_pull_style_args, NULL);
    add("pairs files: arguments, bad rows, missing, /dev/zero, directory", c_pairs_files, NULL);
    add("vote: arguments", c_vote_args, NULL);
    add("ensemble: arguments", c_ensemble_args, NULL);
    add("save: user files are never replaced", c_save_over_user_files, NULL);
    add("save: checkpoints are replaced atomically", c_save_replaces_checkpoints, NULL);
    add("resume: corrupt trainer state", c_resume_files, NULL);
    add("resume: step 2^32 - 1", c_resume_large_step, NULL);
    add("resume: corrupt optimizer state", c_resume_optimizer, NULL);
    add("threads: scorers during steps", c_scorers_during_steps, NULL);
    add("free: model before trainer", c_free_order, NULL);
    add("CLI GGUF: garbage", c_gguf_garbage, NULL);
    add("CLI GGUF: /dev/zero", c_gguf_dev_zero, NULL);
    add("CLI GGUF: alignment 0", c_gguf_alignment_zero, NULL);
    add("CLI GGUF: string of 2^63 bytes", c_gguf_huge_string, NULL);
    add("CLI GGUF: array of 2^62 items", c_gguf_huge_array, NULL);
    add("CLI GGUF: 2^64 - 1 tensors and entries", c_gguf_huge_counts, NULL);
    add("CLI GGUF: arrays nested 100 deep", c_gguf_deep_array, NULL);
    add("CLI GGUF: tensor shape overflow", c_gguf_tensor_overflow, NULL);
    add("CLI GGUF: truncated file", c_gguf_truncated_seed, NULL);
    add("CLI GGUF: output onto a user's file", c_gguf_over_user_file, NULL);
    add("CLI JSONL: invalid JSON", c_jsonl_garbage, NULL);
    add("CLI JSONL: invalid UTF-8", c_jsonl_invalid_utf8, NULL);
    add("CLI JSONL: rows that are not objects", c_jsonl_not_objects, NULL);
    add("CLI JSONL: --skip-bad-rows skips invalid JSON", c_jsonl_skip_bad_rows, NULL);
    add("CLI JSONL: a 260 MB line", c_jsonl_huge_line, NULL);
    add("CLI JSONL: empty, missing, /dev/zero", c_jsonl_empty_and_missing, NULL);
    add("CLI score: token id above u32", c_score_bad_ids_row, NULL);
}

/* Runs one case in a child; returns 1 when it passed. */
static int run_case(int index, const hcase *c) {
    int fds[2], status;
    pid_t pid;
    char out[1 << 16];
    size_t used = 0;
    ssize_t got;
    if (pipe(fds) != 0) exit(3);
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        snprintf(CASE_DIR, sizeof CASE_DIR, "%s/case-%03d", SCRATCH, index);
        mkdir(CASE_DIR, 0755);
        alarm(120);
        if (!getenv("HOSTILE_ASAN")) {
            /* An allocation sized by a hostile number fails here instead of taking the machine. */
            struct rlimit lim = {(rlim_t)8 << 30, (rlim_t)8 << 30};
            setrlimit(RLIMIT_AS, &lim);
        }
        _exit(c->fn(c->arg) ? 1 : 0);
    }
    close(fds[1]);
    while ((got = read(fds[0], out + used, sizeof out - 1 - used)) > 0 && used + (size_t)got < sizeof out - 1) used += (size_t)got;
    out[used] = 0;
    close(fds[0]);
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && !strstr(out, "panicked")) return 1;
    printf("FAILED %3d %s: %s%s\n", index, c->name,
           WIFSIGNALED(status) ? (WTERMSIG(status) == SIGALRM ? "timed out" : strsignal(WTERMSIG(status))) : "",
           strstr(out, "panicked") ? " (a Rust panic)" : "");
    if (used) printf("%s", out);
    return 0;
}

int main(int argc, char **argv) {
    int i, passed = 0, failed_cases = 0;
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL_DIR SCRATCH_DIR REWARDKIT_CLI REPO_DIR [CASE_SUBSTRING]\n", argv[0]);
        return 2;
    }
    MODEL = argv[1];
    SCRATCH = argv[2];
    CLI = argv[3];
    REPO = argv[4];
    mkdir(SCRATCH, 0755);
    register_cases();
    for (i = 0; i < n_cases; i++) {
        if (argc > 5 && !strstr(CASES[i].name, argv[5])) continue;
        if (run_case(i, &CASES[i]))
            passed++;
        else
            failed_cases++;
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed_cases);
    return failed_cases ? 1 : 0;
}
