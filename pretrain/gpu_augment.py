"""MoCo v2 / SimCLR / IR augmentation as batched tensor ops on the images' own device.

``data.augment_on: gpu`` moves the augmentation off the loader workers: they only decode
and put each image on a fixed canvas (``ToCanvas``); ``BatchAugment`` then draws every
view's parameters for the whole batch at once and applies random resized crop, colour
jitter (torchvision's ColorJitter: a random order of brightness, contrast, saturation and
hue per image), random grayscale, Gaussian blur, horizontal flip and normalisation as a
handful of batched kernels. The distributions are the CPU pipeline's
(``pretrain.data.augmentation``): ``spec_for`` reads the same method-dependent choices, and
tests compare sampled parameters with torchvision's samplers and each op's output with
``torchvision.transforms.v2.functional`` on the same parameters.

Differences from the CPU pipeline, on purpose: images stay float in [0, 1] between the ops
(PIL rounds to uint8 after each), the blur is an exact Gaussian (PIL's ``GaussianBlur`` is
three box passes of the same standard deviation), and the crop's resampling is
the same antialiased bilinear filter as PIL's and torchvision's but on float pixels.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as nnf

from pretrain.errors import PretrainError

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision tensor op's ITU-R 601 weights (PIL: 0.299)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
CROP_ATTEMPTS = 10  # RandomResizedCrop's tries before its centre-crop fallback


@dataclass(frozen=True)
class AugmentSpec:
    """One method's augmentation distribution (the CPU pipeline's parameters)."""

    image_size: int
    mean: tuple
    std: tuple
    crop_scale: tuple = (0.2, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    jitter: tuple = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue strengths
    jitter_p: float = 0.8
    gray_p: float = 0.2
    gray_before_jitter: bool = False  # IR greys first, MoCo v2 jitters first
    blur_p: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)
    flip_p: float = 0.5


def spec_for(method, image_size, mean, std, crop_min_scale=0.2):
    """The spec matching ``pretrain.data.augmentation(method, ...)``."""
    common = dict(image_size=image_size, mean=tuple(mean), std=tuple(std))
    common["crop_scale"] = (crop_min_scale, 1.0)
    if method == "ir":
        return AugmentSpec(
            **common, jitter=(0.4,) * 4, jitter_p=1.0, gray_before_jitter=True, blur_p=0.0
        )
    if method in ("moco", "simclr", "supervised"):
        # MoCo v2's blur only from 64 px: at 28-32 px it erases the image (as the CPU pipeline)
        return AugmentSpec(**common, blur_p=0.5 if image_size >= 64 else 0.0)
    raise PretrainError(
        f"data.augment_on gpu has no augmentation for method '{method}' (CMC's Lab views are "
        "built on the CPU); set data.augment_on: cpu"
    )


@dataclass
class ViewParams:
    """Per-image parameters of one view of a batch (all tensors of length B)."""

    boxes: torch.Tensor  # (B, 4) float: top, left, height, width in canvas pixels
    jitter: torch.Tensor  # (B,) bool
    factors: torch.Tensor  # (B, 4): brightness, contrast, saturation, hue
    order: torch.Tensor  # (B, 4) long: a permutation of JITTER_OPS per image
    gray: torch.Tensor  # (B,) bool
    blur: torch.Tensor  # (B,) bool
    sigma: torch.Tensor  # (B,)
    flip: torch.Tensor  # (B,) bool

    def to(self, device):
        return ViewParams(
            **{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)}
        )


def uniform(low, high, shape, generator, device=None):
    draws = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return low + (high - low) * draws


def sample_crop_boxes(sizes, scale, ratio, generator):
    """RandomResizedCrop.get_params for every image at once: (B, 4) top, left, h, w.

    ``sizes`` is (B, 2) heights and widths. Ten candidate boxes per image, the first that
    fits is taken, else torchvision's fallback (the whole image, ratio clamped, centred).
    Drawn on ``sizes``' device.
    """
    count, device = len(sizes), sizes.device
    height = sizes[:, :1].double()
    width = sizes[:, 1:].double()
    target = height * width * uniform(*scale, (count, CROP_ATTEMPTS), generator, device)
    log_ratio = uniform(math.log(ratio[0]), math.log(ratio[1]), target.shape, generator, device)
    aspect = torch.exp(log_ratio)
    crop_w = torch.round(torch.sqrt(target * aspect))
    crop_h = torch.round(torch.sqrt(target / aspect))
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = torch.argmax(fits.int(), dim=1, keepdim=True)  # index of the first fitting try
    any_fits = fits.any(dim=1)
    crop_h = crop_h.gather(1, first).squeeze(1)
    crop_w = crop_w.gather(1, first).squeeze(1)
    height, width = height.squeeze(1), width.squeeze(1)
    top = torch.floor(uniform(0, 1, count, generator, device) * (height - crop_h + 1))
    left = torch.floor(uniform(0, 1, count, generator, device) * (width - crop_w + 1))
    fallback = fallback_boxes(height, width, ratio)
    boxes = torch.stack([top, left, crop_h, crop_w], dim=1)
    return torch.where(any_fits[:, None], boxes, fallback)


def fallback_boxes(height, width, ratio):
    """torchvision's centre crop of the whole image with its aspect ratio clamped."""
    in_ratio = width / height
    narrow, wide = in_ratio < ratio[0], in_ratio > ratio[1]
    crop_w = torch.where(narrow, width, torch.where(wide, torch.round(height * ratio[1]), width))
    crop_h = torch.where(narrow, torch.round(width / ratio[0]), height)
    return torch.stack(
        [
            torch.div(height - crop_h, 2, rounding_mode="floor"),
            torch.div(width - crop_w, 2, rounding_mode="floor"),
            crop_h,
            crop_w,
        ],
        dim=1,
    )


