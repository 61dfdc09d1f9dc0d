"""Every public method of the spec (shared/spec/lora-loader-mixins.txt) has the same parameters, order and defaults."""

from __future__ import annotations

import inspect

import pytest

import lorakit

# Transcribed from the spec; "**kwargs" marks a VAR_KEYWORD parameter, "name=value" a default.
_TE = "state_dict network_alphas text_encoder prefix=None lora_scale=1.0 adapter_name=None _pipeline=None low_cpu_mem_usage=False"
_LOAD = "pretrained_model_name_or_path_or_dict adapter_name=None **kwargs"
_STATE = "pretrained_model_name_or_path_or_dict **kwargs"
_SAVE_TAIL = "is_main_process=True weight_name=None save_function=None safe_serialization=True"
SPEC: dict[str, dict[str, str]] = {
    "StableDiffusionLoraLoaderMixin": {
        "load_lora_into_text_encoder": _TE,
        "load_lora_into_unet": "state_dict network_alphas unet adapter_name=None _pipeline=None low_cpu_mem_usage=False",
        "load_lora_weights": _LOAD,
        "lora_state_dict": _STATE,
        "save_lora_weights": f"save_directory unet_lora_layers=None text_encoder_lora_layers=None {_SAVE_TAIL}",
    },
    "StableDiffusionXLLoraLoaderMixin": {
        "load_lora_into_text_encoder": _TE,
        "load_lora_into_unet": "state_dict network_alphas unet adapter_name=None _pipeline=None low_cpu_mem_usage=False",
        "load_lora_weights": _LOAD,
        "lora_state_dict": _STATE,
        "save_lora_weights": "save_directory unet_lora_layers=None text_encoder_lora_layers=None "
        f"text_encoder_2_lora_layers=None {_SAVE_TAIL}",
    },
    "SD3LoraLoaderMixin": {
        "load_lora_into_text_encoder": _TE,
        "load_lora_into_transformer": "state_dict transformer adapter_name=None _pipeline=None low_cpu_mem_usage=False",
        "load_lora_weights": _LOAD,
        "lora_state_dict": _STATE,
        "save_lora_weights": "save_directory transformer_lora_layers=None text_encoder_lora_layers=None "
        f"text_encoder_2_lora_layers=None {_SAVE_TAIL}",
    },
    # diffusers 0.42.1 FluxLoraLoaderMixin (inspect.signature of the installed class)
    "FluxLoraLoaderMixin": {
        "load_lora_into_text_encoder": _TE + " hotswap=False metadata=None",
        "load_lora_into_transformer": "state_dict network_alphas transformer adapter_name=None metadata=None _pipeline=None "
        "low_cpu_mem_usage=False hotswap=False",
        "load_lora_weights": "pretrained_model_name_or_path_or_dict adapter_name=None hotswap=False **kwargs",
        "lora_state_dict": "pretrained_model_name_or_path_or_dict return_alphas=False **kwargs",
        "save_lora_weights": "save_directory transformer_lora_layers=None text_encoder_lora_layers=None "
        f"{_SAVE_TAIL} transformer_lora_adapter_metadata=None text_encoder_lora_adapter_metadata=None",
        "fuse_lora": "components=['transformer'] lora_scale=1.0 safe_fusing=False adapter_names=None **kwargs",
        "unload_lora_weights": "reset_to_overwritten_params=False",
    },
    "AmusedLoraLoaderMixin": {
        "load_lora_into_transformer": "state_dict network_alphas transformer adapter_name=None _pipeline=None "
        "low_cpu_mem_usage=False",
    },
    "LoraBaseMixin": {
        "delete_adapters": "adapter_names",
        "fuse_lora": "components=[] lora_scale=1.0 safe_fusing=False adapter_names=None **kwargs",
        "get_active_adapters": "",
        "get_list_adapters": "",
        "set_lora_device": "adapter_names device",
        "unfuse_lora": "components=[] **kwargs",
        "unload_lora_weights": "",
        # named in the issue (diffusers 0.42.1 signatures)
        "set_adapters": "adapter_names adapter_weights=None",
        "disable_lora": "",
        "enable_lora": "",
        "enable_lora_hotswap": "**kwargs",
    },
}
CLASSMETHODS = {"load_lora_into_text_encoder", "load_lora_into_unet", "load_lora_into_transformer", "lora_state_dict", "save_lora_weights"}
_EMPTY = inspect.Parameter.empty


def _parse(spec: str) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for tok in spec.split():
        if tok.startswith("**"):
            out.append((tok, _EMPTY))
        elif "=" in tok:
            name, value = tok.split("=", 1)
            out.append((name, eval(value)))  # noqa: S307 - literals from the table above
        else:
            out.append((tok, _EMPTY))
    return out


CASES = [(cls, meth, spec) for cls, methods in SPEC.items() for meth, spec in methods.items()]


