"""kohya sd-scripts' flag names (and the diffusers example scripts' and SimpleTuner's) and the lowvram options
that mean the same, so a kohya user who types `--network_dim 16` (or `--network-dim 16`) is told `--rank 16` instead
of "unknown option". Flags both share (--seed, --vae, --resolution: kohya's `512,512` is read as 512, `512,768` as
buckets of its area) need no entry. Plain data; the README's table is KOHYA_FLAGS (tests/test_rough_edges.py checks
they agree)."""

from __future__ import annotations

import re
from collections.abc import Collection

# kohya flag -> what to write in lowvram (a flag, with a value where kohya's flag alone implies one)
KOHYA_FLAGS = {
    "--config_file": "--config (a kohya config file is read as kohya reads it)",
    "--dataset_config": "--data (a kohya dataset .toml is read as kohya reads it)",
    "--pretrained_model_name_or_path": "--model",
    "--train_data_dir": "--data",
    "--reg_data_dir": "--reg-data",
    "--output_dir": "--output",
    "--output_name": "--name",
    "--network_dim": "--rank (whose alpha defaults to the rank; kohya's to 1: --alpha 1 for its scale)",
    "--network_alpha": "--alpha",
    "--network_dropout": "--dropout",
    "--network_module": "--network (lora, dora, loha, lokr; kohya's networks.lora adapts --lora-layers attn-mlp)",
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
    "--lr_decay_steps": "--decay-steps",
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
    "--save_last_n_epochs_state": "--keep-checkpoints",
    "--save_last_n_steps_state": "--keep-checkpoints (a number of checkpoints: the steps divided by "
                                 "--checkpoint-every's)",
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
    "--validation_split": "--validation-split",
    "--validate_every_n_steps": "--validate-every N",
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
    "--sdxl": "(not needed: the family is read from --model; --model-family sdxl forces it)",
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
    "--lowram": "(not needed: models load in the precision they train in, and lowvram plan shows the host RAM each "
                "phase needs)",
    "--highvram": "(not needed: lowvram plan picks what fits the GPU)",
    "--torch_compile": "--compile",
    "--dynamo_backend": "--compile (torch.compile of the U-Net's blocks; accelerate's dynamo_backend compiles the "
                        "whole model)",
    "--save_state": "--checkpoint-every N or Ne (a checkpoint is always saved at the end)",
    "--logging_dir": "--tensorboard (logs go to <output>/logs)",
    "--log_with": "--tensorboard, or --wandb-project NAME (metrics.jsonl is always written)",
    "--log_tracker_name": "--wandb-project NAME",
    "--wandb_run_name": "--wandb-run-name",
    "--mem_eff_attn": "--attention sdpa",
    "--xformers": "--attention auto (xformers where it runs, else SDPA: the same memory)",
    "--sdpa": "--attention sdpa",
    "--fp8_base": "--unet-weights fp8",
    "--fp8_base_unet": "--unet-weights fp8",
    "--base_weights": "--base-weights",
    "--base_weights_multiplier": "--base-weights FILE:WEIGHT",
    "--training_comment": "--training-comment",
    "--metadata_title": "--metadata-title",
    "--no_metadata": "--no-metadata",
    "--metadata_author": "--metadata-author",
    "--metadata_description": "--metadata-description",
    "--metadata_license": "--metadata-license",
    "--metadata_tags": "--metadata-tags",
}


