"""rewardkit for Python: reward-model scoring, preference-strength voting, noise-aware and
MetaRM training, over the library's C ABI (ctypes; no compiler needed).

    import rewardkit
    model = rewardkit.Model("models/tiny-rm", n_threads=4)
    rewards = model.score(["\\n\\nHuman: hi\\n\\nAssistant:"], [" Hello!"])   # numpy float32
    trainer = rewardkit.Trainer(model, lr=1e-5, trainable="top_layers", top_layers=2)
    stats = trainer.step(prompts, chosen, rejected, strengths=None)

Errors raise rewardkit.RewardkitError with the library's status and message.
"""
import ctypes
import json
from ctypes import POINTER, byref, c_char_p, c_double, c_float, c_size_t, c_uint32, c_uint64, c_void_p

import numpy as np

from . import _ffi

__all__ = ["Model", "Ensemble", "Trainer", "RewardkitError", "InvalidArgumentError", "DeviceBuffer", "vote", "vote_tokens", "read_pairs", "version"]

_lib = _ffi.load_library()


class RewardkitError(Exception):
    """A failed library call: `status` (int), `status_name` (e.g. "RK_ERR_NOT_FOUND") and the
    library's message."""

    def __init__(self, status, message):
        self.status = status
        self.status_name = _lib.rk_status_name(status).decode()
        super().__init__("%s: %s" % (self.status_name, message))


class InvalidArgumentError(RewardkitError, ValueError):
    """RK_ERR_INVALID_ARGUMENT: an argument is out of range or inconsistent with another (e.g.
    lists of different lengths). Also a ValueError."""

    def __init__(self, message):
        super().__init__(_ffi.RK_ERR_INVALID_ARGUMENT, message)


def _check(status):
    if status == _ffi.RK_ERR_INVALID_ARGUMENT:
        raise InvalidArgumentError(_lib.rk_last_error_message().decode("utf-8", "replace"))
    if status != _ffi.RK_OK:
        raise RewardkitError(status, _lib.rk_last_error_message().decode("utf-8", "replace"))


def _strs(items, what):
    items = list(items)
    if not all(isinstance(s, str) for s in items):
        raise TypeError("%s must be a sequence of str" % what)
    arr = (c_char_p * len(items))(*[s.encode("utf-8") for s in items])
    return arr, len(items)


def _same_length(**lists):
    """Raises InvalidArgumentError unless every list given has the same length; returns it.
    The C ABI takes one count per call, so a mismatch would make the library read past a list."""
    lengths = {name: len(v) for name, v in lists.items()}
    if len(set(lengths.values())) > 1:
        raise InvalidArgumentError("lengths differ: %s" % ", ".join("%s %d" % kv for kv in lengths.items()))
    return next(iter(lengths.values()))


def _floats(values, n, what):
    """None, or a float32 array of one value per pair and its pointer (keep the array alive)."""
    if values is None:
        return None, None
    a = np.ascontiguousarray(values, dtype=np.float32)
    if a.shape != (n,):
        raise InvalidArgumentError("%s must have one value per pair (%d), got shape %s" % (what, n, a.shape))
    return a, a.ctypes.data_as(POINTER(c_float))


def _groups(groups):
    """The items of a list of lists, flat, and the n + 1 offsets of each list (C layout)."""
    groups = [list(g) for g in groups]
    offsets = np.cumsum([0] + [len(g) for g in groups]).tolist()
    return [x for g in groups for x in g], (c_size_t * len(offsets))(*offsets)


def _flat(seqs):
    ids, offsets = [], [0]
    for s in seqs:
        ids.extend(int(x) for x in s)
        offsets.append(len(ids))
    return (c_uint32 * max(len(ids), 1))(*ids), (c_size_t * len(offsets))(*offsets)


def version():
    """The library's version string."""
    return _lib.rk_version().decode()