@pytest.mark.parametrize(("cls_name", "method", "spec"), CASES, ids=[f"{c}.{m}" for c, m, _ in CASES])
def test_signature_matches_spec(cls_name: str, method: str, spec: str) -> None:
    classes = [getattr(lorakit, cls_name)]
    if cls_name == "LoraBaseMixin":  # base methods are inherited unchanged by every family (unless it has its own)
        classes += [getattr(lorakit, c) for c in SPEC if c != "LoraBaseMixin" and method not in SPEC[c]]
    for cls in classes:
        fn = inspect.getattr_static(cls, method, None)
        assert fn is not None, f"{cls.__name__}.{method} missing"
        assert isinstance(fn, classmethod) == (method in CLASSMETHODS), f"{cls.__name__}.{method}: classmethod mismatch"
        params = [p for p in inspect.signature(getattr(cls, method)).parameters.values() if p.name not in ("self", "cls")]
        ours = {p.name: p for p in params}
        order = [p.name if p.kind is not p.VAR_KEYWORD else f"**{p.name}" for p in params]
        want = _parse(spec)
        positions = []
        for name, default in want:
            if name.startswith("**"):
                assert any(p.kind is p.VAR_KEYWORD for p in params), f"{cls.__name__}.{method}: no {name}"
                continue
            assert name in ours, f"{cls.__name__}.{method}: parameter {name!r} missing ({order})"
            p = ours[name]
            assert p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY), f"{cls.__name__}.{method}: {name} kind {p.kind}"
            assert p.default == default or (p.default is default), f"{cls.__name__}.{method}: {name} default {p.default!r} != {default!r}"
            positions.append(order.index(name))
        assert positions == sorted(positions), f"{cls.__name__}.{method}: order {order} differs from the spec"
        # the spec's positional parameters come first, in order; anything lorakit adds has a default
        assert order[: len(positions)] == [n for n, _ in want if not n.startswith("**")], f"{cls.__name__}.{method}: {order}"
        for p in params:
            if p.name not in dict(want) and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                assert p.default is not _EMPTY, f"{cls.__name__}.{method}: extra parameter {p.name} needs a default"


def test_properties_exist() -> None:
    for name in ("lora_scale", "num_fused_loras", "fused_loras"):
        assert isinstance(inspect.getattr_static(lorakit.LoraBaseMixin, name), property)


def test_family_data_not_copied_methods() -> None:
    """The families share every state method (only data and the thin signature-bearing loaders/savers differ)."""
    shared = [m for m in SPEC["LoraBaseMixin"]] + ["load_lora_weights", "lora_state_dict", "load_lora_into_text_encoder"]
    # Flux's fuse_lora default, unload_lora_weights flag and lora_state_dict(return_alphas) are one-line signatures
    own = {"FluxLoraLoaderMixin": {"fuse_lora", "unload_lora_weights", "lora_state_dict"}}
    for cls_name in ("StableDiffusionLoraLoaderMixin", "StableDiffusionXLLoraLoaderMixin", "SD3LoraLoaderMixin",
                     "FluxLoraLoaderMixin", "AmusedLoraLoaderMixin"):
        cls = getattr(lorakit, cls_name)
        for m in shared:
            if m in own.get(cls_name, ()):
                continue
            assert getattr(cls, m).__qualname__.startswith("LoraBaseMixin."), f"{cls_name}.{m} is a copy"


@pytest.mark.parametrize(
    "cls_name",
    ["StableDiffusionLoraLoaderMixin", "StableDiffusionXLLoraLoaderMixin", "SD3LoraLoaderMixin", "FluxLoraLoaderMixin",
     "AmusedLoraLoaderMixin"],
)
def test_every_public_method_of_installed_diffusers_exists_with_its_parameters(cls_name: str) -> None:
    """Code written against diffusers 0.42.1 runs unchanged: same methods, parameter names and defaults.

    Documented differences: ``components`` of ``fuse_lora`` / ``unfuse_lora`` defaults to ``[]`` (= every LoRA-loadable
    component, the effect of diffusers' per-family default lists); aMUSEd has no ``load_lora_into_unet``.
    """
    import diffusers.loaders

    theirs, ours = getattr(diffusers.loaders, cls_name), getattr(lorakit, cls_name)
    for name in dir(theirs):
        static = inspect.getattr_static(theirs, name, None)
        if name.startswith("_") or isinstance(static, property) or not callable(getattr(theirs, name)):
            continue
        if cls_name == "AmusedLoraLoaderMixin" and name == "load_lora_into_unet":
            continue
        assert hasattr(ours, name), f"{cls_name}.{name} missing"
        mine = inspect.signature(getattr(ours, name)).parameters
        for p in inspect.signature(getattr(theirs, name)).parameters.values():
            if p.name in ("self", "cls") or p.kind is p.VAR_KEYWORD:
                continue
            assert p.name in mine, f"{cls_name}.{name}: parameter {p.name} missing"
            if p.default is not p.empty and p.name != "components":
                assert mine[p.name].default == p.default, f"{cls_name}.{name}: {p.name} default differs"
