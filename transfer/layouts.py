"""Where public self-supervised checkpoints keep their ResNet: one small entry per layout.

Each ``Layout`` says where the backbone's tensors sit in the saved object (a *place*: the nested
dict keys separated by ``/``, then the key prefix of the backbone's tensors), which encoders a file
can hold (the first one is the default ``--encoder``), what identifies the layout when several
share a place, and where the fact comes from (that project's own saving or loading code). Inside
the prefix every layout uses torchvision's ResNet names (``conv1``, ``bn1``, ``layer1.0.conv1``
...), except lightly's ``nn.Sequential`` of torchvision's children, renamed by index.

Layouts are tried in order, most specific first; the generic ``backbone`` and ``torchvision``
layouts come last. Everything in the chosen container that is not backbone (fc, heads, projectors,
predictors, queues, prototypes) is dropped and reported.
"""

import difflib
from dataclasses import dataclass, field

RESNET_ANCHORS = ("conv1.weight", "layer1.0.conv1.weight")
BACKBONE_PARTS = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


@dataclass(frozen=True)
class Layout:
    name: str
    title: str
    encoders: dict  # encoder name -> places tried in order; the first encoder is the default
    source: str  # where the layout was read from
    requires: tuple = ()  # any one of these places must exist (tells apart shared places)
    renames: dict = field(default_factory=dict)  # leading names -> torchvision names

    @property
    def default_encoder(self) -> str:
        return next(iter(self.encoders))


def _places(containers, prefixes):
    return tuple(f"{c}/{p}" if c else p for c in containers for p in prefixes)


