"""Released weights in and out: the SIGMA / VideoMAE releases' checkpoints and ``transformers``' VideoMAE checkpoints,
mapped exactly onto sigma-ray's models (:func:`read_released`, :func:`import_released`) and back
(:func:`export_transformers`, :func:`export_release`).

The layouts (facts read from the releases' model code and ``transformers``' ``modeling_videomae.py``):

- **release pretraining** (VideoMAE code base ``.pth``, under ``model`` or ``module``, beside ``optimizer``, ``args``
  ...): ``encoder.patch_embed.proj``, ``encoder.blocks.i.*``, ``encoder.norm``; ``encoder_to_decoder`` (no bias),
  ``mask_token``, ``decoder.blocks.i.*``, ``decoder.norm``, ``decoder.head``; SIGMA adds ``prototypes`` (K x D) and,
  for SIGMA-MLP, the tube MLP ``head.{0,2,4,6}`` (1536 -> 1024 -> 1024 -> 512 -> D). SIGMA-DINO's frozen teacher is
  not in the file. A block is ``norm1``, ``attn.qkv`` (weight only) with ``attn.q_bias`` / ``attn.v_bias`` (no k
  bias), ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``.
- **release fine-tuned classifier**: the encoder's keys without ``encoder.``; with mean pooling there is no final
  ``norm`` but ``fc_norm`` (after pooling) and ``head``.
- **transformers** (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``): ``[videomae.]embeddings.
  patch_embeddings.projection``, ``encoder.layer.i.{layernorm_before, attention.attention.{query,key,value},
  attention.output.dense, layernorm_after, intermediate.dense, output.dense}``, ``layernorm`` (absent with
  ``use_mean_pooling``); pretraining adds ``encoder_to_decoder``, ``mask_token``, ``decoder.decoder_layers.i.*``,
  ``decoder.norm``, ``decoder.head``; classification adds ``fc_norm`` and ``classifier``. The q/v biases are
  ``q_bias`` / ``v_bias`` (the hub's files, transformers 4) or ``query.bias`` / ``value.bias`` (saved by
  transformers 5, which reads both).

sigma-ray's fused qkv has a k bias; a vector added to every key adds the same number to all of one query's scores,
which softmax ignores, so import sets it to 0 and export drops it without changing any output. Position tables are
fixed in every layout (not stored): imports use ``pos_embed = sinusoid_1d``, the releases' table. Every key of the
source must map and every weight of the target must be found; anything else is refused with the keys named.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from sigma_ray.method.projection import PixelTubeMLP, Prototypes
from sigma_ray.method.sigma import ObjectiveConfig
from sigma_ray.method.vit import VIT_SIZES, ModelConfig, VideoEncoder, VideoMAE
from sigma_ray.runs.export import ENCODER_PREFIX, save_encoder, save_model_state
from sigma_ray.runs.files import ENCODER_FILE, MODEL_FILE
from sigma_ray.runs.weights import CheckpointError, load_weights

Format = Literal["release", "transformers"]
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
MLP_HIDDEN = (1024, 1024, 512)    # SIGMA-MLP's tube MLP, the release's and sigma-ray's


class ReleaseFormatError(ValueError):
    """The file is not a checkpoint sigma-ray can map exactly; the message says which keys or fields."""


@dataclass(frozen=True)
class Rule:
    """One sigma-ray tensor and the external tensors it is made of: ``copy`` (one to one), ``cat`` (query, key and
    value weights stacked into the fused qkv weight) or ``qv_bias`` (q and v biases around a zero k bias)."""

    sigma: str
    external: tuple[str, ...]
    join: Literal["copy", "cat", "qv_bias"] = "copy"


def _affine(sigma: str, external: str, bias: bool = True) -> list[Rule]:
    """weight (and bias) of a Linear, LayerNorm or Conv3d."""
    names = ("weight", "bias") if bias else ("weight",)
    return [Rule(f"{sigma}.{n}", (f"{external}.{n}",)) for n in names]


def _block_rules(fmt: Format, sigma: str, ext: str, hf_bias_v4: bool = True) -> list[Rule]:
    """One ViT block: sigma-ray/timm names under ``sigma``, the external format's under ``ext``."""
    if fmt == "release":
        return [*_affine(f"{sigma}norm1", f"{ext}norm1"),
                Rule(f"{sigma}attn.qkv.weight", (f"{ext}attn.qkv.weight",)),
                Rule(f"{sigma}attn.qkv.bias", (f"{ext}attn.q_bias", f"{ext}attn.v_bias"), "qv_bias"),
                *_affine(f"{sigma}attn.proj", f"{ext}attn.proj"), *_affine(f"{sigma}norm2", f"{ext}norm2"),
                *_affine(f"{sigma}mlp.fc1", f"{ext}mlp.fc1"), *_affine(f"{sigma}mlp.fc2", f"{ext}mlp.fc2")]
    att = f"{ext}attention.attention."
    q_bias, v_bias = (f"{att}q_bias", f"{att}v_bias") if hf_bias_v4 else (f"{att}query.bias", f"{att}value.bias")
    return [*_affine(f"{sigma}norm1", f"{ext}layernorm_before"),
            Rule(f"{sigma}attn.qkv.weight", (f"{att}query.weight", f"{att}key.weight", f"{att}value.weight"), "cat"),
            Rule(f"{sigma}attn.qkv.bias", (q_bias, v_bias), "qv_bias"),
            *_affine(f"{sigma}attn.proj", f"{ext}attention.output.dense"),
            *_affine(f"{sigma}norm2", f"{ext}layernorm_after"),
            *_affine(f"{sigma}mlp.fc1", f"{ext}intermediate.dense"), *_affine(f"{sigma}mlp.fc2", f"{ext}output.dense")]