def _sized(cls):
    s = cls()
    s.struct_size = ctypes.sizeof(cls)
    return s


def _as_dict(s):
    return {name: getattr(s, name) for name, _ in s._fields_ if name != "struct_size"}


class _Handle:
    """Owns a library handle; `close()` (or leaving a `with` block, or garbage collection)
    frees it exactly once."""

    _free = None

    def close(self):
        if getattr(self, "_h", None):
            type(self)._free(self._h)
            self._h = c_void_p()

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Model(_Handle):
    """A reward model loaded once, shared by threads (scoring releases the GIL in the library)."""

    _free = staticmethod(_lib.rk_model_free)

    def __init__(self, path, device="cpu", dtype="f32", n_threads=0, max_length=0, batch_token_budget=None,
                 max_batch_size=0, append_eos=False, separator="", head_seed=0, normalize="config", adapter=None,
                 chat_template=None):
        """`normalize`: "config" (as config.json's `normalize_reward` says), "on" (serve
        (r - mean) / std with config.json's reward `mean` and `std`, as OpenRLHF) or "off".
        `adapter`: a PEFT LoRA adapter directory (as peft / TRL save it), merged at load.
        `chat_template`: what renders conversations: None or "model" (the checkpoint's own
        template), "hh" (the HH-RLHF format), or a Jinja template's source text."""
        self._h = c_void_p()
        p = _ffi.ModelParams()
        _check(_lib.rk_model_params_init(byref(p), ctypes.sizeof(p)))
        self._keep = [device.encode(), separator.encode(),  # alive during the call
                      None if adapter is None else str(adapter).encode(),
                      None if chat_template is None else str(chat_template).encode()]
        p.device = self._keep[0]
        if dtype not in _ffi.DTYPES:
            raise InvalidArgumentError("dtype must be one of %s" % list(_ffi.DTYPES))
        p.dtype = _ffi.DTYPES[dtype]
        p.n_threads, p.max_length, p.max_batch_size = n_threads, max_length, max_batch_size
        if batch_token_budget is not None:
            p.batch_token_budget = batch_token_budget
        p.append_eos, p.separator, p.head_seed = int(bool(append_eos)), self._keep[1], head_seed
        if normalize not in _ffi.NORMALIZE:
            raise InvalidArgumentError("normalize must be one of %s" % list(_ffi.NORMALIZE))
        p.normalize = _ffi.NORMALIZE[normalize]
        p.adapter, p.chat_template = self._keep[2], self._keep[3]
        _check(_lib.rk_model_load(str(path).encode(), byref(p), byref(self._h)))

    def with_adapter(self, adapter):
        """A second Model over this one's weights (shared, not copied) with the PEFT LoRA
        adapter directory `adapter` applied unmerged: many adapters over one backbone cost one
        backbone plus their factors (e.g. the members of an Ensemble). This model may be
        closed first; an update of its weights is seen by the new one."""
        m = Model.__new__(Model)
        m._h = c_void_p()
        _check(_lib.rk_model_load_adapter(self._h, str(adapter).encode(), byref(m._h)))
        return m

    def score(self, prompts, responses):
        """Rewards of prompts[i] + responses[i] (float32 array)."""
        p, n = _strs(prompts, "prompts")
        r, m = _strs(responses, "responses")
        _same_length(prompts=p, responses=r)
        out = np.zeros(n, dtype=np.float32)
        _check(_lib.rk_model_score_texts(self._h, p, r, n, out.ctypes.data_as(POINTER(c_float))))
        return out

    def score_chats(self, conversations):
        """Rewards of whole conversations, each a list of {"role", "content"} dicts, rendered by
        the model's chat template (the HH format for a checkpoint without one)."""
        texts = [json.dumps(list(c), ensure_ascii=False) for c in conversations]
        c, n = _strs(texts, "conversations")
        out = np.zeros(n, dtype=np.float32)
        _check(_lib.rk_model_score_chats(self._h, c, n, out.ctypes.data_as(POINTER(c_float))))
        return out

    def apply_chat_template(self, conversation, add_generation_prompt=False):
        """The text of a conversation as the model reads it (transformers' apply_chat_template)."""
        c = json.dumps(list(conversation), ensure_ascii=False).encode("utf-8")
        gen = int(bool(add_generation_prompt))
        n = c_size_t()
        s = _lib.rk_model_apply_chat_template(self._h, c, gen, None, 0, byref(n))
        if s not in (_ffi.RK_OK, _ffi.RK_ERR_BUFFER_TOO_SMALL):
            _check(s)
        buf = ctypes.create_string_buffer(n.value + 1)
        _check(_lib.rk_model_apply_chat_template(self._h, c, gen, buf, n.value + 1, byref(n)))
        return buf.raw[: n.value].decode("utf-8")

    def score_tokens(self, sequences):
        """Rewards of token-id sequences (lists or arrays of ints)."""
        seqs = list(sequences)
        ids, offsets = _flat(seqs)
        out = np.zeros(len(seqs), dtype=np.float32)
        _check(_lib.rk_model_score_tokens(self._h, ids, offsets, len(seqs), out.ctypes.data_as(POINTER(c_float))))
        return out

    def tokenize(self, prompt, response):
        """Token ids of prompt + response as scored (uint32 array)."""
        n = c_size_t()
        s = _lib.rk_model_tokenize(self._h, prompt.encode(), response.encode(), None, 0, byref(n))
        if s not in (_ffi.RK_OK, _ffi.RK_ERR_BUFFER_TOO_SMALL):
            _check(s)
        out = np.zeros(n.value, dtype=np.uint32)
        _check(_lib.rk_model_tokenize(self._h, prompt.encode(), response.encode(), out.ctypes.data_as(POINTER(c_uint32)), n.value, byref(n)))
        return out

    def info(self):
        i = _sized(_ffi.ModelInfo)
        _check(_lib.rk_model_get_info(self._h, byref(i)))
        d = _as_dict(i)
        d["architecture"], d["device"] = i.architecture.decode(), i.device.decode()
        d["dtype"] = {v: k for k, v in _ffi.DTYPES.items()}[i.dtype]
        d["head_is_fresh"], d["has_tokenizer"] = bool(i.head_is_fresh), bool(i.has_tokenizer)
        return d

    def weights_checksum(self):
        """A 64-bit checksum of every parameter: equal across ranks exactly when the weights are."""
        c = c_uint64()
        _check(_lib.rk_model_weights_checksum(self._h, byref(c)))
        return c.value

    def difference_loss(self, prompts, responses):
        """MetaRM's J on policy samples: prompts[p] with the k >= 2 strings in responses[p]."""
        p, n = _strs(prompts, "prompts")
        flat, offsets = _groups(responses)
        _same_length(prompts=p, response_groups=offsets[1:])
        r, _ = _strs(flat, "responses")
        j = c_double()
        _check(_lib.rk_model_difference_loss_texts(self._h, p, n, r, offsets, byref(j)))
        return j.value

    def difference_loss_tokens(self, policy):
        """As difference_loss() on token ids: policy[p] holds the k >= 2 id sequences (prompt
        and response together) the policy produced for prompt p."""
        seqs, group_offsets = _groups(policy)
        ids, offsets = _flat(seqs)
        j = c_double()
        _check(_lib.rk_model_difference_loss_tokens(self._h, ids, offsets, group_offsets, len(group_offsets) - 1, byref(j)))
        return j.value


