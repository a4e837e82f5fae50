"""`lowvram ui` driven in a real browser: headless Chromium (Debian's, which `.ci/run` installs) through
Playwright, against the app served by `lowvram ui` in a process of its own, as a user runs it.

Without the browser or the [ui] extra these tests are skipped; `.ci/run` sets LOWVRAM_REQUIRE_BROWSER=1, which
turns that skip into a failure. With LOWVRAM_UI_SCREENSHOTS=DIR they also save the README's screenshots there."""

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from captioners import build_tagger
from messy_dataset import write_messy_dataset
from ui_server import served_ui

from lowvram.data.sample import write_sample_dataset

CHROMIUM = Path("/usr/bin/chromium")
# Chromium's own background traffic is refused on a closed network; these flags keep it quiet
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = os.environ.get("LOWVRAM_UI_SCREENSHOTS")


def _missing() -> str | None:
    try:
        import gradio  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as exc:
        return f"the ui extra and playwright are not installed ({exc.name})"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    return None


if _missing():
    if os.environ.get("LOWVRAM_REQUIRE_BROWSER"):
        raise RuntimeError(f"browser tests required but {_missing()}")
    pytest.skip(_missing(), allow_module_level=True)

from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.slow
# each field the form changes asks the live plan again: on two busy cores (CI, the full suite) those answers queue
# for longer than Playwright's default 5 s, and a preset's or a config's status waited behind them (seen failing)
expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`lowvram ui` in its own process, in a working folder of its own, with its own cache."""
    root = tmp_path_factory.mktemp("ui")
    work, cache = root / "work", root / "cache"
    work.mkdir()
    with served_ui(work, cache, root / "ui.log") as url:
        yield {"url": url, "root": root, "work": work, "cache": cache, "port": int(url.rsplit(":", 1)[1])}


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server["url"])
    page.wait_for_selector("#plan-view, #plan-error p", timeout=60_000)
    yield page
    page.close()


def field(page, name: str):
    return page.locator(f"#opt-{name} input, #opt-{name} textarea").first


def fill_settled(locator, value: str) -> None:
    """Fill a field just shown (an accordion opened): Gradio mounts it then, and can reset a value typed meanwhile."""
    for _ in range(5):
        locator.fill(value)
        locator.press("Tab")
        try:
            expect(locator).to_have_value(value, timeout=3_000)
            return
        except AssertionError:
            continue
    expect(locator).to_have_value(value)


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"li[role=option][aria-label='{option}']").click()


def training_peak(page) -> str:
    return page.inner_text("[data-phase='training']")


PLAN_TEXT = "() => (document.querySelector('#plan-view')?.innerText ?? '') + (document.querySelector('#plan-error')?.innerText ?? '')"


def set_and_wait_for_plan(page, name: str, value: str) -> None:
    """Type a value (then leave the field, as a user does) and wait for the plan to answer."""
    before = page.evaluate(PLAN_TEXT)
    field(page, name).fill(value)
    field(page, name).press("Tab")
    page.wait_for_function(f"b => ({PLAN_TEXT})() != b", arg=before, timeout=15_000)


def shot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lowvram", *args], capture_output=True, text=True, check=False)


def planned_training_gib(*args: str) -> str:
    """`lowvram plan`'s training peak for the pick, as the page shows it."""
    choice = json_plan(*args)["choice"]
    return f"{sum(choice['vram_bytes']['training'].values()) / 2**30:.2f} GiB"


def wait_for_training_peak(page, text: str) -> None:
    page.wait_for_function("t => document.querySelector(\"[data-phase='training']\")?.innerText == t", arg=text,
                           timeout=15_000)


def test_the_plan_follows_the_resolution(page):
    at_512 = planned_training_gib("--model", "sd15", "--vram", "6GB")
    at_768 = planned_training_gib("--model", "sd15", "--resolution", "768", "--vram", "6GB")
    assert at_512 != at_768
    page.locator("#budget textarea, #budget input").first.fill("6GB")
    wait_for_training_peak(page, at_512)  # the same numbers as `lowvram plan` for the same options and card
    field(page, "resolution").fill("768")
    field(page, "resolution").press("Tab")
    wait_for_training_peak(page, at_768)
    expect(page.locator("#plan-workload")).to_have_text("sd15 at 768 px, batch 1, rank 16")
    shot(page, "setup-plan")


