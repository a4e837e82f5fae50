"""The live plan: `lowvram plan` for the form's options and the chosen card, drawn as one bar per phase (its peak
VRAM against the card's budget), the planner's pick, the other candidates, and the smallest change that fits."""

from __future__ import annotations

import html
from typing import Any

from lowvram.errors import LowvramError
from lowvram.hardware import Hardware, gib, hardware_for, list_profiles

THIS_GPU = "this machine's GPU"
BUDGET = "a VRAM budget"
CANDIDATES_SHOWN = 6


def card_choices() -> list[str]:
    return [THIS_GPU, *list_profiles(), BUDGET]


def card_hardware(card: str, budget: str) -> Hardware:
    """The Hardware the plan is for: detected, a profile, or a typed budget (the CLI's --vram words)."""
    if card == BUDGET:
        return hardware_for(None, budget or "", None) if budget else _no_budget()
    if card == THIS_GPU:
        return hardware_for(None, None, None)
    return hardware_for(card, None, None)


def run_budget(card: str, budget: str) -> str:
    """`--auto --vram`'s words for the card the plan shows: a profile's or a typed budget, within which the run then
    plans and stays (its precision is still the GPU present's); none for this machine's GPU."""
    if card == THIS_GPU:
        return ""
    return budget if card == BUDGET else f"{card_hardware(card, budget).free_vram // 2**20}MB"


def _no_budget() -> Hardware:
    raise LowvramError("--vram: type a budget such as 6GB")


def plan_for(values: dict[str, Any], card: str, budget: str) -> dict:
    """plan_json of the options on the card."""
    from lowvram.plan import plan_options
    from lowvram.plan.report import plan_json

    _, result = plan_options(values, card_hardware(card, budget))
    return plan_json(result)


def render(plan: dict) -> str:
    """The plan as HTML: bars per phase for the pick (else the fastest that fits though unverified, else the leanest
    candidate), then the candidates."""
    budget = plan["hardware"]["budget"]
    shown = (plan["choice"] or next((c for c in plan["candidates"] if c["fits"]), None)
             or min(plan["candidates"], key=lambda c: c["peak_vram_bytes"]))
    verdict = ("" if plan["fits"] else " &mdash; fits, but not yet seen training on a GPU" if shown["fits"]
               else " &mdash; does not fit")
    phases = {name: sum(parts.values()) for name, parts in shown["vram_bytes"].items() if sum(parts.values())}
    top = max([budget, *phases.values()])
    head = (f"<p id='plan-workload'>{html.escape(plan['model_family'])} at {plan['resolution']} px, batch "
            f"{plan['batch']}, rank {plan['rank']}</p>"
            f"<p id='plan-pick'><b>{_strategy(shown['strategy'])}</b>: peak {gib(shown['peak_vram_bytes'])} GiB "
            f"of {gib(budget)} GiB on {html.escape(plan['hardware']['name'])}"
            f"{verdict}</p>")
    if not plan["fits"]:
        fix = "; ".join(plan["suggestions"]) or "no change found"
        head += (f"<p id='plan-verdict' class='lv-bad'>{html.escape(plan['explanation'])}</p>"
                 f"<p id='plan-fix'>would fit with: {html.escape(fix)}</p>")
    elif shown.get("verified_on_gpu") is False:  # a card without bf16: picked among those seen in bf16
        head += f"<p id='plan-verdict' class='lv-good'>fits: {html.escape(plan['explanation'])}</p>"
    else:
        head += "<p id='plan-verdict' class='lv-good'>fits: the planner would train with this</p>"
    bars = "".join(_bar(name, peak, budget, top) for name, peak in phases.items())
    listed = (plan["candidates"] if plan["fits"] else  # nothing fits: the leanest first
              sorted(plan["candidates"], key=lambda c: c["peak_vram_bytes"]))[:CANDIDATES_SHOWN]
    listed += [] if shown in listed else [shown]  # the pick drawn above is in the table too, past the fastest
    rows = "".join(
        f"<tr><td>{_strategy(c['strategy'])}</td><td>{gib(c['peak_vram_bytes'])}</td>"
        f"<td>{'yes' if c['fits'] else 'no'}</td><td>{c['relative_step_time']:.2f}x</td>"
        f"<td>{'yes' if c['verified_on_gpu'] else 'not yet'}</td></tr>" for c in listed)
    table = ("<table class='lv-candidates'><tr><th>strategy</th><th>peak GiB</th><th>fits</th><th>step time</th>"
             f"<th>seen on a GPU</th></tr>{rows}</table>")
    return f"<div id='plan-view'>{head}<div class='lv-bars'>{bars}</div>{table}</div>"


def _bar(phase: str, peak: int, budget: int, top: int) -> str:
    over = " lv-over" if peak > budget else ""
    return (f"<div class='lv-row'><span class='lv-phase'>{html.escape(phase)}</span>"
            f"<span class='lv-track'><span class='lv-fill{over}' style='width:{100 * peak / top:.1f}%'></span>"
            f"<span class='lv-mark' title='budget' style='left:{100 * budget / top:.1f}%'></span></span>"
            f"<span class='lv-value' data-phase='{html.escape(phase)}'>{gib(peak)} GiB</span></div>")


def _strategy(strategy: dict) -> str:
    blocks = strategy.get("checkpoint_blocks")
    ckpt = f"ckpt {blocks} blocks" if blocks else "ckpt" if strategy["gradient_checkpointing"] else "no ckpt"
    return html.escape(f"{strategy['unet_weights']}, {ckpt}, {strategy['optimizer']}")


CSS = """
.gradio-container { overflow: visible !important; }  /* a hidden overflow would keep the plan from staying in view */
#plan-column { position: sticky !important; top: 8px; align-self: flex-start !important; }
#plan-view .lv-bars { position: relative; margin: 8px 0; }
#plan-view .lv-row { display: flex; align-items: center; gap: 8px; margin: 3px 0; }
#plan-view .lv-phase { width: 120px; }
#plan-view .lv-track { flex: 1; background: #eee; height: 14px; position: relative; }
#plan-view .lv-fill { display: block; height: 14px; background: #3b82f6; }
#plan-view .lv-fill.lv-over { background: #dc2626; }
#plan-view .lv-value { width: 80px; text-align: right; }
#plan-view .lv-mark { position: absolute; top: -2px; bottom: -2px; border-left: 2px dashed #111; }
#plan-view .lv-bad { color: #b91c1c; }
#plan-view .lv-good { color: #15803d; }
#plan-view table { margin-top: 8px; font-size: 0.9em; }
"""
