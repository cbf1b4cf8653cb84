"""Batched device augmentation: same distributions as the CPU pipeline, same ops as torchvision.

Statistical checks use fixed seeds and tolerances a wrong sampler fails by far (scale drawn
on the side instead of the area, uniform instead of log-uniform ratio, a fixed jitter order,
swapped probabilities); the op checks compare with ``torchvision.transforms.v2.functional``.
"""

import itertools
import math

import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from pretrain import data, gpu_augment
from pretrain.errors import PretrainError
from pretrain.gpu_augment import BatchAugment, ToCanvas, sample_view, spec_for

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DRAWS = 8000


def cpu_steps(method, image_size):
    """The CPU Compose's steps, RandomApply unwrapped into (probability, transform)."""
    steps = {}
    for step in data.augmentation(method, image_size, MEAN, STD).transforms:
        if isinstance(step, T.RandomApply):
            steps[type(step.transforms[0]).__name__] = (step.p, step.transforms[0])
        else:
            steps[type(step).__name__] = (getattr(step, "p", 1.0), step)
    return steps


@pytest.mark.parametrize(
    "method,size", [("moco", 224), ("simclr", 96), ("moco", 32), ("ir", 32), ("supervised", 32)]
)
def test_spec_reads_the_cpu_pipelines_parameters(method, size):
    spec, steps = spec_for(method, size, MEAN, STD), cpu_steps(method, size)
    crop = steps["RandomResizedCrop"][1]
    assert (spec.image_size, spec.crop_scale, spec.crop_ratio) == (size, crop.scale, crop.ratio)
    jitter_p, jitter = steps["ColorJitter"]
    assert spec.jitter_p == jitter_p
    assert tuple(jitter.brightness) == (1 - spec.jitter[0], 1 + spec.jitter[0])
    assert tuple(jitter.contrast) == (1 - spec.jitter[1], 1 + spec.jitter[1])
    assert tuple(jitter.saturation) == (1 - spec.jitter[2], 1 + spec.jitter[2])
    assert tuple(jitter.hue) == (-spec.jitter[3], spec.jitter[3])
    assert spec.gray_p == steps["RandomGrayscale"][0]
    assert spec.flip_p == steps["RandomHorizontalFlip"][0]
    names = list(steps)
    assert spec.gray_before_jitter == (names.index("RandomGrayscale") < names.index("ColorJitter"))
    blur_p, blur = steps.get("RandomGaussianBlur", (0.0, None))
    assert spec.blur_p == blur_p
    if blur is not None:
        assert spec.blur_sigma == blur.sigma


def test_cmc_is_refused_with_the_fix():
    with pytest.raises(PretrainError, match="augment_on: cpu"):
        spec_for("cmc", 224, MEAN, STD)


def sampled_boxes(height, width, generator_seed=0):
    spec = spec_for("moco", 224, MEAN, STD)
    sizes = torch.tensor([[height, width]]).repeat(DRAWS, 1)
    generator = torch.Generator().manual_seed(generator_seed)
    return sample_view(spec, sizes, generator).boxes


def reference_boxes(height, width):
    torch.manual_seed(1)
    image = torch.zeros(1, height, width)
    crop = T.RandomResizedCrop(224, scale=(0.2, 1.0))
    return torch.tensor(
        [crop.get_params(image, crop.scale, crop.ratio) for _ in range(DRAWS)], dtype=torch.float64
    )


def box_statistics(boxes, height, width):
    top, left, crop_h, crop_w = boxes.unbind(1)
    return {
        "scale": crop_h * crop_w / (height * width),
        "log_ratio": torch.log(crop_w / crop_h),
        "top": top / (height - crop_h + 1),
        "left": left / (width - crop_w + 1),
    }


@pytest.mark.parametrize("height,width", [(120, 160), (40, 300)])
def test_crop_boxes_follow_random_resized_crop(height, width):
    ours = box_statistics(sampled_boxes(height, width), height, width)
    theirs = box_statistics(reference_boxes(height, width), height, width)
    for name in ours:
        result = stats.ks_2samp(ours[name].numpy(), theirs[name].numpy())
        assert result.pvalue > 1e-3, (name, result)
    boxes = sampled_boxes(height, width)
    assert (boxes[:, 0] + boxes[:, 2] <= height).all() and (
        boxes[:, 1] + boxes[:, 3] <= width
    ).all()