def test_a_configuration_too_large_is_flagged_with_its_fix(page):
    page.locator("#budget textarea, #budget input").first.fill("4GB")
    field(page, "model").fill("sdxl")
    set_and_wait_for_plan(page, "batch-size", "8")
    expect(page.locator("#plan-verdict")).to_contain_text("nothing fits", timeout=15_000)
    words = json_plan("--model", "sdxl", "--batch-size", "8", "--vram", "4GB")
    expect(page.locator("#plan-verdict")).to_have_text(words["explanation"])
    expect(page.locator("#plan-fix")).to_have_text("would fit with: " + "; ".join(words["suggestions"]))
    assert "lv-over" in page.inner_html("#plan-view")  # the phase over the budget is drawn red
    shot(page, "setup-too-large")


def json_plan(*args: str) -> dict:
    import json

    return json.loads(cli("plan", *args, "--json").stdout)


def test_a_preset_fills_the_form_and_a_saved_toml_replays(page, server):
    choose(page, "preset", "character")
    expect(page.locator("#setup-status")).to_contain_text("loaded preset character")
    expect(field(page, "rank")).to_have_value("16")
    expect(field(page, "keep-tokens")).to_have_value("1")
    expect(page.locator("#opt-lora-layers input")).to_have_value("attn-mlp")
    field(page, "model").fill("tiny")
    field(page, "data").fill("sample")
    target = server["root"] / "saved.toml"
    page.locator("#config-path textarea, #config-path input").first.fill(str(target))
    page.locator("#save-config").click()
    expect(page.locator("#setup-status")).to_contain_text(f"saved {target}")
    from lowvram.configure import read_toml

    saved = read_toml(target)
    assert saved["rank"] == 16 and saved["lora_layers"] == "attn-mlp" and saved["model"] == "tiny"
    # `train --config` reads what the UI wrote: an option error would stop it before anything else
    assert cli("plan", "--config", str(target), "--vram", "8GB").returncode == 0
    field(page, "rank").fill("4")
    page.locator("#load-config").click()
    expect(page.locator("#setup-status")).to_contain_text(f"loaded {target}")
    expect(field(page, "rank")).to_have_value("16")
    expect(field(page, "model")).to_have_value("tiny")


def test_a_loaded_run_config_says_the_run_its_folder_holds(page, server):
    """Loading an interrupted run's .toml said only 'loaded': its step and checkpoints were seen after Resume."""
    out = server["root"] / "earlier"
    done = cli("train", "--model", "tiny", "--data", "sample", "--output", str(out), "--max-steps", "2",
               "--checkpoint-every", "2", "--cache-dir", str(server["cache"]))
    assert done.returncode == 0, done.stderr[-2000:]
    page.locator("#config-path textarea, #config-path input").first.fill(str(out / "earlier.toml"))
    page.locator("#load-config").click()
    expect(page.locator("#setup-status")).to_contain_text(f"{out} holds a run: step 2 of 2, loss")
    expect(page.locator("#setup-status")).to_contain_text("checkpoints up to step 2: Resume continues it")