def encoder_rules(fmt: Format, config: ModelConfig, sigma: str = "", ext: str = "", hf_bias_v4: bool = True
                  ) -> list[Rule]:
    """The encoder's rules: sigma-ray keys under ``sigma`` (``""`` for a VideoEncoder, ``video.encoder.`` in a
    SigmaModel), external keys under ``ext`` (``encoder.`` in a release pretraining checkpoint, ``videomae.`` in
    transformers' task models)."""
    size = VIT_SIZES[config.size]
    patch = f"{ext}patch_embed.proj" if fmt == "release" else f"{ext}embeddings.patch_embeddings.projection"
    block = f"{ext}blocks." if fmt == "release" else f"{ext}encoder.layer."
    rules = _affine(f"{sigma}patch_embed", patch)
    for i in range(size.depth):
        rules += _block_rules(fmt, f"{sigma}blocks.{i}.", f"{block}{i}.", hf_bias_v4)
    if config.final_norm:
        rules += _affine(f"{sigma}norm", f"{ext}norm" if fmt == "release" else f"{ext}layernorm")
    return rules


def pretraining_rules(fmt: Format, config: ModelConfig, objective: ObjectiveConfig, hf_bias_v4: bool = True
                      ) -> list[Rule]:
    """A whole pretraining model: SigmaModel keys (``video.``, ``projection.mlp.``, ``prototypes.``)."""
    ext = "encoder." if fmt == "release" else "videomae."
    rules = encoder_rules(fmt, config, ENCODER_PREFIX, ext, hf_bias_v4)
    rules += [*_affine("video.decoder.embed", "encoder_to_decoder", bias=False),
              Rule("video.decoder.mask_token", ("mask_token",))]
    block = "decoder.blocks." if fmt == "release" else "decoder.decoder_layers."
    for i in range(VIT_SIZES[config.size].decoder_depth):
        rules += _block_rules(fmt, f"video.decoder.blocks.{i}.", f"{block}{i}.", hf_bias_v4)
    rules += [*_affine("video.decoder.norm", "decoder.norm"), *_affine("video.decoder.head", "decoder.head")]
    if objective.kind == "sigma_mlp":
        for j in range(0, 2 * len(MLP_HIDDEN) + 1, 2):   # the Linear layers between the GELUs
            rules += _affine(f"projection.mlp.{j}", f"head.{j}")
    if objective.kind != "videomae":
        rules.append(Rule("prototypes.weight", ("prototypes",)))
    return rules


def classifier_rules(fmt: Format) -> list[Rule]:
    """A fine-tuned classifier's head: ``fc_norm`` (LayerNorm after mean pooling) and the linear layer, under
    sigma-ray's VideoClassifier names ``fc_norm`` and ``head``."""
    return [*_affine("fc_norm", "fc_norm"), *_affine("head", "head" if fmt == "release" else "classifier")]