def sample_view(spec, sizes, generator=None):
    """Draws one view's ``ViewParams`` for images of ``sizes`` (B, 2), on ``sizes``' device
    (there, nothing is copied from the host: the ranges enter as Python numbers)."""
    count, device = len(sizes), sizes.device
    brightness, contrast, saturation, hue = spec.jitter
    # ColorJitter's ranges: [max(0, 1 - s), 1 + s] for the first three, [-h, h] for hue
    ranges = [(max(0, 1 - s), 1 + s) for s in (brightness, contrast, saturation)] + [(-hue, hue)]
    draws = uniform(0, 1, (count, 4), generator, device)
    factors = torch.stack(
        [low + (high - low) * draws[:, i] for i, (low, high) in enumerate(ranges)], dim=1
    )

    def chance(p):
        return torch.rand(count, generator=generator, device=device) < p

    return ViewParams(
        boxes=sample_crop_boxes(sizes, spec.crop_scale, spec.crop_ratio, generator),
        jitter=chance(spec.jitter_p),
        factors=factors,
        order=torch.argsort(torch.rand(count, 4, generator=generator, device=device), dim=1),
        gray=chance(spec.gray_p),
        blur=chance(spec.blur_p),
        sigma=uniform(*spec.blur_sigma, count, generator, device),
        flip=chance(spec.flip_p),
    )


# ---- the ops, each on a float batch (B, 3, H, W) in [0, 1] with per-image parameters ------


def resize_weights(starts, lengths, size, extent, antialias):
    """(B, size, extent) rows of bilinear weights resampling [start, start + length) to size.

    The triangle filter of PIL and torchvision: output pixel i is centred at
    start + (i + 0.5) * length / size; when shrinking (and ``antialias``) the triangle is
    widened by the scale, so every input pixel counts. Weights outside the crop are zero and
    each row is normalised, which is the edge clamping of ``interpolate``.
    """
    scale = (lengths / size).view(-1, 1, 1)
    steps = torch.arange(size, dtype=starts.dtype, device=starts.device) + 0.5
    centres = starts.view(-1, 1, 1) + steps.view(1, -1, 1) * scale
    width = scale.clamp_min(1) if antialias else torch.ones_like(scale)
    pixels = torch.arange(extent, dtype=starts.dtype, device=starts.device).view(1, 1, -1)
    weights = (1 - ((pixels + 0.5 - centres) / width).abs()).clamp_min(0)
    inside = (pixels >= starts.view(-1, 1, 1)) & (pixels < (starts + lengths).view(-1, 1, 1))
    weights = weights * inside
    return weights / weights.sum(dim=2, keepdim=True)


def resized_crop(images, boxes, size, antialias=True):
    """Crops ``boxes`` (top, left, h, w) of each image, resized to ``size`` squared.

    Separable resampling as two batched matrix products (``resize_weights``): equal to
    torchvision's ``resized_crop`` (bilinear, same ``antialias``) image by image.
    """
    top, left, height, width = boxes.to(images.device, images.dtype).unbind(1)
    rows = resize_weights(top, height, size, images.shape[-2], antialias).unsqueeze(1)
    columns = resize_weights(left, width, size, images.shape[-1], antialias).unsqueeze(1)
    return rows @ images @ columns.transpose(-1, -2)


def grayscale(images):
    """Weights as Python numbers: a weight tensor would be a host-to-device copy per call."""
    red, green, blue = images.unbind(1)
    gray = GRAY_WEIGHTS[0] * red + GRAY_WEIGHTS[1] * green + GRAY_WEIGHTS[2] * blue
    return gray.unsqueeze(1)


def blend(images, other, factor):
    """torchvision's ``_blend``: factor * images + (1 - factor) * other, clamped to [0, 1]."""
    factor = factor.to(images.dtype).view(-1, 1, 1, 1)
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(images, factor):
    return blend(images, torch.zeros_like(images), factor)