# kohya flags lowvram has no counterpart for, and what to do instead
WITHOUT_COUNTERPART = {
    "--debug_dataset": "kohya shows the dataset then and trains nothing: lowvram check-data DIR --captions shows its "
                       "captions and buckets",
    "--token_warmup_step": "lowvram trains every caption whole from the first step",
    "--token_warmup_min": "lowvram trains every caption whole from the first step",
    "--face_crop_aug_range": "lowvram has no face-crop augmentation (crop the images beforehand, or use --crop random)",
    "--no_token_padding": "lowvram pads captions as the models were trained",
    "--in_json": ("kohya's fine-tuning captions are read from a dataset file: name the JSON as metadata_file beside "
                  "image_dir in one of its subsets, and give that file as --data"),
    "--initial_epoch": "a run continues where it stopped with --resume",
    "--initial_step": "a run continues where it stopped with --resume",
    "--huggingface_repo_id": "lowvram uploads nothing (use huggingface-cli upload)",
    "--wandb_api_key": "run `wandb login` once, or set WANDB_API_KEY",
    "--validate_every_n_epochs": "lowvram validates once per epoch, or every N steps with --validate-every",
    "--validation_seed": ("the held-out images are chosen by --seed; the diffusers scripts' (the sample images' "
                          "seed) is inline in --sample-prompt (\"a cat --d 42\")"),
    "--max_validation_steps": "lowvram validates every held-out image",
    "--metadata_trigger_phrase": "--trigger-word writes it (and puts it first in each caption that lacks it)",
    "--metadata_thumbnail": "the final LoRA's first sample is its preview (samples/<name>-00.png; --copy-to writes "
                            "it beside the copy as <name>.preview.png, which AUTOMATIC1111 and ComfyUI show)",
    "--metadata_usage_hint": "write it in --metadata-description",
    "--v2": "Stable Diffusion 2 is not a family lowvram trains (SD1.5 and SDXL are: --model names one)",
}


# every setting of sd-scripts' LoRA trainers (train_network.py, sdxl_train_network.py and the library parsers they call;
# then sd3_/flux_train_network.py's own), as their add_argument calls spell them (sd-scripts main, late 2026): a name
# in a kohya config or launcher script that is none of these is a misspelling, which sd-scripts' config reading passes
# over without a word (network_dimm = 8 trained at rank 4)
SD_SCRIPTS_SETTINGS = frozenset("""
    adaptive_noise_scale alpha_mask async_upload base_weights base_weights_multiplier bucket_no_upscale
    bucket_reso_steps cache_info cache_latents cache_latents_to_disk cache_text_encoder_outputs
    cache_text_encoder_outputs_to_disk caption_dropout_every_n_epochs caption_dropout_rate caption_extension
    caption_extention caption_prefix caption_separator caption_suffix caption_tag_dropout_rate clip_skip color_aug
    conditioning_data_dir config_file console_log_file console_log_level console_log_simple
    cpu_offload_checkpointing dataset_class dataset_config dataset_repeats ddp_gradient_as_bucket_view
    ddp_static_graph ddp_timeout debiased_estimation_loss debug_dataset deepspeed dim_from_weights
    disable_mmap_load_safetensors dynamo_backend enable_bucket enable_wildcard face_crop_aug_range flip_aug
    fp16_master_weights_and_gradients fp8_base fp8_base_unet full_bf16 full_fp16 fused_backward_pass
    gradient_accumulation_steps gradient_checkpointing highvram huber_c huber_scale huber_schedule
    huggingface_path_in_repo huggingface_repo_id huggingface_repo_type huggingface_repo_visibility huggingface_token
    in_json initial_epoch initial_step ip_noise_gamma ip_noise_gamma_random_strength keep_tokens
    keep_tokens_separator learning_rate log_config log_prefix log_tracker_config log_tracker_name log_with
    logging_dir loss_type lowram lr_decay_steps lr_scheduler lr_scheduler_args lr_scheduler_min_lr_ratio
    lr_scheduler_num_cycles lr_scheduler_power lr_scheduler_timescale lr_scheduler_type lr_warmup_steps masked_loss
    max_bucket_reso max_data_loader_n_workers max_grad_norm max_timestep max_token_length max_train_epochs
    max_train_steps max_validation_steps mem_eff_attn metadata_author metadata_description
    metadata_is_negative_embedding metadata_license metadata_merged_from metadata_preprocessor metadata_tags
    metadata_thumbnail metadata_title metadata_trigger_phrase metadata_usage_hint min_bucket_reso min_snr_gamma
    min_timestep mixed_precision multires_noise_discount multires_noise_iterations network_alpha network_args
    network_dim network_dropout network_module network_train_text_encoder_only network_train_unet_only
    network_weights no_half_vae no_metadata noise_offset noise_offset_random_strength offload_optimizer_device
    offload_optimizer_nvme_path offload_param_device offload_param_nvme_path optimizer_args optimizer_type
    output_config output_dir output_name persistent_data_loader_workers pretrained_model_name_or_path
    prior_loss_weight random_crop reg_data_dir resize_interpolation resolution resume resume_from_huggingface
    sample_at_first sample_every_n_epochs sample_every_n_steps sample_prompts sample_sampler save_every_n_epochs
    save_every_n_steps save_last_n_epochs save_last_n_epochs_state save_last_n_steps save_last_n_steps_state
    save_model_as save_n_epoch_ratio save_precision save_state save_state_on_train_end save_state_to_huggingface
    scale_v_pred_loss_like_noise_pred scale_weight_norms sdpa secondary_separator seed shuffle_caption
    skip_cache_check skip_until_initial_step text_encoder_lr token_warmup_min token_warmup_step tokenizer_cache_dir
    torch_compile train_batch_size train_data_dir training_comment unet_lr use_8bit_adam use_lion_optimizer v2
    v_parameterization v_pred_like_loss vae vae_batch_size validate_every_n_epochs validate_every_n_steps
    validation_seed validation_split wandb_api_key wandb_run_name weighted_captions xformers zero3_init_flag
    zero3_save_16bit_model zero_stage zero_terminal_snr
""".split() + """
    ae apply_lg_attn_mask apply_t5_attn_mask blocks_to_swap clip_g clip_g_dropout_rate clip_l clip_l_dropout_rate
    controlnet_model_name_or_path discrete_flow_shift enable_scaled_pos_embed guidance_scale logit_mean logit_std
    mode_scale model_prediction_type model_type pos_emb_random_crop_rate save_clip save_t5xxl sigmoid_scale
    split_mode t5_dropout_rate t5xxl t5xxl_device t5xxl_dtype t5xxl_max_token_length text_encoder_batch_size
    timestep_sampling training_shift weighting_scheme
""".split()) | {flag[2:] for flag in (*KOHYA_FLAGS, *WITHOUT_COUNTERPART)}  # noqa: SIM905 (a list of 220 words)


