"""ctypes declarations of the rewardkit C ABI (include/rewardkit.h). Kept in one place;
tests/test_abi.py checks every struct's size and field offsets against the C header."""
import ctypes
import ctypes.util
import os
from ctypes import POINTER, c_char, c_char_p, c_double, c_float, c_int32, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p

# The C ABI these declarations describe (the header's RK_ABI_VERSION, the library's soname).
ABI_VERSION = "0.2"

# Status codes (rk_status) and the option codes of the C header (rk_dtype, rk_schedule, ...).
RK_OK = 0
RK_ERR_INVALID_ARGUMENT = 1
RK_ERR_BUFFER_TOO_SMALL = 12
RK_ERR_INTERNAL = 15
DTYPES = {"f32": 0, "bf16": 1, "f16": 2}
SCHEDULES = {"constant": 0, "inverse_sqrt": 1, "cosine": 2, "linear": 3}
TRAINABLE = {"all": 0, "top_layers": 1, "head": 2, "lora": 3}
# rk_trainer_params.lora_targets bits (RK_LORA_*), by projection.
LORA_TARGETS = {"q": 1, "k": 2, "v": 4, "o": 8, "gate": 16, "up": 32, "down": 64}
FLIP = {"none": 0, "below": 1, "lowest_fraction": 2}
SMOOTH = {"none": 0, "constant": 1, "negative_only": 2, "per_pair": 3}
MARGIN = {"none": 0, "raw": 1, "clamp_zero": 2, "abs": 3}
CONTRASTIVE = {"none": 0, "simcse": 1, "swav": 2}
ITEMS = {"pairs": 0, "differences": 1}


class ModelParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("device", c_char_p),
        ("dtype", c_int32),
        ("n_threads", c_uint32),
        ("max_length", c_uint32),
        ("batch_token_budget", c_uint32),
        ("max_batch_size", c_uint32),
        ("append_eos", c_uint8),
        ("separator", c_char_p),
        ("head_seed", c_uint64),
        ("share_prefixes", c_uint8),
        ("normalize", c_int32),
        ("adapter", c_char_p),
        ("chat_template", c_char_p),
    ]


NORMALIZE = {"config": 0, "off": 1, "on": 2}


class ModelInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("architecture", c_char * 32),
        ("device", c_char * 32),
        ("dtype", c_int32),
        ("hidden_size", c_uint32),
        ("num_layers", c_uint32),
        ("num_attention_heads", c_uint32),
        ("num_key_value_heads", c_uint32),
        ("vocab_size", c_uint32),
        ("max_length", c_uint32),
        ("n_threads", c_uint32),
        ("num_parameters", c_uint64),
        ("head_is_fresh", c_uint8),
        ("has_tokenizer", c_uint8),
        ("num_heads", c_uint32),
    ]


class TrainerParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("lr", c_double),
        ("beta1", c_double),
        ("beta2", c_double),
        ("eps", c_double),
        ("weight_decay", c_double),
        ("warmup_steps", c_uint32),
        ("schedule", c_int32),
        ("total_steps", c_uint32),
        ("max_grad_norm", c_double),
        ("grad_accum", c_uint32),
        ("dropout", c_float),
        ("seed", c_uint64),
        ("trainable", c_int32),
        ("top_layers", c_uint32),
        ("flip", c_int32),
        ("flip_threshold", c_float),
        ("smooth", c_int32),
        ("smooth_alpha", c_float),
        ("margin", c_int32),
        ("margin_scale", c_float),
        ("centering", c_double),
        ("meta_lr", c_double),
        ("contrastive", c_int32),
        ("contrastive_items", c_int32),
        ("contrastive_beta", c_double),
        ("contrastive_temperature", c_float),
        ("contrastive_dropout", c_float),
        ("swav_prototypes", c_uint32),
        ("sinkhorn_iterations", c_uint32),
        ("sinkhorn_epsilon", c_float),
        ("flip_fraction", c_float),
        ("defer_apply", c_uint8),
        ("contrastive_view_layers", c_uint32),
        ("measure_j_after", c_uint8),
        ("meta_order", c_uint8),
        ("lora_rank", c_uint32),
        ("lora_alpha", c_float),
        ("lora_targets", c_uint32),
        ("lora_rslora", c_uint8),
        ("lora_dropout", c_float),
    ]


class StepStats(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("step", c_uint64),
        ("micro_step", c_uint64),
        ("loss", c_double),
        ("accuracy", c_double),
        ("mean_margin", c_double),
        ("grad_norm", c_double),
        ("lr", c_double),
        ("seconds", c_double),
        ("applied", c_uint8),
        ("pending", c_uint8),
        ("local_grad_norm", c_double),
    ]