def adjust_contrast(images, factor):
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return blend(images, mean, factor)


def adjust_saturation(images, factor):
    return blend(images, grayscale(images), factor)


def rgb_to_hsv(images):
    maximum, _ = images.max(dim=1)
    minimum, _ = images.min(dim=1)
    chroma = maximum - minimum
    safe_chroma = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    saturation = chroma / torch.where(maximum == 0, torch.ones_like(maximum), maximum)
    red, green, blue = images.unbind(1)
    # hue sector by which channel is the maximum (red wins ties, then green), as torchvision
    hue_red = ((green - blue) / safe_chroma) % 6
    hue_green = (blue - red) / safe_chroma + 2
    hue_blue = (red - green) / safe_chroma + 4
    is_red = maximum == red
    is_green = (maximum == green) & ~is_red
    hue = torch.where(is_red, hue_red, torch.where(is_green, hue_green, hue_blue))
    hue = torch.where(chroma == 0, torch.zeros_like(hue), hue) / 6
    return hue, saturation, maximum


def hsv_to_rgb(hue, saturation, value):
    sector = torch.floor(hue * 6)
    fraction = hue * 6 - sector
    sector = sector.long() % 6
    p = (value * (1 - saturation)).clamp(0, 1)
    q = (value * (1 - saturation * fraction)).clamp(0, 1)
    t = (value * (1 - saturation * (1 - fraction))).clamp(0, 1)
    # channel values for sectors 0..5: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    table = torch.stack(
        [
            torch.stack(channel, dim=1)
            for channel in (
                (value, q, p, p, t, value),
                (t, value, value, q, p, p),
                (p, p, t, value, value, q),
            )
        ],
        dim=1,
    )  # (B, 3, 6, H, W)
    index = sector.unsqueeze(1).unsqueeze(2).expand(-1, 3, 1, -1, -1)
    return table.gather(2, index).squeeze(2)


