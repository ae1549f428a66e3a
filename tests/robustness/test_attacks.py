"""FGSM and PGD: pixel-space budget and clamp, the exact optimum on a linear model, and the same
adversarial images as torchattacks."""
import pytest
import torch

from ltpa.robustness import PixelClassifier, attack_accuracy, fgsm, pgd, pixel_preprocess

from robustness_helpers import linear_trained

# mean/std chosen so that normalised values lie far outside [0, 1]: a clamp at the normalised
# scale would show up as a wrong answer below.
MEAN, STD = (0.5, 0.5, 0.5), (0.1, 0.05, 0.2)


def _linear_case(seed=0, n=16):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 8, 8, generator=generator)
    trained = linear_trained(weight, mean=MEAN, std=STD)
    pixels = 0.3 + 0.4 * torch.rand(n, 3, 8, 8, generator=generator)  # inside [0.3, 0.7]: no pixel clamp
    targets = torch.randint(0, 2, (n,), generator=generator)
    return trained, PixelClassifier(trained.model, pixel_preprocess(trained)), pixels, targets, weight


def test_pixel_preprocess_matches_the_runs_preparation(tiny, tiny_zca, batch):
    images, _ = batch
    for trained in (tiny, tiny_zca):
        expected = trained.prepare(images)
        got = pixel_preprocess(trained)(images.float() / 255.0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the ZCA run is really whitened (not mean/std): the two preprocessings differ
    assert not torch.allclose(pixel_preprocess(tiny_zca)(images.float() / 255), tiny.prepare(images), atol=1e-2)


def test_fgsm_is_the_exact_worst_case_of_a_linear_model():
    trained, classifier, pixels, targets, weight = _linear_case()
    eps = 4 / 255
    adversarial = fgsm(classifier, pixels, targets, eps)
    # For s = <w / std, x> + c, the L-inf worst case moves every pixel by eps against the true class:
    # x' = x - eps * sign(w) for class 0 and x + eps * sign(w) for class 1, never clamped at the
    # normalised scale (normalised values here span [-4, 4]).
    direction = torch.where(targets == 0, -1.0, 1.0).view(-1, 1, 1, 1)
    expected = pixels + eps * direction * weight.sign()
    torch.testing.assert_close(adversarial, expected, rtol=0, atol=1e-6)
    pixel_weight = weight / torch.tensor(STD).view(3, 1, 1)
    drop = eps * pixel_weight.abs().sum()
    scores = classifier(pixels)[:, 0]
    torch.testing.assert_close(classifier(adversarial)[:, 0], scores + direction.flatten() * drop,
                               rtol=1e-4, atol=1e-4)


def test_pgd_reaches_the_same_vertex_on_a_linear_model():
    _, classifier, pixels, targets, _ = _linear_case(seed=1)
    eps = 8 / 255
    optimum = fgsm(classifier, pixels, targets, eps)
    generator = torch.Generator().manual_seed(0)
    # 10 steps of 2.5 * eps / 10 reach the ball's border from any random start and stay there
    found = pgd(classifier, pixels, targets, eps, steps=10, generator=generator)
    torch.testing.assert_close(found, optimum, rtol=0, atol=1e-6)


def test_attacks_stay_in_the_pixel_box_and_the_eps_ball(tiny, batch):
    images, targets = batch
    images = images.clone()
    images[:, :, :4] = 0  # saturated pixels: the [0, 1] clamp must act in pixel space
    images[:, :, 4:8] = 255
    classifier = PixelClassifier(tiny.model, pixel_preprocess(tiny)).eval()
    pixels = images.float() / 255
    eps = 8 / 255
    for adversarial in (fgsm(classifier, pixels, targets, eps),
                        pgd(classifier, pixels, targets, eps, steps=3, generator=torch.Generator().manual_seed(0))):
        assert adversarial.min() >= 0 and adversarial.max() <= 1
        assert (adversarial - pixels).abs().max() <= eps + 1e-6
        assert (adversarial - pixels).abs().max() >= eps - 1e-6  # the budget is used
    assert torch.equal(pixels, images.float() / 255)  # the caller's tensor is untouched


def test_pgd_random_start_is_reproducible_with_a_generator(tiny, batch):
    images, targets = batch
    classifier = PixelClassifier(tiny.model, pixel_preprocess(tiny)).eval()
    pixels = images.float() / 255

    def run(seed):
        return pgd(classifier, pixels, targets, 4 / 255, steps=2, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


@pytest.mark.parametrize("call, error, text", [
    (lambda c, x, y: fgsm(c, x, y, 8.0), ValueError, "eps"),
    (lambda c, x, y: fgsm(c, (x * 255).to(torch.uint8), y, 0.1), TypeError, "float"),
    (lambda c, x, y: pgd(c, x, y, 0.1, steps=0), ValueError, "steps"),
    (lambda c, x, y: fgsm(c, x, y[:3], 0.1), ValueError, "targets"),
])
def test_attack_input_errors_say_what_to_fix(call, error, text):
    _, classifier, pixels, targets, _ = _linear_case()
    with pytest.raises(error, match=text):
        call(classifier, pixels, targets)


@pytest.fixture(scope="module")
def torchattacks():
    return pytest.importorskip("torchattacks", reason="torchattacks is a test extra: pip install -e .[test]")


@pytest.mark.parametrize("which", ["tiny", "tiny_zca"])
@pytest.mark.parametrize("attack, random_start", [("fgsm", False), ("pgd", False), ("pgd", True)])
def test_adversarial_images_and_accuracy_match_torchattacks(torchattacks, request, which, attack, random_start,
                                                            batch):
    trained = request.getfixturevalue(which)
    images, targets = batch
    pixels = images.float() / 255
    classifier = PixelClassifier(trained.model, pixel_preprocess(trained)).eval()
    eps, steps, alpha, seed = 8 / 255, 4, 2 / 255, 7
    if attack == "fgsm":
        ours = fgsm(classifier, pixels, targets, eps)
        theirs = torchattacks.FGSM(classifier, eps=eps)(pixels, targets)
    else:
        ours = pgd(classifier, pixels, targets, eps, steps=steps, step_size=alpha, random_start=random_start,
                   generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)  # torchattacks draws its random start from the global generator
        theirs = torchattacks.PGD(classifier, eps=eps, alpha=alpha, steps=steps, random_start=random_start)(
            pixels, targets)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    with torch.no_grad():
        their_correct = int((classifier(theirs).argmax(1) == targets).sum())
    curve = attack_accuracy(trained, images, targets, attack=attack, eps=[eps], steps=steps, step_size=alpha,
                            random_start=random_start, seed=seed, batch_size=len(images))
    assert curve.correct[1] == their_correct
