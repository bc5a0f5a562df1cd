#!/bin/sh
# The exact command behind results.csv / results.md / results.json / accuracy.png / memory.png.
# Run from the repository root; run it again to resume (finished runs are skipped).
# It ran on CPU, one thread (the other core busy with other benchmarks), 2-3 min per run, about
# 70 min for the 25 trained runs, with the library of commit 0bf5c76 (local blocks go back one at a time).
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 leanspike design-space \
  --preset ttl-emnist-lenet1 --dataset fashion-mnist --data-root /usr/share/datasets/fashion-mnist \
  --set data.options={} --set tensorboard=false --set data.test_batch_size=1000 \
  --optimizer adam --lr 0.001 --batch-size 128 --epochs 1 --max-batches 235 \
  --ks 20,10,5,2,1 --ns 4,2,1 --classifiers trainable,random \
  --out runs/ttl-fashion-lenet1-v2 --no-progress
# then: cp runs/ttl-fashion-lenet1-v2/results.* runs/ttl-fashion-lenet1-v2/*.png runs/ttl-fashion-lenet1-v2/design_space.json docs/results/ttl_fashion_mnist_lenet1/