class MetaStepStats(ctypes.Structure):
    _fields_ = StepStats._fields_[:-3] + [
        ("j_before", c_double),
        ("j_after", c_double),
        ("meta_grad_norm", c_double),
        ("applied", c_uint8),
        ("pending", c_uint8),
        ("local_grad_norm", c_double),
        ("j_after_measured", c_uint8),
        ("second_order_norm", c_double),
    ]


class EnsembleParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("combine", c_int32),
        ("lambda_", c_float),
    ]


COMBINE = {"mean": 0, "min": 1, "mean_minus_var": 2, "mean_minus_std": 3}


class AllReduceInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("buffer_kind", c_int32),
        ("device_index", c_int32),
        ("sync_point", c_int32),
        ("rank", c_uint32),
        ("world_size", c_uint32),
        ("step", c_uint64),
    ]


RK_BUFFER_HOST, RK_BUFFER_CUDA = 0, 1
SYNC_POINTS = {0: "gradient", 1: "meta_ascent", 2: "meta_preference"}
# int32_t (*)(void *user_data, float *buffer, size_t n, const rk_allreduce_info *info)
ALLREDUCE_FN = ctypes.CFUNCTYPE(c_int32, c_void_p, c_void_p, c_size_t, POINTER(AllReduceInfo))


class EvalStats(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("pairs", c_uint64),
        ("accuracy", c_double),
        ("mean_margin", c_double),
        ("loss", c_double),
        ("reward_min", c_double),
        ("reward_mean", c_double),
        ("reward_max", c_double),
        ("reward_std", c_double),
    ]


STRUCTS = {
    "rk_model_params": ModelParams,
    "rk_model_info": ModelInfo,
    "rk_trainer_params": TrainerParams,
    "rk_step_stats": StepStats,
    "rk_meta_step_stats": MetaStepStats,
    "rk_eval_stats": EvalStats,
    "rk_allreduce_info": AllReduceInfo,
}