def test_crop_fallback_is_torchvisions_centre_crop():
    # a 4 x 400 image: no candidate box fits, torchvision falls back to a centred crop
    boxes = sampled_boxes(4, 400)
    expected = torch.tensor(
        T.RandomResizedCrop.get_params(torch.zeros(1, 4, 400), (0.2, 1.0), (3 / 4, 4 / 3))
    )
    assert torch.equal(boxes[0], expected.double())
    assert (boxes == boxes[0]).all()


def assert_rate(flags, expected):
    """A Bernoulli rate within 5 standard errors (a swapped probability is 30+ away)."""
    rate = flags.double().mean().item()
    tolerance = 5 * math.sqrt(expected * (1 - expected) / len(flags))
    assert abs(rate - expected) <= max(tolerance, 1e-12), (rate, expected)


@pytest.mark.parametrize("method,size", [("moco", 224), ("ir", 32)])
def test_switches_and_factors_follow_the_cpu_probabilities(method, size):
    spec = spec_for(method, size, MEAN, STD)
    sizes = torch.tensor([[size, size]]).repeat(DRAWS, 1)
    params = sample_view(spec, sizes, torch.Generator().manual_seed(3))
    for flags, expected in (
        (params.jitter, spec.jitter_p),
        (params.gray, spec.gray_p),
        (params.blur, spec.blur_p),
        (params.flip, spec.flip_p),
    ):
        assert_rate(flags, expected)
    lows = [1 - s for s in spec.jitter[:3]] + [-spec.jitter[3]]
    highs = [1 + s for s in spec.jitter[:3]] + [spec.jitter[3]]
    for column, (low, high) in enumerate(zip(lows, highs)):
        result = stats.kstest(params.factors[:, column].numpy(), "uniform", (low, high - low))
        assert result.pvalue > 1e-3, (column, result)
    sigma = params.sigma.numpy()
    assert stats.kstest(sigma, "uniform", (0.1, 1.9)).pvalue > 1e-3


def test_jitter_order_is_a_uniform_random_permutation():
    spec = spec_for("moco", 64, MEAN, STD)
    params = sample_view(spec, torch.tensor([[64, 64]]).repeat(DRAWS, 1), torch.Generator())
    permutations = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    counts = torch.zeros(24)
    for row in params.order.tolist():
        counts[permutations[tuple(row)]] += 1
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3


@pytest.fixture
def images():
    return torch.rand(6, 3, 48, 56, generator=torch.Generator().manual_seed(5))


@pytest.fixture
def factors():
    return torch.tensor([0.6, 0.9, 1.0, 1.2, 1.4, 0.75], dtype=torch.float64)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (gpu_augment.adjust_brightness, F.adjust_brightness),
        (gpu_augment.adjust_contrast, F.adjust_contrast),
        (gpu_augment.adjust_saturation, F.adjust_saturation),
    ],
)
def test_blend_adjustments_equal_torchvision(images, factors, ours, theirs):
    out = ours(images, factors)
    for image, factor, result in zip(images, factors.tolist(), out):
        torch.testing.assert_close(result, theirs(image, factor), atol=1e-4, rtol=0)


def test_hue_equals_torchvision(images):
    shifts = torch.tensor([-0.5, -0.1, 0.0, 0.03, 0.1, 0.4])
    images[0, :, :4] = 0.5  # grey pixels: zero chroma
    for image, shift, result in zip(
        images, shifts.tolist(), gpu_augment.adjust_hue(images, shifts)
    ):
        torch.testing.assert_close(result, F.adjust_hue(image, shift), atol=1e-5, rtol=0)


