#!/bin/sh
# The exact command behind results.csv / results.md / results.json / accuracy.png / memory.png.
# Run from the repository root; run it again to resume (finished runs are skipped).
# It ran on CPU, one thread (2 cores shared with other jobs), about 2.2 min per run.
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 leanspike design-space \
  --preset ttl-emnist-lenet1 --dataset fashion-mnist --data-root /usr/share/datasets/fashion-mnist \
  --set data.options={} --set tensorboard=false --set data.test_batch_size=1000 \
  --optimizer adam --lr 0.001 --batch-size 32 --epochs 1 --max-batches 120 \
  --ks 20,10,5,2,1 --ns 4,2,1 --classifiers trainable,random \
  --out runs/ttl-fashion-lenet1 --no-progress
# then: cp runs/ttl-fashion-lenet1/results.* runs/ttl-fashion-lenet1/*.png docs/results/ttl_fashion_mnist_lenet1/
