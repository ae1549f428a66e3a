from pathlib import Path

import pytest
import torch

from ltpa.data.sources import DataSpec, Split, describe, load_data, parse_data_spec


@pytest.mark.parametrize("text, expected", [
    ("synthetic", DataSpec("synthetic", None, {})),
    ("cifar100:/data/cifar", DataSpec("cifar100", Path("/data/cifar"), {})),
    ("cub:/data/CUB_200_2011,classes=1-10", DataSpec("cub", Path("/data/CUB_200_2011"), {"classes": "1-10"})),
    ("svhn:/data,extra=true", DataSpec("svhn", Path("/data"), {"extra": "true"})),
    ("synthetic:num_classes=5,image_size=64", DataSpec("synthetic", None, {"num_classes": "5", "image_size": "64"})),
    ("synthetic,num_classes=5", DataSpec("synthetic", None, {"num_classes": "5"})),
    ("CIFAR10:/a/b=c", DataSpec("cifar10", Path("/a/b=c"), {})),  # '/a/b' is no identifier: a root
    ("folder:rel/photos,test_fraction=0.3,seed=2",
     DataSpec("folder", Path("rel/photos"), {"test_fraction": "0.3", "seed": "2"})),
])
def test_parse_data_spec_reads_name_root_and_options(text, expected):
    assert parse_data_spec(text) == expected


def test_parse_data_spec_passes_a_dataspec_through():
    spec = DataSpec("cub", Path("/x"), {"classes": "all"})
    assert parse_data_spec(spec) is spec


def test_unknown_source_suggests_the_closest_name():
    with pytest.raises(ValueError, match="Did you mean cifar100"):
        parse_data_spec("cifar1000:/data")


@pytest.mark.parametrize("text, message", [
    ("cub:/data,classes=all,classes=present", "given twice"),
    ("cub:/data,oops", "key=value"),
])
def test_malformed_specs_raise_with_a_hint(text, message):
    with pytest.raises(ValueError, match=message):
        parse_data_spec(text)


def test_real_sources_need_a_root():
    with pytest.raises(ValueError, match="needs a data root"):
        load_data("cifar10")


def test_unknown_option_lists_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match="allowed: extra"):
        load_data(f"svhn:{tmp_path},extras=true")


def test_missing_files_give_one_error_with_path_url_and_download_hint(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_data(f"cifar10:{tmp_path}")
    text = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in text
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in text
    assert "pass download=True" in text and "--download" not in text  # library terms
    assert "pass --download" in info.value.render(cli=True)  # what `ltpa` prints


def test_synthetic_spec_options_override_caller_defaults():
    source = load_data("synthetic:num_classes=3,num_train=12,num_test=6",
                       synthetic_options={"num_classes": 10, "image_size": 16})
    assert source.num_classes == 3 and len(source.train) == 12 and len(source.test) == 6
    assert source.train.images.shape == (12, 3, 16, 16)
    assert source.train.masks.shape == (12, 16, 16) and source.train.part_names == ("head", "tail")
    assert source.root is None and source.warnings == []


def test_synthetic_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown option"):
        load_data("synthetic:num_clases=3")


def test_describe_reports_counts_sizes_annotations_and_warnings():
    source = load_data("synthetic:num_classes=2,num_train=10,num_test=4,image_size=16")
    source.warnings.append("something odd")
    text = describe(source)
    assert "train: 10 images; per class min 5 / median 5 / max 5, 2 of 2 classes present" in text
    assert "3x16x16" in text and "bounding boxes" in text and "2 parts (head, tail" in text
    assert "something odd" in text


def test_describe_gives_file_size_statistics():
    split = Split(torch.tensor([0, 1, 1]), files=[Path("a"), Path("b"), Path("c")],
                  sizes=torch.tensor([[10, 20], [30, 40], [50, 60]]), name="train")
    from ltpa.data.sources import DataSource

    text = describe(DataSource("folder", Path("/x"), ("a", "b"), split, split.select(torch.tensor([0]))))
    assert "height min/median/max 10/30/50 px, width 20/40/60 px" in text
    assert "1 of 2 classes present" in text


def test_split_checks_lengths_and_select_keeps_fields_aligned():
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    split = Split(torch.tensor([0, 1, 0, 1]), images=images, boxes=torch.arange(16.0).view(4, 4), name="train")
    sub = split.select(torch.tensor([True, False, False, True]))
    assert len(sub) == 2 and sub.images[:, 0, 0, 0].tolist() == [0, 3] and sub.boxes[1, 0] == 12
    assert split.select(torch.tensor([2])).targets.tolist() == [0]
    with pytest.raises(ValueError, match="boxes has 3 entries"):
        Split(torch.tensor([0, 1, 0, 1]), images=images, boxes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="exactly one of images"):
        Split(torch.tensor([0]))


def test_synthetic_distractor_range_from_a_spec():
    source = load_data("synthetic:num_train=4,num_test=2,num_distractors=0-1,image_size=16")
    assert len(source.train) == 4
    with pytest.raises(ValueError, match="lo-hi"):
        load_data("synthetic:num_distractors=a-b")