@pytest.mark.parametrize("antialias", [True, False])
def test_resized_crop_equals_torchvision(images, antialias):
    # shrinking (48 x 50 -> 16), enlarging (10 x 12 -> 16) and thin crops
    boxes = torch.tensor(
        [
            [0, 0, 48, 50],
            [3, 5, 10, 12],
            [20, 1, 28, 9],
            [0, 40, 7, 16],
            [11, 11, 30, 30],
            [47, 55, 1, 1],
        ]
    )
    out = gpu_augment.resized_crop(images, boxes, 16, antialias)
    for image, box, result in zip(images, boxes.tolist(), out):
        expected = F.resized_crop(image, *box, [16, 16], antialias=antialias)
        torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)


def test_blur_grayscale_flip_equal_torchvision(images):
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7])
    chosen = torch.tensor([True, True, False, True, True, False])
    size = gpu_augment.blur_kernel_size(2.0)
    blurred = gpu_augment.gaussian_blur(images, chosen, sigma, size)
    grey = gpu_augment.random_grayscale(images, chosen)
    flipped = gpu_augment.random_flip(images, chosen)
    for i, image in enumerate(images):
        if not chosen[i]:
            for out in (blurred, grey, flipped):
                assert torch.equal(out[i], image)
            continue
        expected = F.gaussian_blur(image, [size, size], [sigma[i].item()] * 2)
        torch.testing.assert_close(blurred[i], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(grey[i], F.rgb_to_grayscale(image, 3), atol=1e-5, rtol=0)
        assert torch.equal(flipped[i], F.horizontal_flip(image))


def torchvision_view(image, params, index, spec):
    """One image's view by torchvision's functional ops, in the CPU pipeline's order."""
    top, left, height, width = params.boxes[index].long().tolist()
    out = F.resized_crop(image, top, left, height, width, [spec.image_size] * 2, antialias=True)

    def grey(x):
        return F.rgb_to_grayscale(x, 3) if params.gray[index] else x

    out = grey(out) if spec.gray_before_jitter else out
    if params.jitter[index]:
        ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
        for op_index in params.order[index].tolist():
            out = ops[op_index](out, params.factors[index, op_index].item())
    out = out if spec.gray_before_jitter else grey(out)
    if params.blur[index]:
        size = gpu_augment.blur_kernel_size(spec.blur_sigma[1])
        out = F.gaussian_blur(out, [size, size], [params.sigma[index].item()] * 2)
    if params.flip[index]:
        out = F.horizontal_flip(out)
    return F.normalize(out, list(spec.mean), list(spec.std))


@pytest.mark.parametrize("method", ["moco", "ir"])
def test_whole_view_equals_torchvision_ops_on_the_same_parameters(method):
    spec = spec_for(method, 64, MEAN, STD)
    canvases = torch.rand(16, 3, 80, 80, generator=torch.Generator().manual_seed(7))
    sizes = torch.tensor([[80, 80], [60, 80], [80, 45], [33, 70]]).repeat(4, 1)
    params = sample_view(spec, sizes, torch.Generator().manual_seed(8))
    out = BatchAugment(spec).apply(canvases, params)
    for index in range(len(canvases)):
        expected = torchvision_view(canvases[index], params, index, spec)
        torch.testing.assert_close(out[index], expected, atol=2e-4, rtol=0)


def test_views_never_see_the_canvas_padding():
    # jitter off: its clamping to [0, 1] would hide a leak of the huge padding value
    spec = spec_for("simclr", 32, (0.0,) * 3, (1.0,) * 3)
    spec = gpu_augment.AugmentSpec(**{**spec.__dict__, "jitter_p": 0.0})
    canvases = torch.full((32, 3, 64, 64), 1e6)
    sizes = torch.randint(8, 65, (32, 2), generator=torch.Generator().manual_seed(2))
    for index, (height, width) in enumerate(sizes.tolist()):
        canvases[index, :, :height, :width] = torch.rand(3, height, width)
    views = BatchAugment(spec)(canvases, sizes, views=2, generator=torch.Generator())
    assert len(views) == 2 and views[0].shape == (32, 3, 32, 32)
    assert all(view.min() >= 0 and view.max() <= 1 + 1e-5 for view in views)
    assert not torch.equal(views[0], views[1])


def test_uint8_canvases_are_scaled_to_unit_range():
    spec = spec_for("moco", 32, (0.0,) * 3, (1.0,) * 3)
    spec = gpu_augment.AugmentSpec(**{**spec.__dict__, "jitter_p": 0.0, "gray_p": 0.0})
    canvases = torch.full((4, 3, 40, 40), 255, dtype=torch.uint8)
    views = BatchAugment(spec)(canvases, torch.tensor([[40, 40]] * 4), views=1)
    torch.testing.assert_close(views[0], torch.ones(4, 3, 32, 32))


def test_to_canvas_shrinks_large_images_and_keeps_small_ones():
    large = Image.new("RGB", (300, 150), (10, 20, 30))
    canvas, size = ToCanvas(100)(large)
    assert canvas.shape == (3, 100, 100) and canvas.dtype == torch.uint8
    assert size.tolist() == [50, 100]
    assert canvas[:, :50, :100].float().mean(dim=(1, 2)).round().tolist() == [10, 20, 30]
    assert canvas[:, 50:].sum() == 0
    small, small_size = ToCanvas(100)(Image.new("RGB", (28, 28), (1, 2, 3)))
    assert small_size.tolist() == [28, 28] and small[:, :28, :28].sum() == 28 * 28 * 6


def test_device_views_turn_a_collated_canvas_batch_into_views():
    items = [ToCanvas(40)(Image.new("RGB", (w, 30), (w, 5, 9))) for w in (20, 40, 33)]
    collated, _, _ = data.collate_views([(item, 0, i) for i, item in enumerate(items)])
    assert collated[0].shape == (3, 3, 40, 40) and collated[1].tolist() == [
        [30, 20],
        [30, 40],
        [30, 33],
    ]
    views = gpu_augment.DeviceViews("moco", 24, MEAN, STD, 0.2, count=2)(
        collated, torch.device("cpu")
    )
    assert len(views) == 2 and all(view.shape == (3, 3, 24, 24) for view in views)
    torch.manual_seed(4)
    first = gpu_augment.DeviceViews("moco", 24, MEAN, STD, 0.2, count=2)(
        collated, torch.device("cpu")
    )
    torch.manual_seed(4)
    again = gpu_augment.DeviceViews("moco", 24, MEAN, STD, 0.2, count=2)(
        collated, torch.device("cpu")
    )
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # the trainer's seeding replays


def test_augment_on_is_checked_with_the_fix():
    gpu_augment.check_augment_on("cpu", "cmc")
    gpu_augment.check_augment_on("gpu", "simclr")
    with pytest.raises(PretrainError, match="must be cpu or gpu, got 'cuda'"):
        gpu_augment.check_augment_on("cuda", "moco")
    with pytest.raises(PretrainError, match="method 'cmc'"):
        gpu_augment.check_augment_on("gpu", "cmc")
    assert gpu_augment.canvas_size("imagefolder", 224, 224) == 448
    assert gpu_augment.canvas_size("fashion_mnist", 28, 64) == 28


def tiny_run(tmp_path, augment_on, method="moco"):
    from pretrain.trainer import train

    return train(
        {
            "method": method,
            "output_dir": str(tmp_path / augment_on),
            "device": "cpu",
            "model": {"arch": "resnet18", "width": 0.125, "stem": "cifar"},
            "moco": {"queue_size": 16},
            "data": {
                "name": "synthetic",
                "augment_on": augment_on,
                "num_workers": 0,
                "synthetic": {"image_size": 16, "train_count": 16, "test_count": 8},
            },
            "optim": {"batch_size": 8, "epochs": 1},
            "train": {"progress": False, "tensorboard": False},
            "knn": {"every_epochs": 0, "k": 2, "train_subset": 8, "test_subset": 8},
        }
    )


@pytest.mark.parametrize("method", ["moco", "simclr"])
def test_trainer_runs_with_augmentation_on_the_device(tmp_path, method):
    result = tiny_run(tmp_path, "gpu", method)
    assert result["global_step"] == 2 and math.isfinite(result["loss"])


def test_trainer_refuses_a_bad_augment_on_before_writing(tmp_path):
    with pytest.raises(PretrainError, match="data.augment_on must be cpu or gpu"):
        tiny_run(tmp_path, "tpu")
    assert not (tmp_path / "tpu").exists()