_STRS = POINTER(c_char_p)
_SIGNATURES = {
    "rk_version": (c_char_p, []),
    "rk_version_number": (c_uint32, []),
    "rk_last_error_message": (c_char_p, []),
    "rk_status_name": (c_char_p, [c_int32]),
    "rk_model_params_init": (c_int32, [POINTER(ModelParams), c_size_t]),
    "rk_model_load": (c_int32, [c_char_p, POINTER(ModelParams), POINTER(c_void_p)]),
    "rk_model_load_adapter": (c_int32, [c_void_p, c_char_p, POINTER(c_void_p)]),
    "rk_model_free": (None, [c_void_p]),
    "rk_model_score_texts": (c_int32, [c_void_p, _STRS, _STRS, c_size_t, POINTER(c_float)]),
    "rk_model_score_tokens": (c_int32, [c_void_p, POINTER(c_uint32), POINTER(c_size_t), c_size_t, POINTER(c_float)]),
    "rk_model_score_chats": (c_int32, [c_void_p, _STRS, c_size_t, POINTER(c_float)]),
    "rk_model_apply_chat_template": (c_int32, [c_void_p, c_char_p, c_uint8, c_char_p, c_size_t, POINTER(c_size_t)]),
    "rk_model_tokenize": (c_int32, [c_void_p, c_char_p, c_char_p, POINTER(c_uint32), c_size_t, POINTER(c_size_t)]),
    "rk_model_get_info": (c_int32, [c_void_p, POINTER(ModelInfo)]),
    "rk_model_difference_loss_texts": (c_int32, [c_void_p, _STRS, c_size_t, _STRS, POINTER(c_size_t), POINTER(c_double)]),
    "rk_model_difference_loss_tokens": (c_int32, [c_void_p, POINTER(c_uint32), POINTER(c_size_t), POINTER(c_size_t), c_size_t, POINTER(c_double)]),
    "rk_trainer_params_init": (c_int32, [POINTER(TrainerParams), c_size_t]),
    "rk_trainer_create": (c_int32, [c_void_p, POINTER(TrainerParams), POINTER(c_void_p)]),
    "rk_trainer_free": (None, [c_void_p]),
    "rk_trainer_step_texts": (c_int32, [c_void_p, _STRS, _STRS, _STRS, c_size_t, POINTER(c_float), POINTER(c_float), POINTER(StepStats)]),
    "rk_trainer_step_tokens": (c_int32, [c_void_p, POINTER(c_uint32), POINTER(c_size_t), POINTER(c_uint32), POINTER(c_size_t), c_size_t, POINTER(c_float), POINTER(c_float), POINTER(StepStats)]),
    "rk_trainer_meta_step_texts": (c_int32, [c_void_p, _STRS, _STRS, _STRS, c_size_t, POINTER(c_float), POINTER(c_float), _STRS, c_size_t, _STRS, POINTER(c_size_t), POINTER(MetaStepStats)]),
    "rk_trainer_meta_step_tokens": (c_int32, [c_void_p, POINTER(c_uint32), POINTER(c_size_t), POINTER(c_uint32), POINTER(c_size_t), c_size_t, POINTER(c_float), POINTER(c_float), POINTER(c_uint32), POINTER(c_size_t), POINTER(c_size_t), c_size_t, POINTER(MetaStepStats)]),
    "rk_trainer_evaluate_texts": (c_int32, [c_void_p, _STRS, _STRS, _STRS, c_size_t, POINTER(EvalStats)]),
    "rk_trainer_evaluate_tokens": (c_int32, [c_void_p, POINTER(c_uint32), POINTER(c_size_t), POINTER(c_uint32), POINTER(c_size_t), c_size_t, POINTER(EvalStats)]),
    "rk_trainer_save": (c_int32, [c_void_p, c_char_p]),
    "rk_trainer_resume": (c_int32, [c_void_p, c_char_p, POINTER(c_uint64)]),
    "rk_vote_texts": (c_int32, [POINTER(c_void_p), c_size_t, _STRS, _STRS, _STRS, c_size_t, POINTER(c_float), POINTER(c_float)]),
    "rk_trainer_set_allreduce": (c_int32, [c_void_p, ALLREDUCE_FN, c_void_p, c_uint32, c_uint32]),
    "rk_trainer_trained_size": (c_int32, [c_void_p, POINTER(c_size_t)]),
    "rk_trainer_get_gradients": (c_int32, [c_void_p, POINTER(c_float), c_size_t]),
    "rk_trainer_set_gradients": (c_int32, [c_void_p, POINTER(c_float), c_size_t]),
    "rk_trainer_apply": (c_int32, [c_void_p, POINTER(StepStats)]),
    "rk_trainer_discard_gradients": (c_int32, [c_void_p]),
    "rk_trainer_get_weights": (c_int32, [c_void_p, POINTER(c_float), c_size_t]),
    "rk_trainer_set_weights": (c_int32, [c_void_p, POINTER(c_float), c_size_t]),
    "rk_model_weights_checksum": (c_int32, [c_void_p, POINTER(c_uint64)]),
    "rk_pairs_load": (c_int32, [c_char_p, c_uint8, POINTER(c_void_p)]),
    "rk_pairs_count": (c_int32, [c_void_p, POINTER(c_size_t), POINTER(c_size_t)]),
    "rk_pairs_get": (c_int32, [c_void_p, c_size_t, POINTER(c_char_p), POINTER(c_char_p), POINTER(c_char_p), POINTER(c_size_t)]),
    "rk_pairs_free": (None, [c_void_p]),
    "rk_ensemble_params_init": (c_int32, [POINTER(EnsembleParams), c_size_t]),
    "rk_ensemble_create": (c_int32, [POINTER(c_void_p), c_size_t, POINTER(EnsembleParams), POINTER(c_void_p)]),
    "rk_ensemble_free": (None, [c_void_p]),
    "rk_ensemble_members": (c_int32, [c_void_p, POINTER(c_size_t)]),
    "rk_ensemble_score_texts": (c_int32, [c_void_p, _STRS, _STRS, c_size_t, POINTER(c_float), POINTER(c_float)]),
    "rk_ensemble_score_tokens": (c_int32, [c_void_p, POINTER(c_uint32), POINTER(c_size_t), c_size_t, POINTER(c_float), POINTER(c_float)]),
    "rk_vote_tokens": (c_int32, [POINTER(c_void_p), c_size_t, POINTER(c_uint32), POINTER(c_size_t), POINTER(c_uint32), POINTER(c_size_t), c_size_t, POINTER(c_float), POINTER(c_float)]),
}


def _candidates():
    env = os.environ.get("REWARDKIT_LIBRARY")
    if env:
        yield env
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("librewardkit.so", "librewardkit.so." + ABI_VERSION, "librewardkit.dylib"):
        yield os.path.join(here, name)
    found = ctypes.util.find_library("rewardkit")
    if found:
        yield found


def load_library():
    """The rewardkit shared library: $REWARDKIT_LIBRARY, else beside this package, else the
    system's library path."""
    tried = []
    for path in _candidates():
        tried.append(path)
        if os.path.sep in path and not os.path.exists(path):
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name, (res, args) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        return lib
    raise OSError("cannot find the rewardkit library: install the wheel from scripts/build_wheel.sh, which carries it, "
                  "or set REWARDKIT_LIBRARY to librewardkit.so (tried: %s)" % ", ".join(tried))