def test_a_preset_chosen_keeps_the_forms_dataset_and_model_and_drops_the_last_presets_settings(page, server):
    """Choosing a preset filled every other field with its default: the dataset, model and trigger typed were gone;
    and a preset chosen after another kept the first one's settings where the second sets none."""
    noise_default = field(page, "noise-offset").input_value()
    for name, value in (("model", "tiny"), ("data", "sample"), ("trigger-word", "zkw")):
        field(page, name).fill(value)
        field(page, name).press("Tab")
    choose(page, "preset", "style")
    expect(page.locator("#setup-status")).to_contain_text("loaded preset style")
    expect(field(page, "noise-offset")).to_have_value("0.05")
    expect(page.locator("#setup-status")).not_to_contain_text("replaced")  # the dataset, model and trigger stay
    field(page, "max-steps").fill("60")  # typed: the preset's epochs replace it, which is said
    field(page, "max-steps").press("Tab")
    # (leaving the field clears style's epochs, its alternative: the server has the typed steps once that shows; a
    # preset chosen before, on a loaded machine, read the form without them)
    expect(field(page, "epochs")).to_have_value("")
    choose(page, "preset", "character")
    expect(page.locator("#setup-status")).to_contain_text("loaded preset character; it replaced the form's "
                                                          "--max-steps 60")
    expect(field(page, "noise-offset")).to_have_value(noise_default)
    expect(field(page, "rank")).to_have_value("16")
    for name, value in (("model", "tiny"), ("data", "sample"), ("trigger-word", "zkw")):
        expect(field(page, name)).to_have_value(value)
    target = server["root"] / "no-preset.toml"
    target.write_text("[network]\nrank = 64\n")
    page.locator("#config-path textarea, #config-path input").first.fill(str(target))
    page.locator("#load-config").click()  # a whole config, as --config alone: the preset no longer under it
    expect(page.locator("#setup-status")).to_contain_text(f"loaded {target}")
    expect(page.locator("#preset input")).to_have_value("")


def test_a_preset_in_the_form_takes_a_rank_and_a_length_as_the_command_line_does(page, server):
    """`--preset character --rank 8 --max-steps 30` trains alpha 4 (the preset's share of the rank) for 30 steps;
    the form kept alpha 8 (twice the update) and its epochs beside the steps, which the check refused."""
    choose(page, "preset", "character")
    expect(page.locator("#setup-status")).to_contain_text("loaded preset character")
    for name, value in (("rank", "8"), ("max-steps", "30")):
        field(page, name).fill(value)
        field(page, name).press("Tab")
    expect(field(page, "alpha")).to_have_value("4")
    expect(field(page, "epochs")).to_have_value("")
    field(page, "alpha").click()  # passing through the field is no alpha of one's own: it still follows
    field(page, "rank").fill("16")
    field(page, "rank").press("Tab")
    expect(field(page, "alpha")).to_have_value("8")
    field(page, "alpha").fill("6")  # one's own alpha stays one's own
    field(page, "alpha").press("Tab")
    field(page, "rank").fill("32")
    field(page, "rank").press("Tab")
    expect(field(page, "alpha")).to_have_value("6")
    field(page, "model").fill("tiny")
    field(page, "data").fill("sample")
    target = server["root"] / "preset-rank.toml"
    page.locator("#config-path textarea, #config-path input").first.fill(str(target))
    page.locator("#save-config").click()
    expect(page.locator("#setup-status")).to_contain_text(f"saved {target}")
    from lowvram.configure import read_toml

    saved = read_toml(target)
    assert (saved["rank"], saved["alpha"], saved["max_steps"], saved.get("epochs")) == (32, 6, 30, None)


def test_bad_input_gets_the_cli_line_and_the_ui_stays_up(page, server):
    set_and_wait_for_plan(page, "rank", "0")
    cli_line = cli("plan", "--model", "sd15", "--rank", "0", "--vram", "8GB").stderr.strip()
    assert cli_line.startswith("lowvram plan: error: ")
    expect(page.locator("#plan-error")).to_contain_text(cli_line.removeprefix("lowvram plan: error: "))
    field(page, "rank").fill("8")
    expect(page.locator("#plan-view")).to_be_visible(timeout=15_000)  # fixed: the plan is back
    field(page, "model").fill(str(server["root"] / "no-such-model.safetensors"))
    expect(page.locator("#plan-error")).to_contain_text("no-such-model.safetensors", timeout=15_000)
    field(page, "model").fill("")
    field(page, "data").fill(str(server["root"] / "no-such-folder"))
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#check-data").click()
    expect(page.locator("#data-summary")).to_contain_text("folder not found", timeout=15_000)