# AUTOMATIC1111's txt2img settings as its API and its users name them, by lowvram generate's flags
NO_HIRES = "(no hires fix: it draws at --width and --height; upscale the image in AUTOMATIC1111 or ComfyUI)"
A1111_GENERATE_FLAGS = {
    "--cfg_scale": "--guidance", "--cfg": "--guidance", "--batch_size": "--count (drawn one after another)",
    "--batch_count": "--count", "--n_iter": "--count", "--sampler_name": '--sampler ("DPM++ 2M Karras" as it names it)',
    "--scheduler": '(the schedule is in --sampler\'s name, as AUTOMATIC1111 names it: "DPM++ 2M Karras")',
    "--enable_hr": NO_HIRES, "--hr_scale": NO_HIRES, "--hr_upscaler": NO_HIRES,
    "--hr_second_pass_steps": NO_HIRES, "--denoising_strength": NO_HIRES, "--hires_fix": NO_HIRES,
    "--restore_faces": "(no face restoration: restore the faces in AUTOMATIC1111 or ComfyUI)",
}


# the flags of kohya's other scripts, by the lowvram command that does what the script does
KOHYA_SCRIPT_FLAGS = {
    "generate": ("kohya's gen_img.py", {
        "--ckpt": "--model",
        "--network_weights": "--lora FILE[:WEIGHT] (once per file)",
        "--network_mul": "--lora FILE:WEIGHT, or --weight for every --lora",
        "--network_module": "(not needed: each --lora file says its network)",
        "--scale": "--guidance",
        "--W": '--width (or "--w W" inside --prompt)',
        "--H": '--height (or "--h H" inside --prompt)',
        "--n_iter": "--count",
        "--images_per_prompt": "--count",
        "--outdir": "--output (an image file; numbered with --count over 1)",
        "--from_file": "(one --prompt per call; its inline --n --w --h --s --l --d --ss options work)",
        "--xformers": "(not needed: generate uses SDPA, PyTorch's memory-efficient attention)",
        "--sdpa": "(not needed: generate uses SDPA, PyTorch's memory-efficient attention)",
        "--fp16": "(not needed: generate computes in the card's half precision, as training does)",
        "--bf16": "(not needed: generate computes in the card's half precision, as training does)",
        "--mixed_precision": "(not needed: generate computes in the card's half precision, as training does)",
        "--max_embeddings_multiples": "(not needed: long prompts are read in 75-token chunks, as A1111 reads them)",
    }),
    "resize": ("kohya's resize_lora.py", {
        "--model": "the LoRA file as resize's FILE argument",
        "--save_to": "--output",
        "--new_rank": "--rank",
        "--new_conv_rank": "--conv-rank",
        "--dynamic_method": "--dynamic",
        "--dynamic_param": "--dynamic-param",
        "--save_precision": "--save-precision",
        "--device": "(not needed: resize runs on the CPU)",
    }),
    "merge": ("kohya's merge scripts", {
        "--models": "the LoRA files as merge's FILE arguments",
        "--ratios": "FILE:WEIGHT for each file (e.g. style.safetensors:0.6)",
        "--new_rank": "--rank",
        "--new_conv_rank": "--conv-rank",
        "--save_to": "--output",
        "--sd_model": "--model (fuse the LoRAs into it)",
        "--precision": "(not needed: merge computes in fp32 on the CPU)",
        "--device": "(not needed: merge runs on the CPU)",
    }),
    "ui": ("kohya_ss's GUI or AUTOMATIC1111", {
        "--server_port": "--port",
        "--server_name": "--listen ADDRESS",
        "--username": "--auth USER:PASSWORD",
        "--password": "--auth USER:PASSWORD",
        "--gradio_auth": "--auth USER:PASSWORD",
        "--autolaunch": "--inbrowser",
    }),
    "caption": ("kohya's tag_images_by_wd14_tagger.py or make_captions.py", {
        "--repo_id": "--caption-model",
        "--model_dir": "--caption-model (the model's folder)",
        "--caption_weights": "--caption-model",
        "--thresh": "--threshold (general tags) and --character-threshold (character tags)",
        "--general_threshold": "--threshold",
        "--character_threshold": "--character-threshold",
        "--undesired_tags": "--exclude-tags",
        "--caption_extension": "--caption-extension",
        "--remove_underscore": "(the default: tags are written with spaces; --keep-underscores keeps them)",
        "--always_first_tags": "--trigger-word (written first in every new caption)",
        "--character_tags_first": "(the default: character tags come first)",
        "--append_tags": "--append",
        "--recursive": "(the images of DIR and of its N_name folders are captioned; give another folder as DIR)",
        "--batch_size": "--batch-size",
        "--max_length": "--max-length",
        "--onnx": "(not needed: the tagger runs with onnxruntime)",
        "--use_rating_tags": "(no rating tags are written)",
        "--use_rating_tags_as_last_tag": "(no rating tags are written)",
        "--force_download": "(not needed: a hub id is fetched once into the Hugging Face cache)",
        "--max_data_loader_n_workers": "(not needed: images are read as they are captioned)",
        "--beam_search": "(the model decodes by its own settings, without sampling)",
        "--num_beams": "(the model decodes by its own settings, without sampling)",
        "--top_p": "(the model decodes by its own settings, without sampling)",
        "--min_length": "(--max-length bounds a caption)",
        "--caption_separator": "(tags are written joined by ', ', as kohya's default)",
        "--tag_replacement": "(not yet: replace a tag in the written captions yourself)",
    }),
    "extract": ("kohya's extract_lora_from_models.py", {
        "--model_org": "--base",
        "--model_tuned": "--tuned",
        "--dim": "--rank",
        "--conv_dim": "--lora-layers full --conv-rank (kohya's alone turns the convolutions on)",
        "--save_to": "--output",
        "--sdxl": "(not needed: the family is detected; --model-family forces it)",
        "--v2": "(lowvram extracts SD1.5- and SDXL-family models)",
        "--device": "(not needed: extract runs on the CPU)",
        "--load_original_model_to": "(not needed: extract runs on the CPU)",
        "--load_tuned_model_to": "(not needed: extract runs on the CPU)",
    }),
}

