"""The held-out images of train-vae: how many, and the PSNR reported on them."""

import math

import torch

from spherear.train.held_out import held_out_count, psnr


def test_held_out_share_is_a_tenth_of_the_data_between_8_and_100_images():
    assert [held_out_count(n) for n in (48, 500, 5000, 1_281_167)] == [8, 50, 100, 100]


def test_psnr_counts_the_quantised_levels_saved_images_differ_by():
    gray = torch.zeros(2, 3, 4, 4)
    assert psnr(gray, gray + 0.001) == math.inf  # the same uint8 image once saved
    one_level = gray + 1 / 127.5  # every pixel one uint8 level brighter: MSE 1
    assert psnr(gray, one_level) == 10 * math.log10(255**2)
    quarter = gray.clone()
    quarter[:, :, :2, :2] = 2 / 127.5  # a quarter of the pixels two levels off: MSE 1
    assert psnr(gray, quarter) == 10 * math.log10(255**2)