def _handles(models):
    return (c_void_p * len(models))(*[m._h.value for m in models])


class Ensemble(_Handle):
    """Several reward models scored as one, with a combined reward for policy training (Coste
    et al.): combine = "mean", "min" (worst case), "mean_minus_var" or "mean_minus_std" (mean
    less lam times the members' variance or std). Every head of every model is a member. The
    ensemble shares the models' weights: training a member in place is seen by the next call.
    Thread-safe like a Model."""

    _free = staticmethod(_lib.rk_ensemble_free)

    def __init__(self, models, combine="mean", lam=0.0):
        self._h = c_void_p()
        models = list(models)
        if combine not in _ffi.COMBINE:
            raise InvalidArgumentError("combine must be one of %s" % list(_ffi.COMBINE))
        p = _ffi.EnsembleParams()
        _check(_lib.rk_ensemble_params_init(byref(p), ctypes.sizeof(p)))
        p.combine, p.lambda_ = _ffi.COMBINE[combine], lam
        _check(_lib.rk_ensemble_create(_handles(models), len(models), byref(p), byref(self._h)))
        m = c_size_t()
        _check(_lib.rk_ensemble_members(self._h, byref(m)))
        self.members = m.value

    def score(self, prompts, responses):
        """(combined rewards (n,), per-member rewards (n, members)) of prompts[i] + responses[i]."""
        p, n = _strs(prompts, "prompts")
        r, _ = _strs(responses, "responses")
        _same_length(prompts=p, responses=r)
        combined, per_member = np.zeros(n, dtype=np.float32), np.zeros((n, self.members), dtype=np.float32)
        _check(_lib.rk_ensemble_score_texts(self._h, p, r, n, per_member.ctypes.data_as(POINTER(c_float)), combined.ctypes.data_as(POINTER(c_float))))
        return combined, per_member

    def score_tokens(self, sequences):
        """As score() on token-id sequences; every model reads the same ids."""
        seqs = list(sequences)
        ids, offsets = _flat(seqs)
        n = len(seqs)
        combined, per_member = np.zeros(n, dtype=np.float32), np.zeros((n, self.members), dtype=np.float32)
        _check(_lib.rk_ensemble_score_tokens(self._h, ids, offsets, n, per_member.ctypes.data_as(POINTER(c_float)), combined.ctypes.data_as(POINTER(c_float))))
        return combined, per_member