LAYOUTS = (
    # facebookresearch/vissl vissl/models/trunks/resnext.py: the trunk is a ModuleDict
    # `_feature_blocks` of torchvision's conv1/bn1/layer1..4; checkpoints nest the model under
    # classy_state_dict -> base_model -> model -> {trunk, heads} (vissl/utils/checkpoint.py).
    Layout(
        "vissl",
        "VISSL classy state dict",
        {"trunk": ("classy_state_dict/base_model/model/trunk/_feature_blocks.",)},
        "facebookresearch/vissl vissl/models/trunks/resnext.py, vissl/utils/checkpoint.py",
    ),
    # facebookresearch/dino main_dino.py: save_dict = {student, teacher, optimizer, epoch, args,
    # dino_loss}; both are MultiCropWrapper(backbone, head) (fc = Identity), DDP-wrapped for
    # ResNets (BN) so keys read module.backbone.*; utils.load_pretrained_weights defaults to
    # checkpoint_key teacher.
    Layout(
        "dino",
        "DINO training checkpoint",
        {
            "teacher": _places(["teacher"], ["module.backbone.", "backbone."]),
            "student": _places(["student"], ["module.backbone.", "backbone."]),
        },
        "facebookresearch/dino main_dino.py (save_dict), utils.py (load_pretrained_weights)",
        requires=("teacher", "student"),
    ),
    # facebookresearch/moco-v3 moco/builder.py: base_encoder and momentum_encoder (fc replaced by
    # the projector MLP), predictor; main_moco.py saves {epoch, arch, state_dict, optimizer,
    # scaler} of the DDP model, so keys read module.base_encoder.*; main_lincls.py keeps
    # module.base_encoder minus fc.
    Layout(
        "moco-v3",
        "MoCo v3",
        {
            "base": _places(["state_dict", ""], ["module.base_encoder.", "base_encoder."]),
            "momentum": _places(
                ["state_dict", ""], ["module.momentum_encoder.", "momentum_encoder."]
            ),
        },
        "facebookresearch/moco-v3 moco/builder.py, main_moco.py, main_lincls.py",
    ),
    # facebookresearch/moco moco/builder.py: encoder_q, encoder_k (fc = head), buffers queue and
    # queue_ptr; main_moco.py saves {epoch, arch, state_dict, optimizer}; main_lincls.py and
    # detection/convert-pretrain-to-detectron2.py keep module.encoder_q minus fc.
    Layout(
        "moco",
        "MoCo v1/v2",
        {
            "query": _places(["state_dict", ""], ["module.encoder_q.", "encoder_q."]),
            "key": _places(["state_dict", ""], ["module.encoder_k.", "encoder_k."]),
        },
        "facebookresearch/moco moco/builder.py, main_lincls.py, "
        "detection/convert-pretrain-to-detectron2.py",
    ),
    # facebookresearch/simsiam simsiam/builder.py: encoder (fc = projector) and predictor;
    # main_lincls.py keeps module.encoder minus module.encoder.fc.
    Layout(
        "simsiam",
        "SimSiam",
        {"encoder": _places(["state_dict", ""], ["module.encoder.", "encoder."])},
        "facebookresearch/simsiam simsiam/builder.py, main_lincls.py",
        requires=_places(["state_dict", ""], ["module.predictor.", "predictor."]),
    ),
    # facebookresearch/swav src/resnet50.py: torchvision names plus projection_head and
    # prototypes (conv1 padding 2 after a ConstantPad2d(1): the same zero padding of 3);
    # main_swav.py saves {epoch, state_dict, optimizer, amp}, the released files are the DDP
    # state dict itself; eval_linear.py strips module.
    Layout(
        "swav",
        "SwAV",
        {"model": _places(["state_dict", ""], ["module.", ""])},
        "facebookresearch/swav src/resnet50.py, main_swav.py, eval_linear.py",
        requires=_places(["state_dict", ""], ["module.prototypes", "prototypes"]),
    ),
    # facebookresearch/barlowtwins main.py: BarlowTwins(backbone = torchvision resnet50 with
    # fc = Identity, projector, bn = BatchNorm1d(affine=False)); checkpoint.pth is {epoch, model,
    # optimizer} of the DDP model; the released resnet50.pth is the backbone's state dict.
    Layout(
        "barlowtwins",
        "Barlow Twins training checkpoint",
        {"backbone": _places(["model"], ["module.backbone.", "backbone."])},
        "facebookresearch/barlowtwins main.py (state = dict(epoch, model, optimizer))",
        requires=_places(["model"], ["module.bn.running_mean", "bn.running_mean"]),
    ),
    # facebookresearch/vicreg main_vicreg.py: VICReg(backbone from resnet.py (torchvision
    # names, no fc), projector); model.pth is {epoch, model, optimizer}; resnet50.pth the
    # backbone's state dict.
    Layout(
        "vicreg",
        "VICReg training checkpoint",
        {"backbone": _places(["model"], ["module.backbone.", "backbone."])},
        "facebookresearch/vicreg main_vicreg.py, resnet.py",
        requires=_places(["model"], ["module.projector.", "projector."]),
    ),
    # lucidrains/byol-pytorch byol_pytorch.py: BYOL(online_encoder = NetWrapper(net, projector),
    # target_encoder (a deep copy, created on the first forward), online_predictor); the README
    # saves the wrapped resnet itself (torchvision layout).
    Layout(
        "byol",
        "BYOL learner (byol-pytorch)",
        {
            "online": _places(["state_dict", ""], ["online_encoder.net."]),
            "target": _places(["state_dict", ""], ["target_encoder.net."]),
        },
        "lucidrains/byol-pytorch byol_pytorch/byol_pytorch.py, README.md",
    ),
    # lightly-ai/lightly examples/pytorch/*.py: backbone = nn.Sequential(*list(resnet.children())
    # [:-1]) (children 0 conv1, 1 bn1, 4-7 layer1-4), momentum copies as backbone_momentum;
    # Lightning checkpoints put the module under state_dict.
    Layout(
        "lightly",
        "lightly (torchvision children as nn.Sequential)",
        {
            "backbone": _places(["state_dict", ""], ["backbone.", ""]),
            "momentum": _places(["state_dict", ""], ["backbone_momentum."]),
        },
        "lightly-ai/lightly examples/pytorch/byol.py, moco.py",
        renames={
            "0.": "conv1.",
            "1.": "bn1.",
            "4.": "layer1.",
            "5.": "layer2.",
            "6.": "layer3.",
            "7.": "layer4.",
        },  # fmt: skip
    ),
    # vturrisi/solo-learn solo/methods/base.py: BaseMethod.backbone (torchvision, fc =
    # Identity), classifier, projector; BaseMomentumMethod adds momentum_backbone; saved by
    # PyTorch Lightning ({epoch, global_step, pytorch-lightning_version, state_dict, ...}).
    Layout(
        "solo-learn",
        "solo-learn (PyTorch Lightning)",
        {
            "backbone": ("state_dict/backbone.",),
            "momentum": ("state_dict/momentum_backbone.",),
        },
        "vturrisi/solo-learn solo/methods/base.py",
        requires=("pytorch-lightning_version",),
    ),
    # open-mmlab/mmpretrain (mmselfsup 1.x): checkpoints are {meta, state_dict, optimizer, ...};
    # backbone.* uses torchvision names (mmcv ResNet: conv1, bn1, layerN.i.convK/bnK,
    # downsample.0/1), neck.*, head.*; MoCo's key encoder is ExponentialMovingAverage(
    # Sequential(backbone, neck)) -> encoder_k.module.0.* (mmpretrain/models/selfsup/moco.py).
    Layout(
        "mmselfsup",
        "mmselfsup / mmpretrain",
        {
            "backbone": ("state_dict/backbone.",),
            "key": ("state_dict/encoder_k.module.0.",),
        },
        "open-mmlab/mmpretrain mmpretrain/models/selfsup/moco.py, configs/_base_/models",
        requires=("meta",),
    ),
    # huggingface/pytorch-image-models timm/utils/checkpoint_saver.py: {epoch, arch, optimizer,
    # version: 2, args, state_dict, state_dict_ema, metric}; timm's ResNet uses torchvision's
    # names (conv1, bn1, layerN, downsample.0/1, fc). Released timm weights are the plain state
    # dict (the torchvision layout below).
    Layout(
        "timm",
        "timm training checkpoint",
        {"model": ("state_dict/",), "ema": ("state_dict_ema/",)},
        "huggingface/pytorch-image-models timm/utils/checkpoint_saver.py",
        requires=("version", "state_dict_ema"),
    ),
    # Generic: a backbone attribute (mmdet/mmpretrain exports, Barlow Twins/VICReg without
    # their markers, users' own modules).
    Layout(
        "backbone",
        "backbone-prefixed state dict",
        {
            "backbone": _places(
                ["", "state_dict", "model", "module"], ["backbone.", "module.backbone."]
            )
        },
        "common export convention",
    ),
    # torchvision's own names: torchvision, timm's released ResNet-50, the released backbones
    # of DINO (dino_resnet50_pretrain.pth), Barlow Twins and VICReg (resnet50.pth), and
    # byol-pytorch's saved resnet.
    Layout(
        "torchvision",
        "torchvision-named state dict",
        {"model": _places(["", "state_dict", "model", "module"], ["", "module."])},
        "torchvision/models/resnet.py; dino README (backbone only), barlowtwins hubconf.py",
    ),
)
LAYOUT_NAMES = tuple(layout.name for layout in LAYOUTS)


