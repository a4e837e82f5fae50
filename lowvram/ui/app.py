"""`lowvram ui`: the local web app (Gradio). Three tabs:

- Setup: the options form (made from the config dataclasses), presets, `.toml` load and save, and the live plan
  for the chosen card, refreshed on every change;
- Dataset: `check-data` on the form's dataset, captions edited in place, and `lowvram caption`;
- Train: start, stop and resume a run in its own process, its loss and learning-rate charts, samples and log,
  and a test image of a finished LoRA.

Every error is the CLI's one line, shown in the page; the app itself never goes down with a run.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lowvram.caption import CaptionConfig
from lowvram.config import SAMPLE_DATA, SECTIONS
from lowvram.configure import ALTERNATIVES, list_presets, preset_path, read_config, read_toml
from lowvram.errors import LowvramError, shell_line
from lowvram.files import cache_sharing_fix, expand_home, make_folders, windows_output_problem, write_text
from lowvram.resolve import UI_FILES
from lowvram.run_files import CHECKPOINTS, runs_name
from lowvram.ui import dataset as data_panel
from lowvram.ui.form import (
    FormField,
    as_text,
    error_lines,
    form_fields,
    form_values,
    given_values,
    option_fields,
    option_values,
    read_for_form,
    replaced_by_preset,
    toml_text,
    with_preset,
)
from lowvram.ui.planview import BUDGET, CSS, THIS_GPU, card_choices, plan_for, render, run_budget
from lowvram.ui.runs import (
    TrainingProcess,
    earlier_run,
    in_page_words,
    lowvram_command,
    outputs_of,
    progress_line,
    read_metrics,
    stop_left_run,
    with_recorded_strategy,
)
from lowvram.ui.runs import render as render_image

OPEN_SECTIONS = ("model", "data", "network", "training", "output")
REFRESH_SECONDS = 1.0
CHART_POINTS = 2000  # at most about this many points per chart
PREVIEW_SIDE = 768  # a dataset image is shown at most this large: a 6000 px photo would go out whole


def _component(gr, field: FormField):
    common = {"label": field.flag, "info": field.field.metadata["help"], "elem_id": field.elem_id}
    value = field.to_form(field.default)
    choices = field.field.metadata.get("choices")
    if field.base is bool:
        return gr.Checkbox(value=value, **common)
    if choices:
        options = list(choices) if field.default is not None else ["", *choices]
        # an open list (--optimizer's: any class path too) takes what is typed; the config checks it as the CLI does
        open_list = type(choices) is not tuple
        return gr.Dropdown(options, value=value, allow_custom_value=open_list, **common)
    if field.base in (int, float) and field.required:
        # no precision: Gradio would round 2.5 to 2 before the config could refuse it as the CLI does
        return gr.Number(value=value, **common)
    lines = 3 if str(field.base).startswith("tuple") else 1
    return gr.Textbox(value=value, lines=lines, max_lines=lines * 4, **common)


def _message(exc: Exception) -> str:
    """An error as the page shows it: the CLI's lines, naming the page's buttons where they name flags."""
    return error_lines(in_page_words(str(exc)))


def build_app(cache_dir: Path, port: int | None = None, ui_dir: Path | None = None):
    """The Blocks app; `cache_dir` holds the caption originals, and the UI's run configs and logs (named after its
    `port`) and renders, in its ui/ folder or `ui_dir`."""
    import gradio as gr

    fields = form_fields()
    caption_fields = [f for f in option_fields(CaptionConfig, "caption") if f.name != "data"]
    # named by its port and its user: two UIs, and a lab's users on one shared cache, never write into each other's
    user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    training = TrainingProcess(f"ui-run-{port}{user}" if port else f"ui-run{user}")
    ui_dir = ui_dir or Path(cache_dir) / UI_FILES
    has_gpu = _has_cuda()

    with gr.Blocks(title="lowvram") as app:
        app.training = training  # (the run it started, said where the UI ends before it)
        gr.Markdown("## lowvram: LoRA training for small GPUs")
        with gr.Tabs():
            with gr.Tab("Setup", id="setup"):
                with gr.Row():
                    preset = gr.Dropdown(["", *list_presets()], value="", label="preset", elem_id="preset")
                    config_path = gr.Textbox(label="config file (.toml)", elem_id="config-path", scale=2)
                    load_button = gr.Button("Load .toml", elem_id="load-config")
                    save_button = gr.Button("Save .toml", elem_id="save-config")
                setup_status = gr.Markdown(elem_id="setup-status")
                with gr.Row():
                    with gr.Column(scale=3):
                        inputs = []
                        for section in SECTIONS:
                            with gr.Accordion(section, open=section in OPEN_SECTIONS):
                                inputs += [_component(gr, f) for f in fields if f.section == section]
                    with gr.Column(scale=2, elem_id="plan-column"):
                        card = gr.Dropdown(card_choices(), value=THIS_GPU if has_gpu else BUDGET, label="card",
                                           elem_id="card")
                        budget = gr.Textbox(value="8GB", label="VRAM budget (with 'a VRAM budget')", elem_id="budget")
                        plan_view = gr.HTML(elem_id="plan")
                        plan_error = gr.Markdown(elem_id="plan-error")
            with gr.Tab("Dataset", id="dataset"):
                check_button = gr.Button("Check the dataset (the form's --data)", elem_id="check-data")
                data_summary = gr.Markdown(elem_id="data-summary")
                data_table = gr.Dataframe(headers=data_panel.COLUMNS, interactive=False, wrap=True,
                                          elem_id="data-table")
                with gr.Row():
                    image_choice = gr.Dropdown([], label="image", elem_id="caption-image")
                    preview = gr.Image(label="preview", height=160, elem_id="caption-preview")
                caption_text = gr.Textbox(label="caption", lines=2, elem_id="caption-text")
                save_caption_button = gr.Button("Save caption", elem_id="save-caption")
                caption_status = gr.Markdown(elem_id="caption-status")
                with gr.Accordion("Caption the images without captions (lowvram caption)", open=False):
                    caption_inputs = [_component(gr, f) for f in caption_fields]
                    with gr.Row():
                        caption_plan_button = gr.Button("What would it do? (--dry-run: the images, and GPU or CPU)",
                                                        elem_id="plan-caption")
                        caption_button = gr.Button("Caption", elem_id="run-caption")
                    caption_log = gr.Textbox(label="lowvram caption", lines=4, elem_id="caption-log")
            with gr.Tab("Train", id="train"):
                auto = gr.Checkbox(value=has_gpu, label="let the planner choose the memory strategy (--auto, "
                                   "within the Setup tab's budget)", elem_id="auto")
                with gr.Row():
                    start_button = gr.Button("Start", variant="primary", elem_id="start")
                    stop_button = gr.Button("Stop (saves a checkpoint)", elem_id="stop")
                    resume_button = gr.Button("Resume", elem_id="resume")
                run_message = gr.Markdown(elem_id="run-message")
                run_state = gr.Markdown("no run yet", elem_id="run-state")
                run_progress = gr.Markdown(elem_id="run-progress")
                with gr.Row():
                    loss_plot = gr.LinePlot(x="step", y="loss", title="loss", elem_id="loss-chart", height=240)
                    lr_plot = gr.LinePlot(x="step", y="lr", title="learning rate", elem_id="lr-chart", height=240)
                # whole grids (a 64 px one drawn 292 px wide, cropped to fill, lost its lower half)
                samples = gr.Gallery(label="samples", columns=4, height=300, object_fit="contain", elem_id="samples")
                run_log = gr.Textbox(label="log", lines=8, elem_id="run-log")
                with gr.Row():
                    # this run's LoRAs, or any LoRA file typed in (one of an earlier session's runs)
                    lora_choice = gr.Dropdown([], label="LoRA file", elem_id="lora-file", scale=2,
                                              allow_custom_value=True)
                    prompt = gr.Textbox(label="prompt", elem_id="render-prompt", scale=2)
                    render_button = gr.Button("Render a test image", elem_id="render")
                rendered = gr.Image(label="test image", elem_id="rendered", height=256)
                render_status = gr.Markdown(elem_id="render-status")
        timer = gr.Timer(REFRESH_SECONDS)

        # --- Setup ---
        def refresh_plan(*given):
            *form, card_name, budget_text = given
            try:
                return render(plan_for(option_values(fields, form), card_name, budget_text)), ""
            except LowvramError as exc:
                return "", _message(exc)

        gr.on([c.change for c in [*inputs, card, budget]] + [app.load], refresh_plan,
              inputs=[*inputs, card, budget], outputs=[plan_view, plan_error], trigger_mode="always_last",
              show_progress="hidden")

        def fill(values: dict[str, Any], where: str):
            return [*form_values(fields, values), f"loaded {where}"]

        # the loaded preset's alpha per unit of rank and the alpha it shows, while the user has typed no alpha of
        # their own: a rank typed then takes the alpha that share gives, as `--preset X --rank N` trains (a smaller
        # rank, stronger updates)
        alpha_share = gr.State(None)
        component = {f.name: c for f, c in zip(fields, inputs, strict=True)}
        alpha_field = next(f for f in fields if f.name == "alpha")

        loaded_preset = gr.State(None)  # the settings of the preset last chosen

        def load_preset(name, previous, *form):  # chosen after the form was filled in: its settings replace the
            if not name:                          # form's, whose dataset, model and names stay
                return [gr.skip()] * (len(inputs) + 3)
            values = read_toml(preset_path(name))
            share = {"share": values["alpha"] / values["rank"], "shown": alpha_field.to_form(values["alpha"])} if {
                "rank", "alpha"} <= values.keys() else None
            shown_before = given_values(fields, form_values(fields, previous or {}))  # as the form reads it back
            given = given_values(fields, form)
            chosen = with_preset(given, values, shown_before)
            lost = replaced_by_preset(given, chosen, shown_before)
            said = f"preset {name}" + (f"; it replaced the form's {as_text(lost)} (type again what you want kept)"
                                      if lost else "")
            return [*fill(chosen, said), share, values]

        def load_config(path):  # a whole config, as --config alone: no preset under it
            try:
                values, notes = read_for_form(expand_home(path))
                notes = [*notes, *filter(None, [earlier_run(values.get("output"))])]
                return [*fill(values, as_text(path) + "".join(f"\n\n{as_text(note)}" for note in notes)), None, None,
                        ""]
            except LowvramError as exc:
                return [gr.skip()] * len(inputs) + [_message(exc), gr.skip(), gr.skip(), gr.skip()]

        def alpha_follows(rank, share):
            try:
                value = float(rank) * share["share"]
                if float(rank) <= 0:
                    raise ValueError
            except (TypeError, ValueError):  # (no preset's share, or no rank yet)
                return gr.skip(), gr.skip()
            shown = alpha_field.to_form(int(value) if value.is_integer() else value)
            return gr.update(value=shown), {**share, "shown": shown}

        def own_alpha(alpha, share):  # one typed (not the one a rank set) is the user's own, which stays
            return None if share and str(alpha) != str(share["shown"]) else gr.skip()

        component["rank"].input(alpha_follows, [component["rank"], alpha_share], [component["alpha"], alpha_share])
        component["alpha"].blur(own_alpha, [component["alpha"], alpha_share], alpha_share)
        # one answer to each question: a value typed into one of a pair (max steps or epochs, a validation split or
        # folder) clears the other, as a flag replaces a config's answer on the command line
        defaults = dict(zip((f.name for f in fields), form_values(fields, {}), strict=True))

        def clearing(name: str, others: list[str]):
            def typed(value):
                given = value not in (None, "", defaults[name])
                updates = [gr.update(value=defaults[other]) if given else gr.skip() for other in others]
                return updates if len(updates) > 1 else updates[0]
            return typed

        for group in ALTERNATIVES:
            for name in group:
                others = [other for other in group if other != name]
                outputs = [component[other] for other in others]  # (one alone, not in a list: an update is a dict)
                # (on leaving the field, as a user does: a Textbox's input event did not reach it, and a config
                # loaded with both, which the check refuses, keeps both)
                component[name].blur(clearing(name, others), component[name], outputs[0] if len(outputs) == 1
                                     else outputs)

        def save_config(path, use_auto: bool, card_name: str, budget_text: str, *form):
            try:
                vram = run_budget(card_name, budget_text) if use_auto else None
                return save_toml(path, option_values(fields, form), vram)
            except LowvramError as exc:
                return _message(exc)

        preset.change(load_preset, [preset, loaded_preset, *inputs],
                      [*inputs, setup_status, alpha_share, loaded_preset])
        load_button.click(load_config, config_path, [*inputs, setup_status, alpha_share, loaded_preset, preset])
        save_button.click(save_config, [config_path, auto, card, budget, *inputs], setup_status)

        # --- Dataset ---
        # per page: the dataset its image list came from, so a caption is written beside the image that was
        # checked, never into the dataset the form names by then
        checked = gr.State(None)
        data_index = next(i for i, f in enumerate(fields) if f.name == "data")
        data_input = inputs[data_index]

        def check(*form):
            values = option_values(fields, form)
            try:
                summary, rows, images, checked_data, extensions = data_panel.check_dataset(values)
                root = str(data_panel.images_root(checked_data))
            except LowvramError as exc:
                return _message(exc), [], gr.update(choices=[], value=None), None
            return summary, rows, gr.update(choices=images, value=None), {
                "data": form[data_index], "root": root, "caption_column": values.get("caption_column"),
                "caption_extensions": extensions}

        def forget_check(data, seen):
            if seen is None or seen["data"] == data:
                return [gr.skip()] * 4
            return "", [], gr.update(choices=[], value=None), None

        def show_caption(relpath, seen):
            if not relpath or seen is None:
                return None, ""
            root = Path(seen["root"])
            return _picture(root / relpath, PREVIEW_SIDE), data_panel.read_caption(
                root, relpath, seen.get("caption_column"), seen["caption_extensions"].get(relpath), seen["data"])

        def save_caption(relpath, text, seen):
            try:
                if not relpath or seen is None:
                    raise LowvramError("check the dataset, then choose an image first")
                root = Path(seen["root"])
                return data_panel.save_caption(root, relpath, text, data_panel.backup_dir_for(cache_dir, root),
                                               seen.get("caption_column"), seen["caption_extensions"].get(relpath),
                                               sample=seen["data"] == SAMPLE_DATA, data=seen["data"])
            except LowvramError as exc:
                return _message(exc)

        def run_caption(dry_run: bool, *given):
            form, caption_form = given[:len(inputs)], given[len(inputs):]
            args = ["caption", *(["--dry-run"] if dry_run else [])]
            chosen = option_values(caption_fields, caption_form)
            for f in caption_fields:
                if f.name in chosen:
                    args += _flag_args(f.flag, chosen[f.name])
            args += ["--", option_values(fields, form).get("data") or ""]  # a folder named "--x" is no option
            done = subprocess.run(lowvram_command(*args), capture_output=True, text=True, check=False)
            return (done.stdout + done.stderr).strip()

        check_button.click(check, inputs, [data_summary, data_table, image_choice, checked])
        data_input.change(forget_check, [data_input, checked], [data_summary, data_table, image_choice, checked])
        image_choice.change(show_caption, [image_choice, checked], [preview, caption_text])
        save_caption_button.click(save_caption, [image_choice, caption_text, checked], caption_status)
        caption_button.click(lambda *a: run_caption(False, *a), [*inputs, *caption_inputs], caption_log)
        caption_plan_button.click(lambda *a: run_caption(True, *a), [*inputs, *caption_inputs], caption_log)

        # --- Train ---
        # per page (each tab is a session of its own): what its Train tab shows already, so unchanged parts are
        # not sent again, and the LoRA file the page chose (not the user)
        shown = gr.State({})

        def start(resume: bool, use_auto: bool, card_name: str, budget_text: str, *form):
            values = option_values(fields, form)
            try:
                shown_run = training.config_path if resume and training.process and not training.running else None
                if shown_run and shown_run.is_file() and not (values.get("model") or values.get("data")):
                    # a page reloaded, or another tab: its form is empty, and the run its Train tab shows goes on
                    if not any((training.output / CHECKPOINTS).glob("step-*")):
                        raise LowvramError(f"nothing to resume: the run this page shows left no checkpoint in "
                                           f"{training.output / CHECKPOINTS}; Load .toml its options and press Start")
                    vram = run_budget(card_name, budget_text) if use_auto else None
                    text = toml_text(with_recorded_strategy(read_config(shown_run), training.output))
                    return training.start(text, ui_dir, training.output, resume="auto", auto_vram=vram)
                # the form's own --resume (a checkpoint folder typed there) and --overwrite: the run's, not the file's
                resuming = "auto" if resume else values.get("resume") or None
                output = expand_home(values.get("output", "output")).resolve()
                if resuming:  # checked as a resume is, with the strategy the run trained with
                    values = with_recorded_strategy(values | {"resume": resuming}, output)
                text = toml_text(values)
                if resuming == "auto" and not any((output / CHECKPOINTS).glob("step-*")):
                    raise LowvramError(f"nothing to resume: no checkpoint in {output / 'checkpoints'} yet; "
                                       "press Start")
                vram = run_budget(card_name, budget_text) if use_auto else None
                return training.start(text, ui_dir, output, resume=resuming, auto_vram=vram,
                                      overwrite=bool(values.get("overwrite")))
            except LowvramError as exc:
                return _message(exc)

        # a click's message has a line of its own: the state line is the timer's alone, so the two never race
        start_button.click(lambda *a: start(False, *a), [auto, card, budget, *inputs], run_message)
        resume_button.click(lambda *a: start(True, *a), [auto, card, budget, *inputs], run_message)
        def stop(*form):
            if training.running:
                return training.stop()
            output = expand_home(option_values(fields, form).get("output", "output")).resolve()
            return stop_left_run(output, ui_dir, training.others_stopped)

        stop_button.click(stop, inputs, run_message)

        def refresh(chosen_lora, seen: dict[str, Any]):
            if training.process is None:
                return [gr.skip()] * 7 + [seen]
            import pandas as pd

            if seen.get("run") != training.started:  # another run: nothing this page shows is the new run's yet
                seen.clear()
                seen["run"] = training.started

            def changed(key: str, value):
                if seen.get(key) == value:
                    return gr.skip()
                seen[key] = value
                return value

            def pictures(paths: list[str]):  # read only when they change: a long run has many grids
                if seen.get("samples") == paths:
                    return gr.skip()
                seen["samples"] = paths
                return [(_picture(Path(path)), Path(path).name) for path in paths]

            folder = training.run_folder()
            records = read_metrics(folder)
            drawn = records[::max(1, len(records) // CHART_POINTS)]  # a long run's chart stays light to send
            frame = pd.DataFrame([{"step": r["step"], "loss": r["loss"], "lr": r["lr"]} for r in drawn],
                                 columns=["step", "loss", "lr"]).astype({"loss": float, "lr": float})  # (null: NaN)
            plots = [frame, frame] if seen.get("steps") != len(records) else [gr.skip(), gr.skip()]
            seen["steps"] = len(records)
            sample_files, loras = outputs_of(folder)
            # the newest LoRA of a finished run, unless the user chose another one
            user_chose = chosen_lora in loras and chosen_lora != seen.get("picked")
            keep = chosen_lora if user_chose else loras[0] if loras and not training.running else None
            if not user_chose:
                seen["picked"] = keep
            lora_list = gr.skip() if seen.get("loras") == (loras, keep) else gr.update(choices=loras, value=keep)
            seen["loras"] = (loras, keep)
            log = training.log_tail()
            return (changed("state", f"**{training.state()}**"),
                    changed("progress", progress_line(records, training.running, log)), *plots,
                    pictures(sample_files), changed("log", log), lora_list, seen)

        timer.tick(refresh, [lora_choice, shown],
                   [run_state, run_progress, loss_plot, lr_plot, samples, run_log, lora_choice, shown],
                   show_progress="hidden")

        def render_test(lora, text, *form):
            values = option_values(fields, form)
            try:
                if not lora or not text or not values.get("model"):
                    raise LowvramError("choose the base model (--model), a LoRA file and a prompt")
                image = ui_dir / "renders" / f"render-{time.strftime('%Y%m%d-%H%M%S')}.png"
                path = render_image(values["model"], lora, text, image)
            except LowvramError as exc:
                return None, _message(exc)
            return _picture(path), f"rendered {path.name}"

        render_button.click(render_test, [lora_choice, prompt, *inputs], [rendered, render_status])
    return app


def _picture(path: Path, side: int | None = None):
    """An image the page shows, as pixels rather than a path: the server then serves no file of this machine (a
    path would have to be in Gradio's allowed paths, for anyone who can reach the page to fetch)."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():  # a photo up to Pillow's refusal trains (the scan let it through): shown too
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if side:
                image.draft(image.mode, (side, side))  # a JPEG decodes reduced, not whole
            image.load()
            if side:
                image.thumbnail((side, side))
            return image.convert("RGB")


def save_toml(path: str, values: dict[str, Any], auto_vram: str | None = None) -> str:
    """*Save .toml*: the options as the `.toml` that `lowvram train --config` replays (with `--auto`, and the
    card's `--vram`, where the page's Auto is ticked: the file leaves the strategy to it). Only a .toml name:
    --config reads a .json as a OneTrainer or kohya_ss GUI config, and the page, like --config's help, names .toml
    files."""
    if not path or not path.strip():
        raise LowvramError("--config: type the path of the .toml to write")
    given = path.strip()
    if len(given) > 1 and given[0] == given[-1] == '"':  # (Explorer's Copy as path quotes what it copies)
        given = given[1:-1]
    if problem := windows_output_problem("--config", given):  # (written as one file of the whole name, C:\...)
        raise LowvramError(problem)
    target = expand_home(given)
    if target.suffix.lower() != ".toml":
        raise LowvramError(f"--config: {target}: lowvram's options are written as .toml; name it {target.stem}.toml")
    if target.is_file() and target.stem == runs_name(target.parent):  # (a run's own: its resume reads it)
        raise LowvramError(f"--config: {target} is the options of the run in {target.parent}, which its resume reads; "
                           "save under another name (Load .toml reads a run's options into the form)")
    target = write_text(target.absolute(), toml_text(values))
    auto = ["--auto", *(["--vram", auto_vram] if auto_vram else [])] if auto_vram is not None else []
    return f"saved {target}: `{shell_line('lowvram', 'train', '--config', target, *auto)}` runs it"


def _flag_args(flag: str, value: Any) -> list[str]:
    """An option value as command-line words."""
    if isinstance(value, bool):
        return [flag if value else f"--no-{flag[2:]}"]
    if isinstance(value, tuple):
        return [word for item in value for word in (flag, item)]
    return [flag, str(value)]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def launch(host: str, port: int, share: bool, cache_dir: Path, auth: tuple[str, str] | None = None,
           inbrowser: bool = False) -> None:
    """Serve the app; on localhost unless --listen or --share say otherwise, behind a login with `auth`. It serves
    no file of this machine: the pictures it shows go out as pixels, Gradio's copies of them into a folder of
    lowvram's cache that only this user reads."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # each user's own: in a lab's shared cache, a folder of one user's refused the next user's UI (its chmod)
    ui_dir = cache_dir / UI_FILES
    private = ui_dir / (f"gradio-{os.getuid()}" if hasattr(os, "getuid") else "gradio")
    try:
        make_folders(private.parent)
        private.mkdir(exist_ok=True)
        private.chmod(0o700)
    except OSError as exc:  # a lab's cache whose group this user is not in: a traceback, where runs warn and go on
        ui_dir = Path(tempfile.mkdtemp(prefix="lowvram-ui-"))  # (this user's alone)
        atexit.register(shutil.rmtree, ui_dir, ignore_errors=True)
        private = ui_dir / "gradio"
        private.mkdir()
        print(f"warning: the cache {cache_dir} cannot be written ({exc.strerror or exc}): "
              f"{cache_sharing_fix(cache_dir)}; the app keeps its runs' configs and logs, renders and image copies "
              f"in {ui_dir} meanwhile, removed when it ends", file=sys.stderr)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(private))
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise LowvramError("Gradio is not installed; pip install 'lowvram[ui]' (in a source checkout: pip install -e '.[ui]')") from None
    _check_port(host, port)
    app = build_app(cache_dir, port, ui_dir)
    # quiet: Gradio's own lines tell a user of the app to "set `share=True` in `launch()`"; ours say --share
    _, local_url, share_url = app.launch(server_name=host, server_port=port, share=share, css=CSS, ssr_mode=False,
                                         quiet=True, prevent_thread_lock=True, auth=auth, footer_links=[],
                                         theme=_offline_theme(), inbrowser=inbrowser)
    where = f"{local_url}" + (" (and this machine's other addresses)" if host == "0.0.0.0" else "")
    public = f"; public link {share_url}" if share_url else "; no public link (Gradio could not make one: see above)"
    print(f"lowvram ui: {where}{public if share else ''}; Ctrl-C stops it", flush=True)
    app.block_thread()
    if note := app.training.left_going():
        print(note, file=sys.stderr, flush=True)
    raise KeyboardInterrupt  # (Gradio's wait ends on Ctrl-C or SIGTERM, which it took: "interrupted", 130)


AUTH_VARIABLE = "LOWVRAM_UI_AUTH"  # --auth's value kept out of the command line, which every account's `ps` shows


def login(auth: str | None, share: bool, listen: bool, others: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """--auth (else $LOWVRAM_UI_AUTH) as (user, password). A public link without one is refused, and a network or a
    machine `others` use (a lab's: every account reaches 127.0.0.1) without one warned about: the app starts runs,
    writes files and reads folders as the user who started it."""
    given_as = "--auth"
    if auth is None and os.environ.get(AUTH_VARIABLE):
        auth, given_as = os.environ[AUTH_VARIABLE], AUTH_VARIABLE
    if auth is None:
        if share:
            raise LowvramError("--share: a public gradio.live link lets anyone who has it start runs, write files "
                               "and use this GPU as you; add --auth USER:PASSWORD")
        if listen:
            print("warning: --listen without --auth: anyone who can reach this machine can start runs and write "
                  "files as you; add --auth USER:PASSWORD", file=sys.stderr)
        elif others:
            print(f"warning: other users use this machine ({', '.join(others)}), and each can open the app on "
                  f"127.0.0.1 and start runs and write files as you; set {AUTH_VARIABLE}=USER:PASSWORD (or add --auth "
                  "USER:PASSWORD, which `ps` shows them)", file=sys.stderr)
        return None
    user, _, password = auth.partition(":")
    if not user or not password:
        raise LowvramError(f"{given_as}: give it as USER:PASSWORD, both not empty")
    return user, password


def other_users() -> tuple[str, ...]:
    """The other accounts that use this machine (a lab's, a shared server's), by name: those logged in, and people's
    accounts (uid 1000 and up) that run programs on it, for a node of a batch system or a container keeps no login
    records."""
    import getpass

    import psutil

    try:
        me = getpass.getuser()
    except (OSError, KeyError):  # (a user of no passwd entry)
        me = str(os.getuid()) if hasattr(os, "getuid") else ""
    names = set()
    try:
        names |= {user.name for user in psutil.users()}
    except (OSError, RuntimeError, psutil.Error):  # (no login records)
        pass
    if hasattr(os, "getuid"):  # (Windows has no uids: its other users are the logged in ones)
        for process in psutil.process_iter(["uids", "username"]):
            uids, name = process.info.get("uids"), process.info.get("username")
            # (not nobody, 65534, nor a rootless container's subordinate uids, from 100000 and of no name; a
            # directory service's people, uids of 200000 and up, have theirs)
            if uids and uids.real >= 1000 and uids.real not in (os.getuid(), 65534) and name and not (
                    name.isdigit() and uids.real >= 100_000):
                names.add(name)
    return tuple(sorted(names - {me}))


def exposed(host: str | None) -> bool:
    """Whether serving on `host` (--listen's) lets other machines reach the app: not for a loopback address."""
    import ipaddress

    if not host or host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: as good as a network address
        return True


def _check_port(host: str, port: int) -> None:
    import errno
    import socket

    elsewhere = (f"--listen {host}: not an address of this machine; give one of its addresses, or --listen alone for "
                 "all of them" + ("; the port goes to --port" if host.count(":") == 1 else ""))
    if host.count(":") > 1:  # IPv6: Gradio writes the address into its URLs unbracketed, and fails
        raise LowvramError(f"--listen {host}: the app serves IPv4 addresses only; give one, or --listen alone for all "
                           "of them")
    try:
        address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except (socket.gaierror, UnicodeError):
        raise LowvramError(elsewhere) from None
    with socket.socket() as probe:
        if os.name != "nt":  # as the server binds: a UI just stopped leaves connections waiting a minute (TIME-WAIT)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise LowvramError(elsewhere) from None
            free = _free_port(address, port)  # (a lab's fifteen UIs: each student found one by trying)
            raise LowvramError(f"--port {port}: {host}:{port} cannot be served ({exc.strerror or exc}; another "
                               f"lowvram ui?); choose another with --port" + (f" ({free} is free)" if free else "")
                               ) from None


def _free_port(address: tuple, taken: int) -> int | None:
    """The first port after `taken` (of the next hundred) that `address`'s host can serve, or None."""
    import socket

    for port in range(taken + 1, min(taken + 100, 65535) + 1):
        with socket.socket() as probe:
            try:
                probe.bind((address[0], port))
            except OSError:
                continue
            return port
    return None


def _offline_theme():
    """Gradio's default look with the system's fonts: its web fonts would be fetched from the internet."""
    import gradio as gr

    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])