# the diffusers example training scripts' flags (train_text_to_image_lora*.py, train_dreambooth_lora*.py), and those
# of SimpleTuner (which grew out of them), that kohya's names above do not already answer
OTHER_TRAINER_FLAGS = {
    "--pretrained_vae_model_name_or_path": "--vae",
    "--dataset_name": ("--data DIR (a folder of images with .txt captions, or a downloaded imagefolder with its "
                       "metadata.jsonl; hub ids are not fetched)"),
    "--instance_data_dir": "--data",
    "--instance_prompt": "--caption-template (for images without a caption file; a class image's is --class-prompt)",
    "--class_data_dir": "--reg-data",
    "--class_prompt": "--class-prompt",
    # (in words: a hint naming flags train lacks, generate's, is not given)
    "--num_class_images": ("--reg-data DIR with the class images (lowvram generate makes them, as the diffusers "
                           "script does: the class prompt, a count of 200 and an output of reg/1_dog/dog.png, then "
                           "--reg-data reg), or --prior-prediction, which needs none"),
    "--with_prior_preservation": ("--reg-data DIR (prior preservation with its images, captioned by --class-prompt; "
                                  "each step draws an instance or a class image, as kohya's, so the same instance "
                                  "training takes twice the diffusers scripts' steps)"),
    "--proportion_empty_prompts": "--caption-dropout",
    "--num_validation_images": "--sample-prompt, once per image",
    "--scale_lr": "(not needed: give the learning rate to train at as --lr)",
    "--allow_tf32": "(not needed: the U-Net computes in bf16 or fp16; --mixed-precision no computes in full fp32)",
    "--revision": "(download the revision you want and give its folder as --model)",
    "--variant": "(a hub id loads its main weights; give a folder or file holding the variant's)",
    "--caption_column": "--caption-column",
    "--image_column": "(not needed: a folder's metadata.jsonl names each image in its file_name column)",
    "--center_crop": ("--no-bucket --crop center (every image cropped square, as the diffusers scripts crop it; "
                      "their default, a random square, is --no-bucket --crop random; lowvram's, aspect-ratio buckets)"),
    "--random_flip": "--flip",
    "--num_train_epochs": "--epochs",
    "--checkpointing_steps": "--checkpoint-every N (a checkpoint to resume from; a LoRA every N steps is --save-every N)",
    "--checkpoints_total_limit": "--keep-checkpoints",
    "--resume_from_checkpoint": "--resume (a checkpoint folder, or auto; latest is read as auto)",
    "--snr_gamma": "--min-snr-gamma",
    "--use_8bit_adam": "--optimizer adamw8bit",
    "--adam_weight_decay": "--weight-decay",
    "--adam_beta1": "--optimizer-arg betas=B1,B2",
    "--adam_beta2": "--optimizer-arg betas=B1,B2",
    "--adam_epsilon": "--optimizer-arg eps=EPS",
    "--enable_xformers_memory_efficient_attention": "--attention xformers",
    "--report_to": "--tensorboard, or --wandb-project NAME",
    "--validation_prompt": "--sample-prompt (once per prompt)",
    "--validation_epochs": "--sample-every Ne",
    "--dataloader_num_workers": "(not needed: training reads the cached latents)",
    "--lora_rank": "--rank",
    "--use_ema": "--ema",
    "--lora_alpha": "--alpha",
    "--lora_type": "--network (lora, dora, loha, lokr)",
    "--base_model_precision": "--unet-weights (the frozen U-Net's storage: fp8, bnb-nf4, quanto-int8, ...)",
    "--data_backend_config": "--data (an image folder, a kohya dataset .toml or a OneTrainer concepts file)",
    "--validation_steps": "--sample-every N",
    "--validation_num_inference_steps": "--sample-steps",
    "--validation_guidance": "--sample-prompt with the guidance inline (\"a cat --l 7\")",
    "--validation_negative_prompt": "--sample-prompt with the negative prompt inline (\"a cat --n blurry\")",
    "--validation_resolution": "--sample-prompt with the size inline (\"a cat --w 1024 --h 768\")",
    "--resolution_type": "(not needed: --resolution is the side of a square of the buckets' area in pixels, "
                         "SimpleTuner's pixel_area type; its pixel type sizes the shorter edge instead)",
    "--model_type": "--network (lora, dora, loha or lokr: lowvram trains adapters only)",
    "--caption_strategy": "--caption-template (for images without a caption file; {filename} is the file name)",
    "--tracker_project_name": "--wandb-project",
    "--caption_dropout_probability": "--caption-dropout",
    "--train_text_encoder": "--train-text-encoder",
    "--use_dora": "--network dora",
    "--lora_dropout": ("--dropout (the nearest: it drops the rank's activations, as kohya's network_dropout; "
                       "PEFT's drops each layer's input)"),
    "--input_perturbation": "--ip-noise-gamma",
    "--timestep_bias_strategy": ("--timestep-bias (earlier or later; their bias multiplier's default, 1, biases "
                                 "nothing, lowvram's --timestep-bias-multiplier's is 2)"),
    "--init_lora": "--network-weights",
    "--local_rank": "(not needed: accelerate launch gives each process its GPU; see README's Several GPUs)",
    "--max_train_samples": "(none: every usable image trains; give --data a folder of those to train)",
    "--output_kohya_format": ("(not needed: the LoRA is written in kohya's format, which ComfyUI, AUTOMATIC1111 and "
                              "diffusers load; --format diffusers adds diffusers' own)"),
    "--sample_batch_size": "(class images are made beforehand with lowvram generate, one at a time)",
    "--tokenizer_name": "(not needed: the model's own tokenizer is used)",
    "--push_to_hub": "(lowvram uploads nothing: huggingface-cli upload YOUR_ID OUTPUT_FOLDER)",
    "--hub_model_id": "(lowvram uploads nothing: huggingface-cli upload YOUR_ID OUTPUT_FOLDER)",
    "--hub_token": "(lowvram uploads nothing: huggingface-cli upload YOUR_ID OUTPUT_FOLDER)",
    # (their names, lowvram's flags' look-alikes of other meanings)
    "--cache_dir": ("(the diffusers scripts' download cache is HF_HOME here; lowvram's --cache-dir is another "
                    "thing, where it keeps its latents and text embeddings)"),
    "--train_text_encoder_ti": ("(pivotal tuning, a textual inversion beside the LoRA, is not trained; "
                                "--train-text-encoder trains a LoRA of the text encoder)"),
    "--image_interpolation_mode": "(not needed: images are resized with Lanczos)",
}

