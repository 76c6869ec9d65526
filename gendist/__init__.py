"""gendist: distributed training of deep generative models (VAEs, GANs) on Accelerate and DeepSpeed."""