def apply_rules(rules: list[Rule], external: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The sigma-ray state dict the ``rules`` make of ``external``. Raises ReleaseFormatError naming the external
    keys that are missing and those that no rule uses (never a partial load)."""
    out, used, missing = {}, set(), []
    for rule in rules:
        absent = [k for k in rule.external if k not in external]
        if absent:
            missing += absent
            continue
        parts = [external[k] for k in rule.external]
        used.update(rule.external)
        if rule.join == "copy":
            out[rule.sigma] = parts[0]
        elif rule.join == "cat":
            out[rule.sigma] = torch.cat(parts, dim=0)
        else:
            q, v = parts
            out[rule.sigma] = torch.cat([q, torch.zeros_like(q), v])
    unused = sorted(set(external) - used)
    if missing or unused:
        raise ReleaseFormatError(
            f"{source}: cannot map the checkpoint exactly"
            + (f"; missing keys: {', '.join(missing)}" if missing else "")
            + (f"; keys sigma-ray does not map: {', '.join(unused)}" if unused else ""))
    return out


def invert_rules(rules: list[Rule], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The external state dict of a sigma-ray ``state`` (the reverse of :func:`apply_rules`; the k bias is dropped,
    which changes no output). Every rule's sigma-ray key must be in ``state``."""
    out = {}
    for rule in rules:
        t = state[rule.sigma].detach().cpu()
        if rule.join == "copy":
            parts = [t]
        else:
            parts = list(t.chunk(3, dim=0))
            if rule.join == "qv_bias":
                parts = [parts[0], parts[2]]
        out.update({k: p.clone().contiguous() for k, p in zip(rule.external, parts)})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Reading files, weights only


def _torch_load(path: Path) -> Any:
    """:func:`sigma_ray.runs.weights.load_weights`; the VideoMAE code base also pickles its ``argparse.Namespace``
    (``args``): that class (a plain attribute bag, no code runs) is the one global allowed beyond torch's."""
    try:
        return load_weights(path, "a checkpoint's weights", allow=(argparse.Namespace,))
    except CheckpointError as e:
        if ": refused to load" not in str(e):      # damaged, empty, text: no advice to re-save helps
            raise ReleaseFormatError(str(e)) from None
        raise ReleaseFormatError(f"{e}. sigma-ray reads weights only; if the file is yours and trusted, save its "
                                 "state dict alone (torch.save(state_dict, ...)) and import that") from None


def read_state_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a weights file and what the file says about the model.

    Returns ``(state, info)``: ``state`` maps names to tensors (unwrapped from a top-level ``model`` or ``module``
    entry, as the VideoMAE code base saves); ``info`` holds ``config`` (a transformers ``config.json`` beside the
    weights, or in the directory given) and ``args`` (the VideoMAE code base's saved arguments), each when present.
    ``.safetensors`` files are read with the ``safetensors`` package, everything else with ``torch.load`` weights
    only.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in HF_WEIGHTS if (path / name).is_file()]
        if not found:
            index = sorted(p.name for p in path.glob("*.index.json"))
            hint = f" (sharded checkpoints such as {index[0]} are not supported)" if index else ""
            raise ReleaseFormatError(f"{path} holds none of {', '.join(HF_WEIGHTS)}{hint}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    info: dict[str, Any] = {}
    if (path.parent / HF_CONFIG).is_file():
        info["config"] = json.loads((path.parent / HF_CONFIG).read_text())
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), info
        except SafetensorError as e:   # truncated, empty or not safetensors at all
            raise ReleaseFormatError(f"{path}: not a readable safetensors file ({e})") from None
    blob = _torch_load(path)
    if isinstance(blob, dict) and isinstance(blob.get("args"), argparse.Namespace):
        info["args"] = vars(blob["args"])
    state = blob
    if isinstance(blob, dict):
        for key in ("model", "module"):    # the VideoMAE code base's wrappers, in its order of preference
            if isinstance(blob.get(key), dict):
                state = blob[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(blob)[:8] if isinstance(blob, dict) else type(blob).__name__
        raise ReleaseFormatError(f"{path}: no state dict found (a dict of tensors, or one under 'model' or "
                                 f"'module'); the file holds {keys}")
    return dict(state), info


# ---------------------------------------------------------------------------------------------------------------
# Inferring the model


@dataclass
class Released:
    """A checkpoint read into sigma-ray's models.

    ``kind``: ``pretraining`` (encoder, decoder and the objective's target side), ``classifier`` (a fine-tuned
    encoder with ``fc_norm`` + linear head) or ``encoder``. ``encoder`` is the VideoEncoder (eval mode);
    ``model_state`` the SigmaModel state dict of a pretraining checkpoint (without SIGMA-DINO's frozen teacher,
    which comes from ``objective.teacher_checkpoint``); ``classifier_head`` the ``fc_norm.*`` / ``head.*`` tensors
    of a classifier under sigma-ray's VideoClassifier names.
    """

    source: str
    source_format: Format
    kind: Literal["pretraining", "classifier", "encoder"]
    model_config: ModelConfig
    encoder: VideoEncoder
    objective: ObjectiveConfig | None = None
    model_state: dict[str, torch.Tensor] | None = None
    classifier_head: dict[str, torch.Tensor] | None = None


def _block_count(state: dict[str, torch.Tensor], prefix: str) -> int:
    """1 + the largest ``i`` of the keys ``{prefix}{i}.*`` (0 when there are none)."""
    found = [int(k[len(prefix):].split(".", 1)[0]) for k in state
             if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()]
    return max(found) + 1 if found else 0


def _match_size(embed_dim: int, depth: int, mlp_hidden: int, decoder: tuple[int, int] | None, source: str) -> str:
    """The VIT_SIZES name with these widths and depths (``decoder`` = (width, depth) when the file has one)."""
    for name, s in VIT_SIZES.items():
        if (s.embed_dim, s.depth, int(s.embed_dim * s.mlp_ratio)) == (embed_dim, depth, mlp_hidden) and \
                (decoder is None or decoder == (s.decoder_dim, s.decoder_depth)):
            return name
    found = f"width {embed_dim}, depth {depth}, MLP {mlp_hidden}" + (
        f", decoder width {decoder[0]} depth {decoder[1]}" if decoder else "")
    known = "; ".join(f"{n}: {s.embed_dim}/{s.depth}/{s.decoder_dim}/{s.decoder_depth}" for n, s in VIT_SIZES.items())
    raise ReleaseFormatError(f"{source}: no sigma-ray model size has {found} (width/depth/decoder width/decoder "
                             f"depth of the known sizes: {known})")


def _setting(name: str, from_file: Any, given: Any, where: str, default: Any, source: str) -> Any:
    """A shape the weights do not hold: the file's value, else the caller's, else the releases' default; a
    caller's value that contradicts the file is an error."""
    if from_file is not None and given is not None and from_file != given:
        raise ReleaseFormatError(f"{source}: {where} says {name} = {from_file}, but {given} was asked for")
    return from_file if from_file is not None else given if given is not None else default


def _detect(state: dict[str, torch.Tensor], source: str) -> tuple[Format, str]:
    """(format, external prefix of the encoder)."""
    for fmt, suffix in (("transformers", "embeddings.patch_embeddings.projection.weight"),
                        ("release", "patch_embed.proj.weight")):
        for prefix in (("videomae.", "") if fmt == "transformers" else ("encoder.", "")):
            if prefix + suffix in state:
                return fmt, prefix
    raise ReleaseFormatError(f"{source}: neither the SIGMA/VideoMAE release's layout nor transformers' VideoMAE "
                             f"(no patch embedding key); first keys: {', '.join(list(state)[:6])}")


def _objective(state: dict[str, torch.Tensor], tube_pixels: int, source: str) -> ObjectiveConfig:
    """What a release pretraining checkpoint's decoder predicts: prototype codes of the tube MLP (SIGMA-MLP) or of a
    frozen teacher (SIGMA-DINO), or normalized pixels (VideoMAE)."""
    if "decoder.head.weight" not in state:
        raise ReleaseFormatError(f"{source}: missing keys: decoder.head.weight")
    out_dim = state["decoder.head.weight"].shape[0]
    if "prototypes" not in state:
        if out_dim != tube_pixels:
            raise ReleaseFormatError(f"{source}: the decoder predicts {out_dim}-d targets without prototypes; "
                                     f"only VideoMAE's pixel target ({tube_pixels}-d) is known")
        return ObjectiveConfig(kind="videomae")
    num_prototypes, dim = state["prototypes"].shape
    if dim != out_dim:
        raise ReleaseFormatError(f"{source}: prototypes are {dim}-d, the decoder predicts {out_dim}-d")
    if "head.0.weight" in state:
        return ObjectiveConfig(kind="sigma_mlp", num_prototypes=num_prototypes, feature_dim=out_dim)
    teacher = {768: "vit_base_patch16_224.dino", 384: "vit_small_patch16_224.dino"}.get(out_dim)
    if teacher is None:
        raise ReleaseFormatError(f"{source}: SIGMA-DINO targets of width {out_dim}: no known DINO teacher has it")
    # the teacher's weights are not in the file: a run sets objective.teacher_checkpoint
    return ObjectiveConfig(kind="sigma_dino", num_prototypes=num_prototypes, teacher_model=teacher)


def _load(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:    # shape mismatches: torch names the keys
        raise ReleaseFormatError(f"{source}: {e}") from None


def read_released(src: str | Path, num_frames: int | None = None, img_size: int | None = None) -> Released:
    """Read a release or transformers checkpoint (file, or a transformers model directory) into sigma-ray models.

    Infers the layout, the model size (a VIT_SIZES entry), tubelet, patch, LayerNorm epsilon and final norm from
    the weights and ``config.json``; frames and image size come from ``config.json`` or the release's saved
    ``args``, else from ``num_frames`` / ``img_size``, else the releases' 16 x 224. Raises ReleaseFormatError
    (naming keys or fields) for anything it cannot map exactly.
    """
    source = str(src)
    state, info = read_state_file(src)
    fmt, ext = _detect(state, source)
    hf = info.get("config", {}) if fmt == "transformers" else {}
    args = info.get("args", {})
    hf_bias_v4 = not any(k.endswith("attention.attention.query.bias") for k in state)
    patch_w = state[f"{ext}patch_embed.proj.weight" if fmt == "release"
                    else f"{ext}embeddings.patch_embeddings.projection.weight"]
    if patch_w.ndim != 5:
        raise ReleaseFormatError(f"{source}: patch embedding of shape {tuple(patch_w.shape)} ({patch_w.ndim}-D): an "
                                 "image model's, not a video model's (embed dim, 3, tubelet, patch, patch); an image "
                                 "ViT serves as SIGMA-DINO's teacher (objective.teacher_checkpoint), not as an import")
    embed_dim, channels, tubelet, patch, patch_w2 = patch_w.shape
    if channels != 3 or patch != patch_w2:
        raise ReleaseFormatError(f"{source}: patch embedding of shape {tuple(patch_w.shape)}: sigma-ray embeds RGB "
                                 "clips with square patches")
    block = f"{ext}blocks." if fmt == "release" else f"{ext}encoder.layer."
    depth = _block_count(state, block)
    fc1 = f"{block}0.mlp.fc1.weight" if fmt == "release" else f"{block}0.intermediate.dense.weight"
    if fc1 not in state:
        raise ReleaseFormatError(f"{source}: missing keys: {fc1}")
    pretraining = "encoder_to_decoder.weight" in state
    decoder = None
    if pretraining:
        decoder = (state["encoder_to_decoder.weight"].shape[0],
                   _block_count(state, "decoder.blocks." if fmt == "release" else "decoder.decoder_layers."))
    size = _match_size(embed_dim, depth, state[fc1].shape[0], decoder, source)

    if fmt == "transformers":
        s = VIT_SIZES[size]
        expected = {"num_attention_heads": s.num_heads, "hidden_act": "gelu", "num_channels": 3}
        if pretraining:
            expected["decoder_num_attention_heads"] = s.decoder_heads
        for key, want in expected.items():
            if key in hf and hf[key] != want:
                raise ReleaseFormatError(f"{source}: config.json has {key} = {hf[key]!r}; sigma-ray's {size} "
                                         f"model has {want!r}")
        for key, have in (("tubelet_size", tubelet), ("patch_size", patch)):
            if key in hf and hf[key] != have:
                raise ReleaseFormatError(f"{source}: config.json says {key} = {hf[key]}, the weights {have}")
    elif args.get("tubelet_size", tubelet) != tubelet:
        raise ReleaseFormatError(f"{source}: args.tubelet_size = {args['tubelet_size']}, the weights {tubelet}")
    image = hf.get("image_size")
    if isinstance(image, (list, tuple)):
        if len(set(image)) != 1:
            raise ReleaseFormatError(f"{source}: image_size {image} is not square")
        image = image[0]
    where = "config.json" if fmt == "transformers" else "the checkpoint's args"
    frames = _setting("num_frames", hf.get("num_frames", args.get("num_frames")), num_frames, where, 16, source)
    image = _setting("img_size", image if image is not None else args.get("input_size"), img_size, where, 224, source)
    final_norm = (f"{ext}norm.weight" if fmt == "release" else f"{ext}layernorm.weight") in state
    default_eps = 1e-6 if fmt == "release" else 1e-12    # the release's, and transformers' VideoMAEConfig default
    # transformers builds VideoMAEDecoder.norm and the classifier's fc_norm with nn.LayerNorm's default eps
    head_eps = {"decoder_norm_eps": 1e-5, "fc_norm_eps": 1e-5} if fmt == "transformers" else {}
    try:
        config = ModelConfig(size=size, num_frames=int(frames), img_size=int(image), tubelet=tubelet, patch=patch,
                             pos_embed="sinusoid_1d", norm_eps=float(hf.get("layer_norm_eps", default_eps)),
                             final_norm=final_norm, **head_eps)
        config.validate()
    except ValueError as e:
        raise ReleaseFormatError(f"{source}: {e}") from None

    fmt_name = "the SIGMA/VideoMAE release's" if fmt == "release" else "transformers' VideoMAE"
    source_desc = f"{source} ({fmt_name} layout)"
    if pretraining:
        return _read_pretraining(state, fmt, config, hf_bias_v4, source_desc, source)
    head_key = "head.weight" if fmt == "release" else "classifier.weight"
    encoder = VideoEncoder(config)
    if head_key in state:
        if "fc_norm.weight" not in state:
            raise ReleaseFormatError(f"{source}: a classifier without fc_norm classifies the first token; "
                                     "sigma-ray's classifier mean-pools the tokens (VideoMAE's default)")
        mapped = apply_rules(encoder_rules(fmt, config, "", ext, hf_bias_v4) + classifier_rules(fmt), state,
                             source_desc)
        head = {k: v for k, v in mapped.items() if k.startswith(("fc_norm.", "head."))}
        _load(encoder, {k: v for k, v in mapped.items() if k not in head}, source)
        head = {k: v.float().contiguous() for k, v in head.items()}
        return Released(source, fmt, "classifier", config, encoder.eval(), classifier_head=head)
    _load(encoder, apply_rules(encoder_rules(fmt, config, "", ext, hf_bias_v4), state, source_desc), source)
    return Released(source, fmt, "encoder", config, encoder.eval())


def _read_pretraining(state: dict[str, torch.Tensor], fmt: Format, config: ModelConfig, hf_bias_v4: bool,
                      source_desc: str, source: str) -> Released:
    objective = _objective(state, config.tube_pixels, source) if fmt == "release" else \
        ObjectiveConfig(kind="videomae")
    mapped = apply_rules(pretraining_rules(fmt, config, objective, hf_bias_v4), state, source_desc)
    # The SigmaModel's parts without the model around them: SIGMA-DINO's teacher would need its weights file.
    video = VideoMAE(config, mapped["video.decoder.head.weight"].shape[0])
    parts: dict[str, nn.Module] = {"video": video}
    if objective.kind == "sigma_mlp":
        parts["projection"] = PixelTubeMLP(config.tube_pixels, objective.feature_dim, MLP_HIDDEN, config.tubelet,
                                           config.patch)
    if objective.kind != "videomae":
        parts["prototypes"] = Prototypes(objective.num_prototypes, video.decoder.head.out_features)
    model_state = {}
    for name, part in parts.items():
        _load(part, {k[len(name) + 1:]: v for k, v in mapped.items() if k.startswith(name + ".")}, source)
        model_state.update({f"{name}.{k}": v for k, v in part.state_dict().items()})
    return Released(source, fmt, "pretraining", config, video.encoder.eval(), objective, model_state)


# ---------------------------------------------------------------------------------------------------------------
# Writing




def import_released(src: str | Path, out_dir: str | Path, num_frames: int | None = None,
                    img_size: int | None = None) -> tuple[Released, dict[str, Path]]:
    """Read ``src`` (:func:`read_released`) and write ``out_dir/encoder.pt`` (sigma-ray's encoder export, with the
    classifier head of a fine-tuned model) and, for pretraining checkpoints, ``out_dir/model.pt`` (a SigmaModel
    state that ``train.init_from`` starts pretraining from). Returns the read checkpoint and the written paths."""
    released = read_released(src, num_frames, img_size)
    out_dir = Path(out_dir)
    meta = {"source": released.source, "source_format": released.source_format, "kind": released.kind}
    written = {"encoder": save_encoder(released.encoder, released.model_config, out_dir / ENCODER_FILE, meta,
                                       classifier_head=released.classifier_head)}
    if released.model_state is not None:
        written["model"] = save_model_state(released.model_state, released.model_config, released.objective,
                                            out_dir / MODEL_FILE, meta)
    return released, written


def _exportable(config: ModelConfig, target: str) -> None:
    if config.pos_embed != "sinusoid_1d":
        raise ReleaseFormatError(
            f"this encoder uses pos_embed = {config.pos_embed!r}; {target} has VideoMAE's fixed 1-D position table "
            "only, so the encoder would give other features there. Only encoders trained with "
            "model.pos_embed = sinusoid_1d (the default) can be exported")


def transformers_config(config: ModelConfig) -> dict[str, Any]:
    """``config.json`` of a transformers ``VideoMAEModel`` with ``config``'s shape (decoder fields from the size,
    as a VideoMAEForPreTraining of it would have)."""
    s = VIT_SIZES[config.size]
    return {"architectures": ["VideoMAEModel"], "model_type": "videomae", "hidden_size": s.embed_dim,
            "num_hidden_layers": s.depth, "num_attention_heads": s.num_heads,
            "intermediate_size": int(s.embed_dim * s.mlp_ratio), "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": config.norm_eps,
            "image_size": config.img_size, "patch_size": config.patch, "num_channels": 3,
            "num_frames": config.num_frames, "tubelet_size": config.tubelet, "qkv_bias": True,
            # VideoMAEModel has its final LayerNorm exactly when it does not mean-pool
            "use_mean_pooling": not config.final_norm, "decoder_num_attention_heads": s.decoder_heads,
            "decoder_hidden_size": s.decoder_dim, "decoder_num_hidden_layers": s.decoder_depth,
            "decoder_intermediate_size": int(s.decoder_dim * s.mlp_ratio), "norm_pix_loss": True,
            "torch_dtype": "float32"}


def export_transformers(encoder: VideoEncoder, out_dir: str | Path) -> Path:
    """Write ``encoder`` as a transformers ``VideoMAEModel`` directory (``config.json`` + ``model.safetensors``,
    q/v biases as ``q_bias`` / ``v_bias`` like the hub's files, which transformers 4 and 5 both read). Raises
    ReleaseFormatError for encoders transformers cannot express (a ``sincos_3d`` position table)."""
    from safetensors.torch import save_file

    config = encoder.config
    _exportable(config, "transformers' VideoMAE")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = invert_rules(encoder_rules("transformers", config), encoder.state_dict())
    save_file(state, str(out_dir / HF_WEIGHTS[0]), metadata={"format": "pt"})
    (out_dir / HF_CONFIG).write_text(json.dumps(transformers_config(config), indent=2) + "\n")
    return out_dir


def export_release(encoder: VideoEncoder, path: str | Path) -> Path:
    """Write ``encoder`` in the release's pretraining layout (``{"model": {"encoder.*": ...}}``), the file the
    SIGMA / VideoMAE code base fine-tunes from (``--finetune``). Raises ReleaseFormatError for a ``sincos_3d``
    position table."""
    _exportable(encoder.config, "the SIGMA/VideoMAE code base")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = invert_rules(encoder_rules("release", encoder.config, "", "encoder."), encoder.state_dict())
    torch.save({"model": state}, path)
    return path