# ai-toolkit's sd_trainer settings (section, key) and the lowvram flag of each (its value as `_value` reads it)
AI_TOOLKIT_FLAGS = {
    ("model", "name_or_path"): "--model", ("network", "type"): "--network", ("network", "rank"): "--rank",
    ("network", "linear"): "--rank", ("network", "conv"): "--conv-rank", ("network", "conv_alpha"): "--conv-alpha",
    ("train", "steps"): "--max-steps", ("train", "lr"): "--lr", ("train", "unet_lr"): "--lr",
    ("train", "text_encoder_lr"): "--text-encoder-lr", ("train", "batch_size"): "--batch-size",
    ("train", "optimizer"): "--optimizer", ("train", "gradient_accumulation_steps"): "--gradient-accumulation",
    ("train", "gradient_accumulation"): "--gradient-accumulation", ("train", "lr_scheduler"): "--scheduler",
    ("train", "gradient_checkpointing"): "--gradient-checkpointing", ("train", "noise_offset"): "--noise-offset",
    ("train", "train_text_encoder"): "--train-text-encoder", ("train", "min_snr_gamma"): "--min-snr-gamma",
    ("train", "max_grad_norm"): "--max-grad-norm", ("train", "dtype"): "--mixed-precision",
    ("train", "seed"): "--seed", ("train", "max_denoising_steps"): "--max-timestep",
    ("train", "min_denoising_steps"): "--min-timestep", ("save", "save_every"): "--save-every",
    ("save", "max_step_saves_to_keep"): "--keep-saves",
    ("save", "dtype"): "--save-precision", ("sample", "sample_every"): "--sample-every",
    ("sample", "sample_steps"): "--sample-steps", ("sample", "sampler"): "--sample-sampler",
    ("dataset", "folder_path"): "--data", ("dataset", "caption_dropout_rate"): "--caption-dropout",
    ("dataset", "shuffle_tokens"): "--shuffle-tags", ("dataset", "token_dropout_rate"): "--tag-dropout",
    ("dataset", "flip_x"): "--flip", ("dataset", "default_caption"): "--caption-template",
    ("", "trigger_word"): "--trigger-word",
}
# ai-toolkit's settings typed as flags (and Civitai's trainer's words): its config's names, where lowvram's differ
AI_TOOLKIT_NAMES = {f"--{key}": flag for (_, key), flag in AI_TOOLKIT_FLAGS.items() if f"--{key}" != flag} | {
    "--caption_ext": "--caption-extension",
    "--dtype": "--mixed-precision (the saved LoRA's precision is --save-precision)",
    "--num_repeats": "(a folder named N_name trains its images N times, as kohya's; or num_repeats in a kohya "
                     "dataset .toml as --data)",
    "--linear_alpha": "--alpha (ai-toolkit's default is 1)",
}