def vote(models, prompts, chosen, rejected):
    """Preference strength by ensemble vote: (mean, population std) arrays of the reward
    differences r(prompt + chosen) - r(prompt + rejected) over the members: every head of every
    model in `models` (a shared-backbone ensemble votes with its heads on its own)."""
    p, c, r, n = _text_pairs(prompts, chosen, rejected)
    mean, std = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
    _check(_lib.rk_vote_texts(_handles(models), len(models), p, c, r, n, mean.ctypes.data_as(POINTER(c_float)), std.ctypes.data_as(POINTER(c_float))))
    return mean, std


def _token_pairs(chosen, rejected):
    c, r = list(chosen), list(rejected)
    _same_length(chosen=c, rejected=r)
    return _flat(c) + _flat(r) + (len(c),)


def vote_tokens(models, chosen, rejected):
    """As vote() on token-id sequences; every model reads the same ids."""
    ci, co, ri, ro, n = _token_pairs(chosen, rejected)
    mean, std = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
    _check(_lib.rk_vote_tokens(_handles(models), len(models), ci, co, ri, ro, n, mean.ctypes.data_as(POINTER(c_float)), std.ctypes.data_as(POINTER(c_float))))
    return mean, std


def read_pairs(path, skip_bad_rows=True):
    """The usable preference pairs of a JSONL(.gz) file, in file order, read by the library's own
    reader (HH-RLHF dialogues, prompt/chosen/rejected rows, lists of turns): a list of
    (prompt, chosen, rejected) tuples."""
    h = c_void_p()
    _check(_lib.rk_pairs_load(str(path).encode(), 1 if skip_bad_rows else 0, byref(h)))
    try:
        n = c_size_t()
        _check(_lib.rk_pairs_count(h, byref(n), None))
        out = []
        p, c, r = c_char_p(), c_char_p(), c_char_p()
        for i in range(n.value):
            _check(_lib.rk_pairs_get(h, i, byref(p), byref(c), byref(r), None))
            out.append((p.value.decode(), c.value.decode(), r.value.decode()))
        return out
    finally:
        _lib.rk_pairs_free(h)


