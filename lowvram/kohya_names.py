"""kohya sd-scripts' flag names and the lowvram options that mean the same, so a kohya user who types
`--network_dim 16` is told `--rank 16` instead of "unknown option". Flags both share (--seed, --vae,
--resolution: kohya's `512,512` is read as 512, `512,768` as buckets of its area) need no entry. Plain data; the README's table is this one
(tests/test_rough_edges.py checks they agree)."""

from __future__ import annotations

# kohya flag -> what to write in lowvram (a flag, with a value where kohya's flag alone implies one)
KOHYA_FLAGS = {
    "--config_file": "--config (a kohya config file is read as kohya reads it)",
    "--dataset_config": "--data (a kohya dataset .toml is read as kohya reads it)",
    "--pretrained_model_name_or_path": "--model",
    "--train_data_dir": "--data",
    "--reg_data_dir": "--reg-data",
    "--output_dir": "--output",
    "--output_name": "--name",
    "--network_dim": "--rank",
    "--network_alpha": "--alpha",
    "--network_dropout": "--dropout",
    "--network_module": "--network (lora, dora, loha, lokr)",
    "--network_weights": "--network-weights",
    "--dim_from_weights": "(the default with --network-weights: the file's rank, alpha and layers, unless given)",
    "--network_args": "--conv-rank (conv_dim), --conv-alpha (conv_alpha), --lokr-factor (factor), --network (algo), "
                      "--loraplus-ratio (loraplus_lr_ratio), --loraplus-text-encoder-ratio "
                      "(loraplus_text_encoder_lr_ratio), --block-ranks (block_dims), --block-alphas, "
                      "--conv-block-ranks (conv_block_dims), --conv-block-alphas, --down-lr-weight, "
                      "--mid-lr-weight, --up-lr-weight, --block-lr-zero-threshold, --rank-dropout, --module-dropout",
    "--network_train_unet_only": "(the default; --train-text-encoder adds the text encoders)",
    "--stop_text_encoder_training": "--text-encoder-until N",
    "--learning_rate": "--lr",
    "--unet_lr": "--lr",
    "--text_encoder_lr": "--text-encoder-lr",
    "--lr_scheduler": "--scheduler",
    "--lr_warmup_steps": "--warmup-steps",
    "--lr_scheduler_num_cycles": "--scheduler-cycles",
    "--lr_scheduler_power": "--scheduler-power",
    "--lr_scheduler_min_lr_ratio": "--min-lr-ratio",
    "--optimizer_type": "--optimizer",
    "--optimizer_args": "--optimizer-arg (once per KEY=VALUE; weight_decay is --weight-decay)",
    "--max_grad_norm": "--max-grad-norm",
    "--scale_weight_norms": "--scale-weight-norms",
    "--max_train_steps": "--max-steps",
    "--max_train_epochs": "--epochs",
    "--train_batch_size": "--batch-size",
    "--gradient_accumulation_steps": "--gradient-accumulation",
    "--gradient_checkpointing": "--gradient-checkpointing",
    "--mixed_precision": "--mixed-precision",
    "--save_precision": "--save-precision",
    "--save_model_as": "--format (kohya, diffusers)",
    "--save_every_n_steps": "--save-every N",
    "--save_every_n_epochs": "--save-every Ne",
    "--save_last_n_epochs": "--keep-saves",
    "--save_last_n_steps": "--keep-saves (a number of saves: the steps divided by --save-every's)",
    "--sample_every_n_steps": "--sample-every N",
    "--sample_every_n_epochs": "--sample-every Ne",
    "--sample_at_first": "--sample-at-first",
    "--sample_prompts": "--sample-prompt-file (its .txt, .toml or .json prompt file; kohya's inline n, w, h, s, l, "
                        "d and ss options work), or --sample-prompt once per prompt",
    "--sample_sampler": "--sample-sampler",
    "--enable_bucket": "(the default; --no-bucket turns it off)",
    "--min_bucket_reso": "--min-bucket-side",
    "--max_bucket_reso": "--max-bucket-side",
    "--bucket_reso_steps": "--bucket-step",
    "--bucket_no_upscale": "--bucket-no-upscale",
    "--caption_extension": "--caption-extension",
    "--shuffle_caption": "--shuffle-tags",
    "--keep_tokens": "--keep-tokens",
    "--caption_dropout_rate": "--caption-dropout",
    "--caption_tag_dropout_rate": "--tag-dropout",
    "--caption_dropout_every_n_epochs": "--caption-dropout-every",
    "--prior_loss_weight": "--prior-loss-weight",
    "--flip_aug": "--flip",
    "--caption_prefix": "--caption-prefix",
    "--caption_suffix": "--caption-suffix",
    "--alpha_mask": "--alpha-mask",
    "--masked_loss": "--masked-loss (a mask is an <image>-masklabel.png beside its image)",
    "--color_aug": "--color-jitter",
    "--random_crop": "--crop random",
    "--clip_skip": "--clip-skip",
    "--max_token_length": "--max-token-length",
    "--noise_offset": "--noise-offset",
    "--noise_offset_random_strength": "--noise-offset-random-strength",
    "--adaptive_noise_scale": "--adaptive-noise-scale",
    "--keep_tokens_separator": "--keep-tokens-separator",
    "--caption_separator": "--caption-separator",
    "--secondary_separator": "--secondary-separator",
    "--weighted_captions": "--weighted-captions",
    "--enable_wildcard": "--wildcards --caption-lines each",
    "--ip_noise_gamma": "--ip-noise-gamma",
    "--ip_noise_gamma_random_strength": "--ip-noise-gamma-random-strength",
    "--multires_noise_iterations": "--multires-noise-iterations",
    "--multires_noise_discount": "--multires-noise-discount",
    "--zero_terminal_snr": "--zero-terminal-snr",
    "--loss_type": "--loss",
    "--debiased_estimation_loss": "--debiased-estimation",
    "--scale_v_pred_loss_like_noise_pred": "--scale-v-pred-loss",
    "--v_pred_like_loss": "--v-pred-like-loss",
    "--min_timestep": "--min-timestep",
    "--max_timestep": "--max-timestep",
    "--huber_c": "--huber-c",
    "--huber_schedule": "--huber-schedule",
    "--min_snr_gamma": "--min-snr-gamma",
    "--v_parameterization": "--prediction-type v_prediction",
    "--cache_latents": "(always: latents are cached on disk)",
    "--cache_latents_to_disk": "(always: latents are cached on disk)",
    "--cache_text_encoder_outputs": "(the default without --train-text-encoder)",
    "--vae_batch_size": "--cache-batch-size",
    "--cache_text_encoder_outputs_to_disk": "(the default without --train-text-encoder: embeddings are cached on disk)",
    "--no_half_vae": "(automatic: SDXL's VAE stays in fp32 under --mixed-precision fp16)",
    "--full_fp16": "(the adapters train in fp32 under --mixed-precision; --unet-weights stores the frozen U-Net)",
    "--full_bf16": "(the adapters train in fp32 under --mixed-precision; --unet-weights stores the frozen U-Net)",
    "--max_data_loader_n_workers": "(not needed: training reads the cached latents)",
    "--persistent_data_loader_workers": "(not needed: training reads the cached latents)",
    "--lowram": "(not needed: lowvram plan shows the host RAM each phase needs)",
    "--highvram": "(not needed: lowvram plan picks what fits the GPU)",
    "--save_state": "--checkpoint-every N (a checkpoint is always saved at the end)",
    "--logging_dir": "--tensorboard (logs go to <output>/logs)",
    "--log_with": "--tensorboard (metrics.jsonl is always written; there is no Weights & Biases logging)",
    "--mem_eff_attn": "--attention sdpa",
    "--xformers": "--attention auto (xformers where it runs, else SDPA: the same memory)",
    "--sdpa": "--attention sdpa",
    "--fp8_base": "--unet-weights fp8",
    "--base_weights": "--base-weights",
    "--base_weights_multiplier": "--base-weights FILE:WEIGHT",
    "--training_comment": "--training-comment",
    "--metadata_title": "--metadata-title",
    "--metadata_author": "--metadata-author",
    "--metadata_description": "--metadata-description",
    "--metadata_license": "--metadata-license",
    "--metadata_tags": "--metadata-tags",
}


# kohya flags lowvram has no counterpart for, and what to do instead
WITHOUT_COUNTERPART = {
    "--token_warmup_step": "lowvram trains every caption whole from the first step",
    "--token_warmup_min": "lowvram trains every caption whole from the first step",
    "--face_crop_aug_range": "lowvram has no face-crop augmentation (crop the images beforehand, or use --crop random)",
    "--no_token_padding": "lowvram pads captions as the models were trained",
    "--initial_epoch": "a run continues where it stopped with --resume",
    "--initial_step": "a run continues where it stopped with --resume",
    "--huggingface_repo_id": "lowvram uploads nothing (use huggingface-cli upload)",
}


def kohya_hint(flag: str) -> str | None:
    """'--network_dim is kohya's name; lowvram's is --rank' for a kohya flag (with or without its =value)."""
    name = flag.split("=", 1)[0]
    if name in WITHOUT_COUNTERPART:
        return f"{name} is kohya's: {WITHOUT_COUNTERPART[name]}"
    ours = KOHYA_FLAGS.get(name)
    if ours is None:
        return None
    return f"{name} is kohya's name; lowvram's is {ours}"