# kohya's network_args for LyCORIS (algo=loha conv_dim=8) typed as flags of their own
LYCORIS_ARGS = {
    "--conv_dim": "--conv-rank (with --lora-layers full, which adapts the convolutions)",
    "--conv_alpha": "--conv-alpha",
    "--algo": "--network (loha or lokr; LoCon is --network lora --lora-layers full)",
    "--dora_wd": "--network dora",
    "--use_tucker": "(LoCon's Tucker cores are read from files, not trained)",
    "--use_scalar": "(not trained)",
    "--train_norm": "(norm layers are not trained)",
}

# the few of those that a kohya config names otherwise, value for value (a kohya config that holds theirs is told
# kohya's key)
KOHYA_EQUIVALENTS = {"--lora_rank": "network_dim", "--lora_alpha": "network_alpha",
                     "--num_train_epochs": "max_train_epochs", "--snr_gamma": "min_snr_gamma",
                     "--pretrained_vae_model_name_or_path": "vae"}

TRAINING_COMMANDS = ("train", "plan")  # the commands whose flags are kohya's train_network.py's


def kohya_hint(flag: str, command: str = "train", flags: Collection[str] | None = None) -> str | None:
    """'--network_dim is kohya's name; lowvram's is --rank' for a kohya flag (with or without its =value, with
    dashes for underscores) or a diffusers script's or SimpleTuner's; for another command, its kohya script's. None
    where the flag is no other tool's, or what it names is not among `flags` (the command's: check-data has no --rank)."""
    name, key = _typed_and_key(flag)
    if command == "generate" and key in A1111_GENERATE_FLAGS and key not in KOHYA_SCRIPT_FLAGS[command][1]:
        return f"{name} is AUTOMATIC1111's; {_counterpart('lowvram generate', A1111_GENERATE_FLAGS[key])}"
    if command in KOHYA_SCRIPT_FLAGS:
        script, table = KOHYA_SCRIPT_FLAGS[command]
        return f"{name} is from {script}; {_counterpart(f'lowvram {command}', table[key])}" if key in table else None
    if key in WITHOUT_COUNTERPART:
        return f"{name} is kohya's: {WITHOUT_COUNTERPART[key]}" if command in TRAINING_COMMANDS else None
    if key in KOHYA_FLAGS:
        whose, ours = "kohya's", KOHYA_FLAGS[key]
    elif key in OTHER_TRAINER_FLAGS:  # (--use_8bit_adam: sd-scripts' too, its command pasted is kohya's)
        whose = "kohya's" if key.lstrip("-") in SD_SCRIPTS_SETTINGS else "the diffusers scripts' or SimpleTuner's"
        ours = OTHER_TRAINER_FLAGS[key]
    elif key in LYCORIS_ARGS:
        whose, ours = "LyCORIS's network_args", LYCORIS_ARGS[key]
    elif key in AI_TOOLKIT_NAMES:  # (num_repeats: the kohya Colab notebooks' word too, from kohya's dataset files)
        whose = "a kohya dataset file's and ai-toolkit's" if key == "--num_repeats" else "ai-toolkit's"
        ours = AI_TOOLKIT_NAMES[key]
    else:
        return None
    named = named_flags(ours)
    if (flags is not None and not all(option in flags for option in named)) or (
            not named and command not in TRAINING_COMMANDS):  # ("not needed: training reads the cached latents")
        return None
    return f"{name} is {whose} name; {_counterpart('lowvram', ours)}"


