"""kohya sd-scripts' flag names and the lowvram options that mean the same, so a kohya user who types
`--network_dim 16` is told `--rank 16` instead of "unknown option". Flags both share (--seed, --vae,
--resolution: kohya's `512,512` is read as 512) need no entry. Plain data; the README's table is this one
(tests/test_rough_edges.py checks they agree)."""

from __future__ import annotations

# kohya flag -> what to write in lowvram (a flag, with a value where kohya's flag alone implies one)
KOHYA_FLAGS = {
    "--config_file": "--config (a kohya config file is read as kohya reads it)",
    "--dataset_config": "--data (the image folder; its N_name subfolders give the repeats)",
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
    "--network_args": "--conv-rank (conv_dim), --conv-alpha (conv_alpha), --lokr-factor (factor), --network (algo), "
                      "--loraplus-ratio (loraplus_lr_ratio)",
    "--network_train_unet_only": "(the default; --train-text-encoder adds the text encoders)",
    "--learning_rate": "--lr",
    "--unet_lr": "--lr",
    "--text_encoder_lr": "--text-encoder-lr",
    "--lr_scheduler": "--scheduler",
    "--lr_warmup_steps": "--warmup-steps",
    "--lr_scheduler_num_cycles": "--scheduler-cycles",
    "--optimizer_type": "--optimizer",
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
    "--sample_prompts": "--sample-prompt (once per prompt; kohya's inline n, w, h, s, l and d options work)",
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
    "--prior_loss_weight": "--prior-loss-weight",
    "--flip_aug": "--flip",
    "--color_aug": "--color-jitter",
    "--random_crop": "--crop random",
    "--clip_skip": "--clip-skip",
    "--max_token_length": "--max-token-length",
    "--noise_offset": "--noise-offset",
    "--noise_offset_random_strength": "--noise-offset-random-strength",
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
    "--xformers": "--attention xformers",
    "--sdpa": "--attention sdpa",
    "--fp8_base": "--unet-weights fp8",
}


def kohya_hint(flag: str) -> str | None:
    """'--network_dim is kohya's name; lowvram's is --rank' for a kohya flag (with or without its =value)."""
    name = flag.split("=", 1)[0]
    ours = KOHYA_FLAGS.get(name)
    if ours is None:
        return None
    return f"{name} is kohya's name; lowvram's is {ours}"