def layout_named(name: str) -> Layout:
    return next(layout for layout in LAYOUTS if layout.name == name)


def split_place(place: str):
    *containers, prefix = place.split("/")
    return containers, prefix


def container_at(obj, containers):
    for key in containers:
        if not isinstance(obj, dict) or not isinstance(obj.get(key), dict):
            return None
        obj = obj[key]
    return obj if isinstance(obj, dict) else None


def place_exists(obj, place: str) -> bool:
    """True when the container exists and one of its keys starts with the place's prefix."""
    containers, prefix = split_place(place)
    container = container_at(obj, containers)
    return container is not None and any(
        isinstance(key, str) and key.startswith(prefix) for key in container
    )


def _renamed(name: str, renames: dict):
    if not renames:
        return name
    for old, new in renames.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return None  # lightly: a name outside the renamed children is not backbone


def backbone_at(obj, place: str, renames: dict):
    """``(backbone tensors in torchvision names, the container's other keys)`` or None when no
    ResNet is there."""
    containers, prefix = split_place(place)
    container = container_at(obj, containers)
    if container is None:
        return None
    backbone, others = {}, []
    for key, value in container.items():
        name = _renamed(key[len(prefix) :], renames) if str(key).startswith(prefix) else None
        if name is not None and name.startswith(BACKBONE_PARTS):
            backbone[name] = value
        else:
            others.append(str(key))
    if not all(anchor in backbone for anchor in RESNET_ANCHORS):
        return None
    return backbone, others


def find_encoder(obj, layout: Layout, encoder: str):
    """The first place of ``encoder`` holding a ResNet: ``(place, backbone, other keys)``."""
    for place in layout.encoders[encoder]:
        found = backbone_at(obj, place, layout.renames)
        if found is not None:
            return (place, *found)
    return None


def matches(obj, layout: Layout) -> bool:
    if layout.requires and not any(place_exists(obj, place) for place in layout.requires):
        return False
    return any(find_encoder(obj, layout, name) for name in layout.encoders)


def detect(obj, names=LAYOUT_NAMES):
    """The first layout (in ``LAYOUTS`` order, among ``names``) that ``obj`` is in, or None."""
    return next((lay for lay in LAYOUTS if lay.name in names and matches(obj, lay)), None)


def key_paths(obj, depth=4, path=""):
    """The file's key paths a few levels deep, written the way places are."""
    if not isinstance(obj, dict) or depth == 0:
        return []
    paths = []
    for key, value in list(obj.items())[:400]:
        paths.append(f"{path}{key}")
        paths += key_paths(value, depth - 1, f"{path}{key}/")
    return paths


def nearest_layout(obj) -> Layout:
    """The layout whose first place reads most like one of the file's key paths."""
    paths = [p for p in key_paths(obj) if "conv1" in p] or key_paths(obj)

    def similarity(layout):
        places = [p + "conv1.weight" for places in layout.encoders.values() for p in places]
        return max(
            (difflib.SequenceMatcher(None, a, b).ratio() for a in places for b in paths),
            default=0.0,
        )

    return max(LAYOUTS, key=similarity)


def encoders_help() -> str:
    """One line per layout: its encoders, default first (for --help)."""
    return "; ".join(
        f"{layout.name}: {'|'.join(layout.encoders)}"
        for layout in LAYOUTS
        if len(layout.encoders) > 1
    )