def test_check_data_lists_bad_files_and_captions_are_edited_in_place(page, server):
    data = server["root"] / "messy"
    expected = write_messy_dataset(data)
    field(page, "data").fill(str(data))
    field(page, "model").fill("tiny")
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#check-data").click()
    expect(page.locator("#data-summary")).to_contain_text("usable", timeout=30_000)
    table = page.inner_text("#data-table")
    for relpath, word in expected.items():
        assert Path(relpath).name in table, relpath
        assert word.lower() in table.lower(), (relpath, word)
    assert "skipped" in table
    shot(page, "dataset")

    choose(page, "caption-image", "2_messy/good_1.png")
    caption_file = data / "2_messy" / "good_1.txt"
    original = caption_file.read_text() if caption_file.exists() else None
    expect(page.locator("#caption-text textarea")).to_have_value((original or "").strip())
    page.locator("#caption-text textarea").fill("a red circle, edited in the browser")
    names_before = {p.name for p in caption_file.parent.iterdir()}
    page.locator("#save-caption").click()
    expect(page.locator("#caption-status")).to_contain_text("saved good_1.txt")
    assert caption_file.read_text() == "a red circle, edited in the browser\n"
    kept = list((server["cache"] / "edited-captions").rglob("good_1.txt"))
    assert (kept[0].read_text() == original) if original else not kept
    assert {p.name for p in caption_file.parent.iterdir()} == names_before | {"good_1.txt"}  # no backup, no temp


def test_captioning_from_the_ui_writes_only_new_captions(page, server):
    data = server["root"] / "to-caption"
    write_sample_dataset(data)
    for txt in list(data.rglob("*.txt"))[:2]:
        txt.unlink()
    before = {p.name for p in data.rglob("*")}
    tagger = build_tagger(server["root"] / "tagger")
    field(page, "data").fill(str(data))
    page.get_by_role("tab", name="Dataset").click()
    page.get_by_text("Caption the images without captions").click()
    expect(page.locator("#plan-caption")).to_be_visible()
    fill_settled(page.locator("#caption-caption-model textarea, #caption-caption-model input").first, str(tagger))
    fill_settled(page.locator("#caption-trigger-word textarea, #caption-trigger-word input").first, "zkw")
    page.locator("#plan-caption").click()
    expect(page.locator("#caption-log textarea")).to_have_value(re.compile("2 image.s. to caption.*on the CPU", re.DOTALL),
                                                                timeout=60_000)
    assert {p.name for p in data.rglob("*")} == before  # a dry run writes nothing
    page.locator("#run-caption").click()
    expect(page.locator("#caption-log textarea")).to_have_value(re.compile("wrote 2 caption"), timeout=60_000)
    new = {p.name for p in data.rglob("*")} - before
    assert len(new) == 2 and all(name.endswith(".txt") for name in new)
    assert all((next(data.rglob(name))).read_text().startswith("zkw") for name in new)


def test_train_stop_resume_and_render(page, server):
    try:
        _train_stop_resume_and_render(page, server)
    finally:  # a run left going (a failed expectation) would keep the next test from starting its own
        with contextlib.suppress(Exception):  # the failure above is the one to report
            if page.locator("#run-state").inner_text(timeout=5_000).startswith(("running", "stopping")):
                page.locator("#stop").click()
                expect(page.locator("#run-state")).to_contain_text(re.compile("stopped|finished|failed"),
                                                                   timeout=120_000)