def named_flags(counterpart: str) -> list[str]:
    """The options a counterpart above names, not a quoted sample prompt's inline ones ("a cat --l 7")."""
    return re.findall(r"--[a-z][a-z0-9-]*", re.sub(r'"[^"]*"', "", counterpart))


def _counterpart(who: str, ours: str) -> str:
    """"lowvram's is --rank", or, for what needs no flag here (an entry in brackets), "lowvram has none (...)"."""
    return f"{who} has none {ours}" if ours.startswith("(") else f"{who}'s is {ours}"


def is_other_tools_flag(flag: str, command: str = "train") -> bool:
    """Whether `flag` is one of the other tools' flags above (for `command`): one kohya_hint may leave unanswered
    where the command has no counterpart, and which is then no typo of the command's own flags either."""
    _, key = _typed_and_key(flag)
    tables = (KOHYA_SCRIPT_FLAGS[command][1], A1111_GENERATE_FLAGS if command == "generate" else {}) \
        if command in KOHYA_SCRIPT_FLAGS else (
        KOHYA_FLAGS, OTHER_TRAINER_FLAGS, AI_TOOLKIT_NAMES, WITHOUT_COUNTERPART, LYCORIS_ARGS)
    return any(key in table for table in tables)


def _typed_and_key(flag: str) -> tuple[str, str]:
    """The flag as typed, without its =value, and as the tables above spell it (kohya's underscores for dashes)."""
    name = flag.split("=", 1)[0]
    return name, "--" + name[2:].replace("-", "_") if name.startswith("--") else name


def others_single_flags() -> dict[str, str]:
    """Each kohya, diffusers-script or SimpleTuner training flag that is one lowvram flag: {"--network_dim":
    "--rank", ...}, for the did-you-means of typos of their names (the command line's and a TOML key's)."""
    return {name: flag for name, ours in (KOHYA_FLAGS | OTHER_TRAINER_FLAGS).items() if (flag := single_flag(ours))}


def single_flag(ours: str) -> str | None:
    """The one lowvram flag an entry above names outside its parentheses ('--rank (whose alpha ...)': --rank), or
    None for an entry of several (--network_args') or none."""
    named = re.findall(r"--[a-z][a-z0-9-]*", re.sub(r"\([^()]*\)", "", ours))
    return named[0] if len(named) == 1 else None
