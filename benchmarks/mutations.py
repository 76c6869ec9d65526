"""Mutation check of the test suite: inject a known bug, run the tests meant to catch it, expect a failure,
restore the file. Every mutation must make at least one of its tests fail; the table this prints is the one
in benchmarks/RESULTS.md ("Tests that fail when a feature breaks").

    python benchmarks/mutations.py                 # all mutations
    python benchmarks/mutations.py --only ema_not_restored missing_grad_accum_division

Files are restored even when interrupted (try/finally); the files it mutates must have no uncommitted changes
(it refuses otherwise).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str  # the bug, in words
    path: str
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids / -k expressions that must fail


MUTATIONS = [
    Mutation("compiled_double_backward", "train.compile runs R1's double backward through compiled graphs",
             "gendist/engine/trainer.py",
             "        with maybe_eager(self.compile_watch is not None and runs_eager(phase)):",
             "        with maybe_eager(False):",
             ("tests/test_compile.py::test_compiled_training_matches_eager_and_compiles_nothing_after_the_first_step",)),
    Mutation("fsdp_compiled_across_hooks", "train.compile under FSDP2 compiles each network whole, across the "
             "parameter groups' all-gather hooks", "gendist/engine/compiled.py",
             "    if not any(isinstance(module, FSDPModule) for module in network.modules()):",
             "    if True:",
             ("tests/test_strategies.py::test_two_ranks_match_one_rank_with_double_batch[fsdp-stylegan2_compiled_sgd]",)),
    Mutation("compiled_sampling", "train.compile also compiles sampling (recompiles at every sample grid)",
             "gendist/engine/trainer.py", "                    maybe_eager(self.compile_watch is not None):",
             "                    maybe_eager(False):",
             ("tests/test_compile.py::test_compiled_training_matches_eager_and_compiles_nothing_after_the_first_step",)),
    Mutation("compiled_spectral_norm_update_lost", "compiled discriminators skip spectral norm's power iteration",
             "gendist/nets/registry.py", "        if self.training:\n            with torch.no_grad():\n                detached",
             "        if self.training and not torch.compiler.is_compiling():\n            with torch.no_grad():\n                detached",
             ("tests/test_compile.py::test_compiled_training_matches_eager_and_compiles_nothing_after_the_first_step",)),
    Mutation("spectral_norm_updates_in_place", "spectral norm updates its vectors in place (torch's way)",
             "gendist/nets/registry.py", "        self._u = torch.where(changed, u, self._u)",
             "        self._u.copy_(torch.where(changed, u, self._u))",
             ("tests/test_compile.py::test_compiled_training_matches_eager_and_compiles_nothing_after_the_first_step",)),
    Mutation("vae_budget_counts_calls", "vae.eval_budget counts decoder calls, not decoded values",
             "gendist/recipes/vae_eval.py",
             "    return max(1, budget // (BLOCK_ROWS * max(1, math.prod(x.shape[1:]))))",
             "    return max(1, budget // BLOCK_ROWS // 64)",
             ("tests/test_vae_toolbox.py::test_a_likelihood_block_holds_the_budget_in_decoded_values_at_every_image_size",)),
    Mutation("compile_error_raw", "a torch.compile failure surfaces as dynamo's own error",
             "gendist/engine/compiled.py", "        except errors as error:", "        except KeyError as error:",
             ("tests/test_compile.py::test_a_network_torch_compile_cannot_trace_stops_with_one_line_naming_it",)),
    Mutation("channels_last_batches_not_converted", "train.channels_last converts the weights but not the batches",
             "gendist/engine/trainer.py", "        if self.channels_last:\n            x = x.contiguous",
             "        if False:\n            x = x.contiguous",
             ("tests/test_compile.py::test_channels_last_converts_conv_weights_and_image_batches",)),
    Mutation("translator_upsamples_by_two", "the image translator upsamples by 2 instead of to the recorded size",
             "gendist/nets/translator.py",
             '            h = up(F.interpolate(h, size=size, mode="nearest"))  # back to the size before that down',
             '            h = up(F.interpolate(h, scale_factor=2, mode="nearest"))  # back to the size before that down',
             ("tests/test_nets_translator.py::test_output_has_the_input_size_and_the_output_channels",)),
    Mutation("translator_batch_norm", "the image translator normalizes over the batch (BatchNorm)",
             "gendist/nets/translator.py",
             "        self.residual = nn.Sequential(reflect_conv(channels, channels), PerSampleNorm(channels), activation(),",
             "        self.residual = nn.Sequential(reflect_conv(channels, channels), nn.BatchNorm2d(channels), activation(),",
             ("tests/test_nets_translator.py::test_outputs_are_per_sample",)),
    Mutation("translator_downsamples_small_images", "the image translator downsamples down to 4-pixel sides",
             "gendist/nets/translator.py", "MIN_SIDE = 32  # no downsampling below a 32-pixel side",
             "MIN_SIDE = 4  # no downsampling below a 32-pixel side",
             ("tests/test_nets_translator.py::test_downsampling_plan",)),
    Mutation("style_domains_share_samples", "a source and its style variant are not split into disjoint halves",
             "gendist/data/sources.py", "    return base == base_source(spec_b) and base in variant_bases",
             "    return False",
             ("tests/test_data_images.py::test_style_variants_are_the_base_images_transformed_and_two_domains_take_disjoint_halves",)),
    Mutation("resize_aliases", "image resizing samples pixels (nearest) instead of filtering (LANCZOS)",
             "gendist/data/sources.py", "                (size[1], size[0]), Image.LANCZOS)",
             "                (size[1], size[0]), Image.NEAREST)",
             ("tests/test_data_images.py::test_resizing_does_not_alias",)),
    Mutation("shipped_split_ignored", "Fashion-MNIST is split at random instead of by its shipped test set",
             "gendist/data/shards.py", "    if data.test_rows is not None:  # the source's own split",
             "    if False:  # the source's own split",
             ("tests/test_data_images.py::test_fashion_mnist_keeps_its_shipped_split_and_labels",)),
    Mutation("r2_not_augmented", "with gan.augment, the R2 penalty differentiates D on raw generated images",
             "gendist/recipes/gan.py",
             "            r2 = partial(r2_loss, gamma=gan.r2_gamma, every=gan.r1_every, latent_dim=model.latent_dim, pack=gan.pack,\n"
             "                         augment=augment, cond=cond)",
             "            r2 = partial(r2_loss, gamma=gan.r2_gamma, every=gan.r1_every, latent_dim=model.latent_dim, pack=gan.pack,\n"
             "                         augment=None, cond=cond)",
             ("tests/test_augment.py::test_the_discriminator_sees_only_augmented_images_in_every_phase",)),
    Mutation("generated_labels_from_global_rng", "a conditional GAN's generated labels drawn from torch's global RNG, "
             "not the batch's noise", "gendist/recipes/base.py",
             "        uniform = torch.special.ndtr(self.noise.randn(self.size, 1).double()).squeeze(1)",
             "        uniform = torch.rand(self.size, dtype=torch.double)",
             ("tests/test_conditional.py", "tests/test_strategies.py", "-k",
              "test_generated_labels_are_uniform_and_a_function_of_the_noise or resnet_sn_sgd")),
    Mutation("projection_ignores_class", "the projection discriminator drops its class term (an unconditional D)",
             "gendist/nets/conditional.py",
             "        return self.head(phi) + (self.embed(y).to(phi.dtype) * phi).sum(dim=1, keepdim=True)  # (B, 1)",
             "        return self.head(phi)  # (B, 1)",
             ("tests/test_conditional.py::test_every_conditional_network_reads_the_class",)),
    Mutation("acgan_generator_ignores_class", "AC-GAN's generator loses its classification term",
             "gendist/recipes/gan.py",
             '    return {"loss": loss + cond.weight * class_loss, "class_loss": class_loss.detach()}',
             '    return {"loss": loss, "class_loss": class_loss.detach()}',
             ("tests/test_conditional.py::test_acgan_discriminator_scores_and_classifies_and_both_players_learn_the_class",)),
    Mutation("intra_class_fd_mixes_classes", "intra-class FD compares each class's samples with all held-out data",
             "gendist/evaluation.py",
             "        distances = [frechet_distance(generated[requested == k], reference[reference_labels == k])",
             "        distances = [frechet_distance(generated[requested == k], reference)",
             ("tests/test_conditional.py::test_class_metrics_score_the_requested_class_and_the_per_class_distance",)),
    Mutation("augment_from_global_rng", "augmentation parameters drawn from torch's global RNG, not the batch's noise",
             "gendist/augment.py", "uniform = torch.special.ndtr(batch.randn(COLUMNS).float())",
             "uniform = torch.rand(len(x), COLUMNS)",
             ("tests/test_augment.py::test_two_ranks_draw_the_augmentations_of_one_rank_with_the_double_batch",)),
    Mutation("inception_truncates", "inception features: images converted to uint8 by truncation, not rounding",
             "gendist/features.py", "batch = torch.from_numpy(np.clip(x[start:start + 256], 0.0, 1.0) * 255).round().to(torch.uint8)",
             "batch = torch.from_numpy(np.clip(x[start:start + 256], 0.0, 1.0) * 255).to(torch.uint8)",
             ("tests/test_inception_parity.py",)),
    Mutation("zero3_restarts_from_step_0", "a relaunch under ZeRO-3 ignores its checkpoint and restarts at step 0",
             "gendist/engine/run.py",
             "folder = broadcast_object(find_resumable(run_dir / \"checkpoints\") if dist_info.is_main else None)",
             "folder = broadcast_object(find_resumable(run_dir / \"checkpoints\") if dist_info.is_main else None)\n"
             "    folder = None if trainer.strategy.name == \"deepspeed\" and getattr(trainer.strategy, \"stage\", 0) == 3 else folder",
             ("tests/test_fault_tolerance.py::test_resume_after_sigkill_reproduces_the_uninterrupted_run[zero3]",)),
    Mutation("spectral_norm_iterates_every_call", "spectral norm advances its power iteration at every call (torch's way)",
             "gendist/nets/registry.py", "changed = (detached != self._last).any()  # a device bool: no host sync",
             "changed = torch.ones((), dtype=torch.bool, device=detached.device)",
             ("tests/test_architectures.py::test_spectral_norm_iterates_once_per_weight_change_not_per_call",)),
    Mutation("network_output_shape_unchecked", "the registry skips the start-up probe of a network's output shape",
             "gendist/nets/registry.py", "    check_output_shape(net, spec, what)\n    return net", "    return net",
             ("tests/test_architectures.py::test_a_users_network_of_the_wrong_shape_stops_with_one_line_naming_it",)),
    Mutation("missing_grad_accum_division", "backward does not divide the loss by train.grad_accum",
             "gendist/engine/strategies/base.py", "loss = loss / self.config.train.grad_accum", "loss = loss",
             ("tests/test_engine.py::test_accumulation_equals_the_double_batch_with_sgd",
              "tests/test_strategies.py::test_accumulation_matches_double_batch_and_syncs_once_per_step[ddp]")),
    Mutation("gradients_summed_across_ranks", "DDP sums gradients over ranks instead of averaging them",
             "gendist/engine/strategies/ddp.py", "return default_hooks.allreduce_hook(state, bucket)",
             "import torch.distributed as dist\n"
             "        return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])",
             ("tests/test_strategies.py::test_two_ranks_match_one_rank_with_double_batch[torchrun-gan_sgd]",)),
    Mutation("ema_rampup_ignored", "the EMA uses train.ema_decay from the first step (no ramp-up)",
             "gendist/engine/trainer.py", "ema.update(self.strategy.networks[name], result.skipped, self.step + 1)",
             "ema.update(self.strategy.networks[name], result.skipped)",
             ("tests/test_api.py::test_the_ema_starts_at_the_first_steps_weights_and_ramps_up",)),
    Mutation("ema_not_restored", "the EMA generator is not loaded on resume (it restarts at the current weights)",
             "gendist/engine/trainer.py", "self.ema[name].load_full_state(load_tensors(ema_path))", "pass",
             ("tests/test_fault_tolerance.py::test_resume_after_sigkill_reproduces_the_uninterrupted_run[single-fp16-ema]",)),
    Mutation("grad_scaler_not_restored", "the fp16 GradScaler state is not loaded on resume",
             "gendist/engine/strategies/base.py", "            scaler.load_state_dict(state[\"scalers\"][name])\n\n    def local_parameters",
             "            pass\n\n    def local_parameters",
             ("tests/test_fault_tolerance.py::test_resume_after_sigkill_reproduces_the_uninterrupted_run[single-fp16-ema]",)),
    Mutation("loader_position_not_restored", "the data loader restarts its epoch on resume",
             "gendist/engine/trainer.py", "self.loader.load_state_dict(rank_state[\"loader\"])", "pass",
             ("tests/test_fault_tolerance.py::test_resume_after_sigkill_reproduces_the_uninterrupted_run[single-fp16-ema]",)),
    Mutation("wgan_clip_skipped_zero3", "WGAN weight clipping is skipped under ZeRO-3",
             "gendist/engine/strategies/deepspeed.py",
             "        optimizer = self.engines[name].optimizer\n        for group in",
             "        if self.stage == 3:\n            return\n        optimizer = self.engines[name].optimizer\n        for group in",
             ("tests/test_strategies.py::test_two_ranks_match_one_rank_with_double_batch[zero3-wgan_clip]",)),
    Mutation("nonfinite_step_applied", "a step with non-finite gradients is applied instead of skipped",
             "gendist/engine/strategies/base.py", "            optimizer.found_inf = found_inf.reshape(())",
             "            optimizer.found_inf = torch.zeros((), device=self.device)",
             ("tests/test_fault_tolerance.py::test_too_many_bad_steps_stop_with_the_last_good_weights",
              "tests/test_fault_tolerance.py::test_injected_nan_steps_are_skipped_and_counted[single-generator]")),
    Mutation("iw_estimate_is_the_elbo", "the importance-weighted estimate averages log-weights (the ELBO)",
             "gendist/recipes/vae.py", "return {\"objective\": importance_weighted_bound(log_weights),",
             "return {\"objective\": log_weights.mean(0),",
             # the mutated line is the training objective's k > 1 branch (VAE.forward), which tests/test_vae.py
             # (scores through vae_eval) and tests/test_cli.py (trains k = 1) never run: the mutation survived
             # them. (test_vae_toolbox's bound-rises-with-k test runs it too, but fails under it only by 0.015
             # nats of Monte Carlo noise: not named.)
             ("tests/test_vae_toolbox.py::test_iwae_training_loss_is_the_k_sample_importance_weighted_bound",)),
    Mutation("deepspeed_clipping_dropped", "DeepSpeed engines are built without gradient clipping",
             "gendist/engine/strategies/deepspeed.py", "\"gradient_clipping\": config.optim.grad_clip,",
             "\"gradient_clipping\": 0.0,",
             ("tests/test_strategies.py::test_two_ranks_match_one_rank_with_double_batch[zero2-gan_sgd_clip]",)),
    Mutation("lr_override_ignored", "optim.lr_overrides is ignored (every player gets optim.lr)",
             "gendist/engine/strategies/base.py", "lr = optim.lr_overrides.get(member, optim.lr_overrides.get(name, optim.lr))",
             "lr = optim.lr",
             ("tests/test_engine.py::test_warmup_schedule_and_per_player_learning_rates_reach_the_optimizers",
              "tests/test_engine.py::test_sgd_step_moves_each_player_by_lr_times_its_gradient")),
    Mutation("checkpoint_not_verified", "checkpoints are used without checking their manifest",
             "gendist/checkpoint.py", "        problem = verify(folder)\n", "        problem = None\n",
             ("tests/test_fault_tolerance.py::test_a_damaged_file_in_a_written_checkpoint_falls_back_loudly",)),
    Mutation("fsdp_ema_not_saved", "the sharded EMA is not written into checkpoints",
             "gendist/engine/trainer.py", "                writer.add_tensors(ema_file(name), ema_state)",
             "                pass",
             ("tests/test_fault_tolerance.py::test_resume_after_sigkill_reproduces_the_uninterrupted_run[fsdp-ema]",)),
    Mutation("evaluation_chunks_share_one_seed", "every evaluation chunk draws the same samples (and scoring noise)",
             "gendist/evaluation.py", "(seed * 1_000_003 + stream * 7_919 + chunk) % (2 ** 63)",
             "(seed * 1_000_003 + stream * 7_919) % (2 ** 63)",
             ("tests/test_evaluation_units.py::test_every_evaluation_chunk_draws_its_own_samples_and_scoring_noise",)),
    Mutation("precision_recall_swapped_in_evaluation", "training's evaluation reports precision as recall and back",
             "gendist/evaluation.py", "pr = precision_recall(reference, generated[:count])",
             "pr = precision_recall(generated[:count], reference)",
             ("tests/test_evaluation_units.py::"
              "test_precision_and_recall_are_reported_under_their_own_names_by_both_call_sites",)),
    Mutation("precision_recall_swapped_in_compare", "`gendist compare` reports precision as recall and back",
             "gendist/evaluation.py", "out.update(precision_recall(subset(real_features), subset(fake_features)))",
             "out.update(precision_recall(subset(fake_features), subset(real_features)))",
             ("tests/test_evaluation_units.py::"
              "test_precision_and_recall_are_reported_under_their_own_names_by_both_call_sites",)),
    Mutation("bigan_loss_signs_swapped", "BiGAN's encoder/generator loss has its signs swapped (E and G help D)",
             "gendist/recipes/bigan.py", "loss = F.softplus(real_scores).mean() + F.softplus(-fake_scores).mean()",
             "loss = F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()",
             ("tests/test_gan_family.py::test_bigan_learns_the_ring_in_process",)),
    Mutation("iwae_trains_on_one_sample", "IWAE training (vae.k > 1) draws one latent sample per datapoint",
             "gendist/recipes/vae.py",
             "samples = settings.k if settings.latent == \"gaussian\" or settings.estimator != \"enumerate\" else 1",
             "samples = 1",
             ("tests/test_vae_toolbox.py::test_iwae_training_loss_is_the_k_sample_importance_weighted_bound",)),
    Mutation("likelihood_blocks_sized_by_chunk_rows",
             "importance-sampling and enumeration blocks are sized by a chunk's rows (a short last chunk makes "
             "fewer decoder calls)",
             "gendist/recipes/vae_eval.py",
             "    return max(1, budget // (BLOCK_ROWS * max(1, math.prod(x.shape[1:]))))",
             "    return max(1, budget // (x.shape[0] * max(1, math.prod(x.shape[1:]))))",
             ("tests/test_vae_toolbox.py::test_held_out_scoring_makes_the_same_decoder_calls_for_a_short_last_chunk",)),
    Mutation("gap_elbo_decoded_at_once", "the amortization gap's ELBOs decode all their draws in one call (no budget)",
             "gendist/recipes/vae_eval.py", "    per_block = calls_per_row(budget, x)\n    return eps.split(per_block)",
             "    per_block = eps.shape[0]\n    return eps.split(per_block)",
             ("tests/test_vae_toolbox.py::test_the_amortization_gap_decodes_within_the_budget_and_blocking_changes_nothing",)),
    Mutation("loss_jump_limit_per_sample", "the VAE loss-jump watch's limit is per sample, not per data value "
             "(64x too tight on the 8x8 digits: normal training fires it)", "gendist/engine/health.py",
             "LOSS_JUMP_NATS_PER_VALUE * max(1, values_per_sample)", "LOSS_JUMP_NATS_PER_VALUE",
             ("tests/test_health.py::test_a_vae_loss_that_jumps_is_reported_once_per_jump",)),
    Mutation("loss_jump_watch_not_wired", "training never runs the VAE loss-jump watch", "gendist/engine/run.py",
             "\"loss_jump\": LossJumpWatch(config, tracker, math.prod(spec.info.sample_shape))}", "}",
             ("tests/test_cli.py::test_vae_digits_trains_and_reports_elbo",)),
    Mutation("health_watches_forget_on_resume", "a resumed run's health watches start afresh (a jump across the "
             "resume goes unreported)", "gendist/engine/run.py", "hooks = Hooks(config, tracker, spec, run_dir, health)",
             "hooks = Hooks(config, tracker, spec, run_dir)",
             ("tests/test_cli.py::test_vae_digits_trains_and_reports_elbo",)),
    Mutation("ddp_broadcasts_spectral_norm_buffers", "DDP broadcasts spectral norm's weight-sized buffers before "
             "every forward", "gendist/engine/strategies/ddp.py",
             "        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(unit, rank_identical_buffers(unit))\n",
             "",
             ("tests/test_units.py::test_ddp_broadcasts_no_spectral_norm_buffer_and_keeps_the_others",)),
    Mutation("encode_labels_of_the_first_batch", "gendist encode pairs every batch with the first batch's labels",
             "gendist/inputs.py", "torch.from_numpy(labels[start:start + batch_size])",
             "torch.from_numpy(labels[:len(x[start:start + batch_size])])",
             ("tests/test_conditional.py::test_a_conditional_vae_encodes_each_image_at_its_class_or_at_the_class_asked",)),
    Mutation("memorization_gap_scores_held_out_rows", "evaluation's train/ scores read the held-out rows again",
             "gendist/evaluation.py", "nets, train[chunk][0], chunk_generator(seed, STREAM_SCORES, chunk),",
             "nets, test[chunk % len(test)], chunk_generator(seed, STREAM_SCORES, chunk),",
             ("tests/test_evaluation_units.py::test_training_rows_are_scored_beside_the_held_out_ones_and_the_gap_is_train_minus_held_out",)),
    Mutation("memorization_gap_se_train_side_only", "gap_se/<score> leaves out the held-out side's variance",
             "gendist/evaluation.py", "+ held[key].var(ddof=1) / len(held[key])))", "+ 0.0))",
             ("tests/test_evaluation_units.py::test_the_gaps_standard_error_combines_both_sides_sample_variances_over_their_own_counts",)),
    Mutation("gan_scores_ignore_labels", "a conditional GAN's d_real judged at the next class",
             "gendist/recipes/gan.py", "labels = None if y is None or not self.num_classes else y[:count].to(device)",
             "labels = None if y is None or not self.num_classes else ((y[:count] + 1) % self.num_classes).to(device)",
             ("tests/test_gan_family.py::test_a_gans_held_out_score_is_the_discriminators_output_on_each_real_row",)),
    Mutation("final_step_evaluated_twice", "the last step evaluated (and sampled) by eval.every and again at the end",
             "gendist/engine/run.py", "final = step == config.train.max_steps", "final = False",
             ("tests/test_tracking.py::test_wandb_offline_files_hold_evaluation_metrics_images_and_discriminator_histograms",)),
    Mutation("gradient_coverage_not_checked", "training start-up skips the gradient-coverage check",
             "gendist/engine/run.py", "check_gradient_coverage(units, phases, probe, recipe)", "pass",
             ("tests/test_engine.py::test_start_up_refuses_a_parameter_no_phase_reaches",)),
    Mutation("global_batch_ignores_accumulation",
             "the global split cuts its stream in micro-batches, not the optimizer step's batch (epoch ends differ)",
             "gendist/data/loader.py", "return self.batch_size * self.world_size * self.micro_batches",
             "return self.batch_size * self.world_size",
             ("tests/test_data.py::test_global_split_with_accumulation_equals_the_global_batch_across_epochs",)),
    Mutation("loader_not_told_of_accumulation", "training builds its loader without train.grad_accum",
             "gendist/engine/data_setup.py", "micro_batches=config.train.grad_accum,", "micro_batches=1,",
             ("tests/test_engine.py::test_accumulation_equals_the_double_batch_across_an_epoch_end",)),
]


def run_tests(tests: tuple[str, ...]) -> tuple[bool, str, float]:
    """(some test failed, the failing test's summary line, seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                            env=env, capture_output=True, text=True)
    failed = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    # caught only when a test failed (exit 1): not when pytest was interrupted or a named test does not exist
    # (exits 2 and 4 would otherwise count as catches)
    caught = result.returncode == 1 and bool(failed)
    summary = failed[0] if failed else (result.stdout.strip().splitlines() or [f"pytest exit {result.returncode}"])[-1]
    return caught, summary, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="mutation names")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        unknown = sorted(set(args.only) - {m.name for m in chosen})
        print(f"mutations: --only: no mutation named {', '.join(unknown)}", file=sys.stderr)
        return 2
    mutated = sorted({m.path for m in chosen})
    # only the files a mutation rewrites must be clean: they are restored from memory afterwards
    if subprocess.run(["git", "diff", "--quiet", "--", *mutated], cwd=ROOT).returncode != 0:
        print(f"mutations: uncommitted changes in {', '.join(mutated)}; commit or stash them first", file=sys.stderr)
        return 2
    rows, survived = [], []
    for mutation in chosen:
        path = ROOT / mutation.path
        original = path.read_text()
        if original.count(mutation.old) != 1:
            print(f"mutations: {mutation.name}: the text to replace occurs {original.count(mutation.old)} times "
                  f"in {mutation.path}; update the mutation", file=sys.stderr)
            return 2
        try:
            path.write_text(original.replace(mutation.old, mutation.new))
            caught, line, seconds = run_tests(mutation.tests)
        finally:
            path.write_text(original)
        print(f"{mutation.name}: {'caught' if caught else 'SURVIVED'} in {seconds:.0f} s: {line}", flush=True)
        rows.append(f"| {mutation.what} | `{mutation.path}` | {'caught' if caught else '**survived**'}: "
                    f"{line.replace('|', '/')} |")
        if not caught:
            survived.append(mutation.name)
    print("\n| injected bug | where | outcome (first failing test) |\n|---|---|---|")
    print("\n".join(rows))
    if survived:
        print(f"mutations: survived (no test failed): {', '.join(survived)}", file=sys.stderr)
        return 1
    print(f"mutations: all {len(rows)} injected bugs were caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