class DeviceBuffer:
    """A CUDA gradient buffer handed to an all-reduce: `address`, `n` float32 values on CUDA
    device `device_index`. `torch.as_tensor(buf, device=f"cuda:{buf.device_index}")` views it
    without a copy (through `__cuda_array_interface__`)."""

    def __init__(self, address, n, device_index):
        self.address, self.n, self.device_index = address, n, device_index

    @property
    def __cuda_array_interface__(self):
        return {"shape": (self.n,), "typestr": "<f4", "data": (self.address, False), "version": 3}


def _text_pairs(prompts, chosen, rejected):
    p, n = _strs(prompts, "prompts")
    c, _ = _strs(chosen, "chosen")
    r, _ = _strs(rejected, "rejected")
    _same_length(prompts=p, chosen=c, rejected=r)
    return p, c, r, n


class Trainer(_Handle):
    """Updates a Model's weights in place: Bradley-Terry steps with the noise-aware options, and
    MetaRM steps. Keyword arguments are the fields of rk_trainer_params; `schedule`,
    `trainable`, `flip`, `smooth`, `margin`, `contrastive` and `contrastive_items` take names
    (e.g. trainable="top_layers", flip="below", margin="raw", contrastive="swav"). Per-pair
    `strengths` (from a vote) and `alphas` (per-pair smoothing) go with each step. LoRA:
    trainable="lora" with lora_rank, lora_alpha, lora_targets ("q,v" or "all"), lora_rslora,
    lora_dropout; `save` then writes a PEFT adapter (Model(base, adapter=dir) merges it,
    base.with_adapter(dir) keeps it apart, or peft loads it)."""

    _free = staticmethod(_lib.rk_trainer_free)
    _NAMES = {"schedule": _ffi.SCHEDULES, "trainable": _ffi.TRAINABLE, "flip": _ffi.FLIP, "smooth": _ffi.SMOOTH, "margin": _ffi.MARGIN,
              "contrastive": _ffi.CONTRASTIVE, "contrastive_items": _ffi.ITEMS}

    def __init__(self, model, **params):
        self._h = c_void_p()
        p = _ffi.TrainerParams()
        _check(_lib.rk_trainer_params_init(byref(p), ctypes.sizeof(p)))
        for key, value in params.items():
            if key not in dict(_ffi.TrainerParams._fields_) or key == "struct_size":
                raise TypeError("unknown trainer parameter %r" % key)
            if key == "lora_targets" and isinstance(value, str):
                names = list(_ffi.LORA_TARGETS) if value == "all" else [t.strip() for t in value.split(",")]
                if not all(t in _ffi.LORA_TARGETS for t in names):
                    raise InvalidArgumentError("lora_targets names %s (or all)" % list(_ffi.LORA_TARGETS))
                value = sum(_ffi.LORA_TARGETS[t] for t in set(names))
            if key in self._NAMES:
                if value not in self._NAMES[key]:
                    raise InvalidArgumentError("%s must be one of %s" % (key, list(self._NAMES[key])))
                value = self._NAMES[key][value]
            setattr(p, key, value)
        self._model = model  # the library keeps the weights alive; this keeps Python's handle too
        self._hook, self._hook_error = None, None
        _check(_lib.rk_trainer_create(model._h, byref(p), byref(self._h)))

    def _run(self, status):
        """Checks a step's status; an exception the all-reduce raised comes out as itself."""
        error, self._hook_error = self._hook_error, None
        if error is not None:
            raise error
        _check(status)

    def set_allreduce(self, fn, rank, world_size):
        """Joins a data-parallel run as `rank` of `world_size`: `fn(buffer, info)` is called with
        every optimizer step's flat float32 gradient (and MetaRM's ascent gradient) and must
        replace it in place with the mean over ranks. `buffer` is a numpy view of host memory
        (no copy; `torch.from_numpy(buffer)` shares it) or, on CUDA, a DeviceBuffer;
        `info` has `sync_point` ("gradient" or "meta_ascent"), `rank`, `world_size`, `step`.
        An exception fails the step (weights unchanged) and is raised by the step call.
        `fn=None` leaves the run. For example, with torch.distributed:

            def allreduce(buf, info):
                t = torch.from_numpy(buf)
                dist.all_reduce(t)
                t /= info["world_size"]
            trainer.set_allreduce(allreduce, dist.get_rank(), dist.get_world_size())
        """
        if fn is None:
            _check(_lib.rk_trainer_set_allreduce(self._h, _ffi.ALLREDUCE_FN(), None, rank, world_size))
            self._hook = None
            return

        def trampoline(_user, buf, n, info):
            try:
                i = info.contents
                d = {"sync_point": _ffi.SYNC_POINTS.get(i.sync_point, i.sync_point), "rank": i.rank, "world_size": i.world_size, "step": i.step,
                     "device_index": i.device_index}
                if i.buffer_kind == _ffi.RK_BUFFER_HOST:
                    view = np.ctypeslib.as_array(ctypes.cast(buf, POINTER(c_float)), shape=(n,))
                else:
                    view = DeviceBuffer(buf, n, i.device_index)
                fn(view, d)
                return _ffi.RK_OK
            except BaseException as e:  # noqa: BLE001 - handed back to the step's caller
                self._hook_error = e
                return e.status if isinstance(e, RewardkitError) else _ffi.RK_ERR_INTERNAL

        hook = _ffi.ALLREDUCE_FN(trampoline)
        _check(_lib.rk_trainer_set_allreduce(self._h, hook, None, rank, world_size))
        self._hook = hook  # kept alive while the library may call it

    def trained_size(self):
        """Scalars in the trained parameters: the length of gradients() and weights()."""
        n = c_size_t()
        _check(_lib.rk_trainer_trained_size(self._h, byref(n)))
        return n.value

    def _get_flat(self, fn):
        out = np.zeros(self.trained_size(), dtype=np.float32)
        _check(fn(self._h, out.ctypes.data_as(POINTER(c_float)), out.size))
        return out

    def _set_flat(self, fn, values):
        v = np.ascontiguousarray(values, dtype=np.float32)
        _check(fn(self._h, v.ctypes.data_as(POINTER(c_float)), v.size))

    def gradients(self):
        """Pull-style (defer_apply=1): the pending gradient, flat float32."""
        return self._get_flat(_lib.rk_trainer_get_gradients)

    def set_gradients(self, values):
        """Replaces the pending gradient (e.g. by its mean over ranks); every value finite."""
        self._set_flat(_lib.rk_trainer_set_gradients, values)

    def apply(self):
        """Applies the pending gradient (clipping, AdamW); returns the step statistics."""
        st = _sized(_ffi.StepStats)
        _check(_lib.rk_trainer_apply(self._h, byref(st)))
        return _stats(st)

    def discard_gradients(self):
        """Drops the pending gradient without an update."""
        _check(_lib.rk_trainer_discard_gradients(self._h))

    def weights(self):
        """The trained weights, flat float32 (broadcast them so that every rank starts identical)."""
        return self._get_flat(_lib.rk_trainer_get_weights)

    def set_weights(self, values):
        """Sets the trained weights from a flat float32 buffer (e.g. rank 0's)."""
        self._set_flat(_lib.rk_trainer_set_weights, values)

    def step(self, prompts, chosen, rejected, strengths=None, alphas=None):
        """One training step; returns the step statistics as a dict."""
        p, c, r, n = _text_pairs(prompts, chosen, rejected)
        (ks, s), (ka, a) = _floats(strengths, n, "strengths"), _floats(alphas, n, "alphas")
        st = _sized(_ffi.StepStats)
        self._run(_lib.rk_trainer_step_texts(self._h, p, c, r, n, s, a, byref(st)))
        return _stats(st)

    def step_tokens(self, chosen, rejected, strengths=None, alphas=None):
        """One training step on token-id sequences (chosen[i] preferred over rejected[i])."""
        ci, co, ri, ro, n = _token_pairs(chosen, rejected)
        (ks, s), (ka, a) = _floats(strengths, n, "strengths"), _floats(alphas, n, "alphas")
        st = _sized(_ffi.StepStats)
        self._run(_lib.rk_trainer_step_tokens(self._h, ci, co, ri, ro, n, s, a, byref(st)))
        return _stats(st)

    def meta_step(self, prompts, chosen, rejected, policy_prompts, policy_responses, strengths=None, alphas=None):
        """One MetaRM step: preference pairs plus policy samples (policy_responses[p] holds the
        k >= 2 responses to policy_prompts[p])."""
        p, c, r, n = _text_pairs(prompts, chosen, rejected)
        pp, m = _strs(policy_prompts, "policy_prompts")
        flat, offsets = _groups(policy_responses)
        _same_length(policy_prompts=pp, response_groups=offsets[1:])
        pr, _ = _strs(flat, "policy_responses")
        (ks, s), (ka, a) = _floats(strengths, n, "strengths"), _floats(alphas, n, "alphas")
        st = _sized(_ffi.MetaStepStats)
        self._run(_lib.rk_trainer_meta_step_texts(self._h, p, c, r, n, s, a, pp, m, pr, offsets, byref(st)))
        return _stats(st)

    def meta_step_tokens(self, chosen, rejected, policy, strengths=None, alphas=None):
        """One MetaRM step on token ids: policy[p] holds the k >= 2 id sequences (prompt and
        response together) the policy produced for prompt p."""
        ci, co, ri, ro, n = _token_pairs(chosen, rejected)
        seqs, group_offsets = _groups(policy)
        pi, po = _flat(seqs)
        (ks, s), (ka, a) = _floats(strengths, n, "strengths"), _floats(alphas, n, "alphas")
        st = _sized(_ffi.MetaStepStats)
        self._run(_lib.rk_trainer_meta_step_tokens(self._h, ci, co, ri, ro, n, s, a, pi, po, group_offsets, len(group_offsets) - 1, byref(st)))
        return _stats(st)

    def evaluate(self, prompts, chosen, rejected):
        p, c, r, n = _text_pairs(prompts, chosen, rejected)
        st = _sized(_ffi.EvalStats)
        _check(_lib.rk_trainer_evaluate_texts(self._h, p, c, r, n, byref(st)))
        return _as_dict(st)

    def evaluate_tokens(self, chosen, rejected):
        ci, co, ri, ro, n = _token_pairs(chosen, rejected)
        st = _sized(_ffi.EvalStats)
        _check(_lib.rk_trainer_evaluate_tokens(self._h, ci, co, ri, ro, n, byref(st)))
        return _as_dict(st)

    def save(self, directory):
        """A resumable Hugging Face checkpoint, written atomically. A directory that is not a
        rewardkit checkpoint is never replaced (RK_ERR_EXISTS)."""
        _check(_lib.rk_trainer_save(self._h, str(directory).encode()))

    def resume(self, directory):
        """Continues the run saved in `directory` (load the Model from it too); returns the
        optimizer steps that run had taken."""
        steps = c_uint64(0)
        _check(_lib.rk_trainer_resume(self._h, str(directory).encode(), byref(steps)))
        return steps.value


def _stats(st):
    d = _as_dict(st)
    d["applied"], d["pending"] = bool(d["applied"]), bool(d["pending"])
    return d