def _train_stop_resume_and_render(page, server):
    out = server["root"] / "run"
    data = write_sample_dataset(server["root"] / "train-data")
    field(page, "model").fill("tiny")
    field(page, "data").fill(str(data))
    field(page, "output").fill(str(out))
    set_and_wait_for_plan(page, "max-steps", "120")
    field(page, "sample-prompts").fill("lvshape, a red circle on a blue background")
    field(page, "sample-every").fill("20")
    field(page, "sample-steps").fill("4")
    page.get_by_role("tab", name="Train").click()
    page.locator("#resume").click()  # nothing to resume yet: said, and nothing starts
    expect(page.locator("#run-message")).to_contain_text("nothing to resume: no checkpoint in")
    assert not out.exists()
    page.locator("#start").click()
    expect(page.locator("#run-message")).to_contain_text("started: lowvram train --config")
    expect(page.locator("#run-state")).to_contain_text("running", timeout=30_000)
    expect(page.locator("#samples img").first).to_be_visible(timeout=120_000)  # a sample grid, mid-run
    expect(page.locator("#run-progress")).to_contain_text("of 120")
    expect(page.locator("#loss-chart canvas, #loss-chart svg").first).to_be_visible()
    shot(page, "train")
    page.locator("#stop").click()
    expect(page.locator("#run-state")).to_contain_text("stopped", timeout=120_000)
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert checkpoints
    stopped_at = int(checkpoints[-1].name.removeprefix("step-"))
    assert stopped_at < 120

    page.reload()  # a page reloaded (or another tab): its form is empty, and Resume goes on with the run shown
    page.wait_for_selector("#plan-view, #plan-error p", timeout=60_000)
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#run-state")).to_contain_text("stopped")
    page.locator("#resume").click()
    expect(page.locator("#run-state")).to_contain_text("finished", timeout=240_000)
    import json

    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == list(range(1, 121))  # the resumed run continued after the checkpoint, to the end
    assert "resum" in (server["cache"] / "ui" / f"ui-run-{server['port']}-{os.getuid()}.log").read_text().lower()  # its port's

    expect(page.locator("#lora-file input")).to_have_value(str(out / "run.safetensors"), timeout=10_000)
    page.get_by_role("tab", name="Setup").click()
    field(page, "model").fill("tiny")
    page.get_by_role("tab", name="Train").click()
    page.locator("#render-prompt textarea, #render-prompt input").first.fill("lvshape, a red circle")
    page.locator("#render").click()
    expect(page.locator("#render-status")).to_contain_text("rendered", timeout=120_000)
    expect(page.locator("#rendered img")).to_be_visible()


def test_every_open_tab_follows_the_run(browser, server):
    """Two tabs are two sessions: what one was sent already says nothing of the other, so both show the run's
    state (here: a run that starts, then fails on its empty dataset)."""
    empty = server["root"] / "empty-data"
    empty.mkdir()
    tabs = []
    for _ in range(2):
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.goto(server["url"])
        tab.wait_for_selector("#plan-view, #plan-error p", timeout=60_000)
        tabs.append(tab)
    try:
        first = tabs[0]
        field(first, "model").fill("tiny")
        field(first, "data").fill(str(empty))
        field(first, "output").fill(str(server["root"] / "two-tabs-run"))
        for tab in tabs:
            tab.get_by_role("tab", name="Train").click()
        first.locator("#start").click()
        expect(first.locator("#run-message")).to_contain_text("started: lowvram train --config", timeout=15_000)
        for tab in tabs:
            expect(tab.locator("#run-state")).to_contain_text("failed (exit code 2)", timeout=120_000)
    finally:
        for tab in tabs:
            tab.close()


def test_a_caption_is_saved_beside_the_checked_image_only(page, server):
    """Changing --data after the check clears the image list: Save caption never writes into the other dataset."""
    checked, other = write_sample_dataset(server["root"] / "checked-data"), server["root"] / "other-data"
    other.mkdir()
    field(page, "data").fill(str(checked))
    field(page, "model").fill("tiny")
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#check-data").click()
    expect(page.locator("#data-summary")).to_contain_text("6 usable", timeout=30_000)
    image = min(checked.rglob("*.png"))
    choose(page, "caption-image", str(image.relative_to(checked)))
    expect(page.locator("#caption-text textarea")).not_to_have_value("")
    before = image.with_suffix(".txt").read_text()
    page.get_by_role("tab", name="Setup").click()
    field(page, "data").fill(str(other))
    field(page, "data").press("Tab")
    page.get_by_role("tab", name="Dataset").click()
    expect(page.locator("#caption-image input")).to_have_value("", timeout=15_000)
    page.locator("#caption-text textarea").fill("a caption for the other dataset")
    page.locator("#save-caption").click()
    expect(page.locator("#caption-status")).to_contain_text("check the dataset, then choose an image")
    assert list(other.iterdir()) == [] and image.with_suffix(".txt").read_text() == before