def adjust_hue(images, factor):
    hue, saturation, value = rgb_to_hsv(images)
    hue = (hue + factor.to(images.dtype).view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(hue, saturation, value)


ADJUSTERS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(images, apply, factors, order):
    """ColorJitter per image: its four adjustments in its own ``order``, where ``apply``.

    At each of the four positions every image takes the op it drew there, as whole-batch ops
    kept by mask (``torch.where``): picking the images instead (``nonzero``) would make the
    host wait for their count 16 times per view. Brightness, contrast and saturation are one
    blend with a per-image partner (black, the mean grey, the grey image); hue is computed for
    the batch and kept where drawn.
    """
    out = images
    for position in range(len(JITTER_OPS)):
        op = torch.where(apply, order[:, position], -1)
        out = torch.where(is_op(op, 3), adjust_hue(out, factors[:, 3]), out)
        gray = grayscale(out)
        partner = torch.where(is_op(op, 0), 0.0, gray.mean(dim=(1, 2, 3), keepdim=True))
        partner = torch.where(is_op(op, 2), gray, partner)
        blended = blend(out, partner, factors.gather(1, op.clamp(0, 2).unsqueeze(1)).squeeze(1))
        out = torch.where(is_op(op, 0) | is_op(op, 1) | is_op(op, 2), blended, out)
    return out


def is_op(op, index):
    """(B, 1, 1, 1) mask of the images whose drawn op is ``JITTER_OPS[index]``."""
    return (op == index).view(-1, 1, 1, 1)


def random_grayscale(images, apply):
    return torch.where(apply.view(-1, 1, 1, 1), grayscale(images).expand_as(images), images)


def blur_kernel_size(max_sigma):
    """An odd kernel reaching 3 sigma of the largest sigma (where the Gaussian is ~1%)."""
    return 2 * math.ceil(3 * max_sigma) + 1


def gaussian_blur(images, apply, sigma, kernel_size):
    """Separable Gaussian with each image's own sigma, reflect padding (torchvision's), kept
    where ``apply``: the whole batch is convolved (picking the images would be a host sync)."""
    half = kernel_size // 2
    offsets = torch.arange(-half, half + 1, device=images.device, dtype=images.dtype)
    sigma = sigma.to(images.dtype).view(-1, 1)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(images.shape[1], 0)
    count, channels, height, width = images.shape
    flat = nnf.pad(images.reshape(1, count * channels, height, width), [half] * 4, "reflect")
    flat = nnf.conv2d(flat, kernel.view(-1, 1, 1, kernel_size), groups=count * channels)
    flat = nnf.conv2d(flat, kernel.view(-1, 1, kernel_size, 1), groups=count * channels)
    return torch.where(apply.view(-1, 1, 1, 1), flat.view_as(images), images)


def random_flip(images, apply):
    return torch.where(apply.view(-1, 1, 1, 1), images.flip(-1), images)


def normalize(images, mean, std):
    """Per channel with Python numbers (a tensor of them would be a host-to-device copy)."""
    channels = images.unbind(1)
    mean, std = (list(v) * (len(channels) // len(v)) for v in (mean, std))  # grey: one value
    return torch.stack([(c - m) / s for c, m, s in zip(channels, mean, std)], dim=1)


class BatchAugment:
    """Views of a batch of canvases (B, 3, H, W) uint8 or float [0, 1], on their device.

    ``sizes`` (B, 2) gives the part of each canvas holding the image (top-left aligned); the
    crops are drawn within it, so the canvas padding never enters a view.
    """

    def __init__(self, spec, antialias=True):
        self.spec = spec
        self.antialias = antialias
        self.kernel_size = blur_kernel_size(spec.blur_sigma[1])

    def apply(self, images, params):
        spec = self.spec
        params = params.to(images.device)
        out = resized_crop(images, params.boxes, spec.image_size, self.antialias)
        if spec.gray_before_jitter:
            out = random_grayscale(out, params.gray)
        out = color_jitter(out, params.jitter, params.factors, params.order)
        if not spec.gray_before_jitter:
            out = random_grayscale(out, params.gray)
        if spec.blur_p > 0:  # a config choice, known on the host: no blur kernels at all
            out = gaussian_blur(out, params.blur, params.sigma, self.kernel_size)
        return normalize(random_flip(out, params.flip), spec.mean, spec.std)

    def __call__(self, images, sizes, views=2, generator=None):
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        sizes = sizes.to(images.device, non_blocking=True)  # parameters are drawn there
        return [self.apply(images, sample_view(self.spec, sizes, generator)) for _ in range(views)]


class ToCanvas:
    """Loader-side transform for ``augment_on: gpu``: PIL image -> (uint8 canvas, size).

    The image is shrunk (aspect kept) only if its longer side exceeds ``canvas``, then placed
    top-left on a ``canvas`` x ``canvas`` zero tensor so that a batch stacks; the returned
    (height, width) tells ``BatchAugment`` where the image is.
    """

    def __init__(self, canvas):
        self.canvas = canvas

    def __call__(self, image):
        from torchvision.transforms.v2 import functional as tvf  # loader workers only

        longer = max(image.size)
        if longer > self.canvas:
            width, height = image.size
            image = image.resize(
                (
                    max(1, round(width * self.canvas / longer)),
                    max(1, round(height * self.canvas / longer)),
                ),
                resample=2,  # PIL bilinear, antialiased as the CPU pipeline's resize
            )
        pixels = tvf.pil_to_tensor(image)
        out = torch.zeros(3, self.canvas, self.canvas, dtype=torch.uint8)
        out[:, : pixels.shape[1], : pixels.shape[2]] = pixels
        return out, torch.tensor(pixels.shape[1:], dtype=torch.long)


AUGMENT_ON = ("cpu", "gpu")


def canvas_size(source_name, native_size, image_size):
    """The loader's canvas side: a fixed-size dataset's own size; for image folders twice
    the view size, so that typical photos (ImageNet's ~400 x 350) are cropped unshrunk."""
    return 2 * image_size if source_name == "imagefolder" else native_size


class DeviceViews:
    """The trainer's step input with ``data.augment_on: gpu``: the loader's ``[canvases,
    sizes]`` (``collate_views`` of ``ToCanvas`` items) -> ``count`` augmented views on
    ``device``. Parameters are drawn on ``device`` from its default generator, which the
    trainer seeds per epoch (``torch.manual_seed`` seeds every device), so a resumed run draws
    what the uninterrupted one did, and no parameter is copied from the host."""

    def __init__(self, method, image_size, mean, std, crop_min_scale, count):
        self.augment = BatchAugment(spec_for(method, image_size, mean, std, crop_min_scale))
        self.count = count

    def bind(self, device, memory_format=torch.preserve_format):
        """``views -> device views`` for callers that step with fixed device and format."""
        return lambda loader_views: self(loader_views, device, memory_format)

    def __call__(self, loader_views, device, memory_format=torch.preserve_format):
        canvases, sizes = loader_views
        canvases = canvases.to(device, non_blocking=True)
        views = self.augment(canvases, sizes, views=self.count)
        return [view.contiguous(memory_format=memory_format) for view in views]


def check_augment_on(value, method):
    """A bad ``data.augment_on`` (or a method it cannot serve) as a one-line error."""
    if value not in AUGMENT_ON:
        raise PretrainError(f"data.augment_on must be cpu or gpu, got '{value}'")
    if value == "gpu":
        spec_for(method, 32, (0.5,) * 3, (0.25,) * 3)  # raises for methods it cannot serve
