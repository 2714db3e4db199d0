"""Every lesson in a real JupyterLab, driven by Playwright in headless chromium (called by `make browser-test`).

For each lesson: open it, Run All Cells, wait until every code cell has run, then move every slider
(keyboard on its handle), pick another entry of every dropdown, click every toggle and push button, and
check that the lesson's output under that widget changed (a setting that acts on the next click, such as
steps per click, passes when the widget's first button then redraws). Fails on any error output in the notebook, any
traceback the kernel sends (widget callbacks included, which JupyterLab only logs), and any JavaScript
error in the page. Keeps one screenshot per lesson in build/screenshots/.

It works on a copy of notebooks/ (build/browser-test/notebooks, next to a link to data/), because
JupyterLab saves notebooks and the run would change the recorded outputs. Cells marked `# NBVAL_SKIP`
(long retraining) are blanked in the copy, as under nbval.

Usage: python .ci/browser_test.py [--chromium PATH] [--jupyter PATH] [NOTEBOOK ...]
Needs: playwright (Python package, not its browser download), Debian's chromium, and a JupyterLab whose
kernel has the course installed (.venv/bin/jupyter after `make install`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "browser-test"
SHOTS = ROOT / "build" / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ERROR_OUTPUT = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
# The part of a cell's output a widget redraws: everything but the controls themselves (whose readouts
# change as soon as they move, with or without a kernel).
DIGEST_JS = """el => {
  const copy = el.cloneNode(true);
  copy.querySelectorAll('.widget-slider, .widget-hslider, .widget-dropdown, .widget-toggle-buttons, .widget-checkbox,'
      + ' .widget-readout, .widget-label, .widget-button, .widget-text, .widget-inline-hbox > label')
      .forEach(n => n.remove());
  return copy.innerHTML;
}"""
NBENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "IPYKERNEL_CELL_NAME": "<IPY-INPUT>", "PYTHONHASHSEED": "0"}


def need_chromium(path: str) -> str:
    """The chromium executable; installs Debian's package when root and missing, else says what to install."""
    if Path(path).exists():
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("browser-test: installing Debian's chromium (apt-get install -y chromium)")
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=False)
        if Path(path).exists():
            return path
        subprocess.run(["apt-get", "update", "-q"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=False)
        if Path(path).exists():
            return path
    sys.exit(f"browser-test: no chromium at {path}. Install Debian's package: `sudo apt-get install chromium` "
             "(Playwright's own browser download is not needed), or pass CHROMIUM=/path/to/chromium to make.")


def prepare_copy(names: list[str]) -> Path:
    """build/browser-test/notebooks with the lessons (NBVAL_SKIP cells blanked) and data -> ../../data."""
    if WORK.exists():
        shutil.rmtree(WORK)
    (WORK / "notebooks").mkdir(parents=True)
    (WORK / "data").symlink_to(ROOT / "data", target_is_directory=True)
    for name in names:
        nb = json.loads((ROOT / "notebooks" / name).read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if cell["cell_type"] == "code" and "NBVAL_SKIP" in source:
                cell["source"], cell["outputs"] = "# NBVAL_SKIP: not run by the browser test", []
        (WORK / "notebooks" / name).write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return WORK / "notebooks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(jupyter: str, root: Path):
    port, token = free_port(), secrets.token_hex(16)
    state = WORK / "jupyter"
    # Render every cell (JupyterLab 4 only renders the cells near the viewport by default), and start the
    # notebook's kernel without asking.
    settings = state / "config" / "lab" / "user-settings" / "@jupyterlab"
    for path, value in ((settings / "notebook-extension" / "tracker.jupyterlab-settings", {"windowingMode": "none"}),
                        (settings / "apputils-extension" / "sessionDialogs.jupyterlab-settings",
                         {"skipKernelRestartDialog": True})):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = dict(os.environ, **NBENV, JUPYTER_CONFIG_DIR=str(state / "config"), JUPYTER_DATA_DIR=str(state / "data"),
               JUPYTER_RUNTIME_DIR=str(state / "runtime"))
    cmd = [jupyter, "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}",
           f"--IdentityProvider.token={token}", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--ServerApp.port_retries=0"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(WORK / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"browser-test: JupyterLab exited ({proc.returncode}); see {WORK / 'jupyterlab.log'}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}", token
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    sys.exit(f"browser-test: JupyterLab did not listen on port {port} within 120 s; see {WORK / 'jupyterlab.log'}")


class KernelErrors:
    """Tracebacks the kernel sends on iopub (cell errors and widget-callback errors), from the websocket."""

    def __init__(self):
        self.seen: list[str] = []

    def attach(self, ws):
        ws.on("framereceived", self.on_frame)

    def on_frame(self, payload):
        try:
            msg = self.decode(payload)
        except Exception:  # not a kernel message
            return
        if msg is None:
            return
        kind, content = msg
        if kind == "error":
            self.seen.append(f"{content.get('ename')}: {content.get('evalue')}"[:300])
        elif kind == "stream" and content.get("name") == "stderr" and "Traceback" in content.get("text", ""):
            self.seen.append(content["text"].strip().splitlines()[-1][:300])

    @staticmethod
    def decode(payload):
        if isinstance(payload, str):  # legacy JSON protocol
            msg = json.loads(payload)
            return msg.get("msg_type") or msg.get("header", {}).get("msg_type"), msg.get("content", {})
        # v1.kernel.websocket.jupyter.org: offsets, then channel, header, parent, metadata, content, buffers
        n = int.from_bytes(payload[:8], "little")
        offsets = [int.from_bytes(payload[8 * (i + 1): 8 * (i + 2)], "little") for i in range(n)]
        if payload[offsets[0]:offsets[1]].decode() != "iopub":
            return None
        header = json.loads(payload[offsets[1]:offsets[2]])
        content = json.loads(payload[offsets[4]:offsets[5]])
        return header["msg_type"], content


def wait_idle(panel, timeout_s: float) -> bool:
    """True once no code cell is queued or running ([*]) for two checks in a row."""
    deadline, quiet = time.time() + timeout_s, 0
    while time.time() < deadline:
        time.sleep(1)
        busy = panel.locator(".jp-InputPrompt").filter(has_text="[*]").count()
        quiet = quiet + 1 if busy == 0 else 0
        if quiet >= 2:
            return True
    return False


def digest(cell) -> str:
    area = cell.locator(".jp-OutputArea").first
    return hashlib.sha1(area.evaluate(DIGEST_JS).encode()).hexdigest() if area.count() else ""


def wait_change(cell, before: str, timeout_s: float = 30) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        time.sleep(0.3)
        if digest(cell) != before:
            time.sleep(0.5)  # let the redraw finish before the next control moves
            return True
    return False


def move_controls(page, panel, report):
    """Move every slider, dropdown and toggle button once; count those whose output changed."""
    cells = panel.locator(".jp-CodeCell")
    for i in range(cells.count()):
        cell = cells.nth(i)
        if cell.locator(".jp-OutputArea .jupyter-widgets").count() == 0:
            continue
        report["widget_cells"] += 1
        actions = []
        for j in range(cell.locator(".noUi-handle").count()):
            actions.append(("slider", j))
        for j in range(cell.locator(".widget-dropdown select").count()):
            actions.append(("dropdown", j))
        for j in range(cell.locator(".widget-toggle-buttons").count()):
            actions.append(("toggle", j))
        buttons = cell.locator(".widget-button")
        for k in range(buttons.count()):  # every push button (step, reset, ...) must redraw too
            report["moved"] += 1
            if click_and_wait(buttons.nth(k), cell, panel):
                report["redrew"] += 1
            else:
                report["dead"].append(f"cell {i} button '{buttons.nth(k).inner_text()}': the output did not change")
        for kind, j in actions:
            before = digest(cell)
            try:
                label = act(page, cell, kind, j)
            except Exception as err:  # a control that cannot be operated is a failure, not a crash
                report["dead"].append(f"cell {i} {kind} {j}: {type(err).__name__}: {str(err)[:120]}")
                continue
            report["moved"] += 1
            if wait_change(cell, before):
                report["redrew"] += 1
            elif buttons.count() and click_and_wait(buttons.first, cell, panel):
                report["redrew"] += 1  # a setting that acts on the next click (e.g. steps per click)
            else:
                report["dead"].append(f"cell {i} {kind} '{label}': the output did not change")
            wait_idle(panel, 60)
            # Put it back, so that each control is tried from the lesson's own settings (two moved
            # controls together can make an invalid combination, which the widget answers with a message).
            moved = digest(cell)
            try:
                act(page, cell, kind, j, back=True)
                wait_change(cell, moved, timeout_s=10)
                wait_idle(panel, 60)
            except Exception as err:
                report["dead"].append(f"cell {i} {kind} {j}, moving back: {type(err).__name__}: {str(err)[:120]}")


def click_and_wait(button, cell, panel) -> bool:
    before = digest(cell)
    button.scroll_into_view_if_needed(timeout=10000)
    button.click()
    changed = wait_change(cell, before, timeout_s=20)
    wait_idle(panel, 60)
    return changed


_last_key: dict[tuple, str] = {}


def act(page, cell, kind: str, j: int, back: bool = False) -> str:
    """Move one control a step (or, with back=True, undo the last move of that control)."""
    if kind == "slider":
        handle = cell.locator(".noUi-handle").nth(j)
        handle.scroll_into_view_if_needed(timeout=10000)
        now, top = handle.get_attribute("aria-valuenow"), handle.get_attribute("aria-valuemax")
        handle.focus()
        if back:
            page.keyboard.press({"ArrowLeft": "ArrowRight", "ArrowRight": "ArrowLeft"}[_last_key[(id(cell), j)]])
            return ""
        key = "ArrowLeft" if now is not None and now == top else "ArrowRight"
        _last_key[(id(cell), j)] = key
        page.keyboard.press(key)
        label = cell.locator(".widget-slider, .widget-hslider").nth(j).locator(".widget-label").first
        return label.inner_text(timeout=2000) if label.count() else f"slider {j}"
    if kind == "dropdown":
        select = cell.locator(".widget-dropdown select").nth(j)
        select.scroll_into_view_if_needed(timeout=10000)
        options = select.locator("option")
        current = select.evaluate("s => s.selectedIndex")
        step = -1 if back else 1
        select.select_option(index=(current + step) % options.count())
        label = cell.locator(".widget-dropdown").nth(j).locator(".widget-label").first
        return label.inner_text(timeout=2000) if label.count() else f"dropdown {j}"
    group = cell.locator(".widget-toggle-buttons").nth(j)
    buttons = group.locator("button")
    group.scroll_into_view_if_needed(timeout=10000)
    pressed = [k for k in range(buttons.count()) if "mod-active" in (buttons.nth(k).get_attribute("class") or "")]
    target = ((pressed[0] + (-1 if back else 1)) if pressed else 0) % buttons.count()
    buttons.nth(target).click()
    return f"toggle {j}"


def accept_kernel_dialog(page, wait_s: float = 3):
    """Click "Select" if JupyterLab asks which kernel to start (it proposes the notebook's own)."""
    dialog = page.locator(".jp-Dialog").filter(has_text="Select Kernel")
    try:
        dialog.first.wait_for(state="visible", timeout=wait_s * 1000)
    except Exception:
        return
    dialog.first.get_by_role("button", name="Select").click()


def check_lesson(page, base: str, token: str, name: str, kernel_errors: KernelErrors, run_timeout_s: float) -> dict:
    report = dict(cells=0, ran=0, widget_cells=0, moved=0, redrew=0, errors=[], dead=[])
    js_errors: list[str] = []
    page.on("pageerror", lambda e: js_errors.append(str(e)[:200]))
    kernel_errors.seen.clear()
    start = time.time()
    page.goto(f"{base}/lab/tree/{name}?reset&token={token}", wait_until="domcontentloaded")
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").filter(has=page.locator(".jp-Notebook")).first
    panel.wait_for(state="visible", timeout=120000)
    accept_kernel_dialog(page)
    panel.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=120000)
    accept_kernel_dialog(page)
    prompts = panel.locator(".jp-CodeCell .jp-InputPrompt")
    report["cells"] = prompts.count()

    def ran() -> int:
        return sum(1 for k in range(report["cells"]) if re.search(r"\[\d+\]", prompts.nth(k).inner_text()))

    for _attempt in range(3):  # a Run All sent while the kernel is still starting can be dropped: send it again
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        accept_kernel_dialog(page)
        deadline = time.time() + 30
        while time.time() < deadline and ran() == 0 and not panel.locator(".jp-InputPrompt").filter(
                has_text="[*]").count():
            time.sleep(1)
        if ran() or panel.locator(".jp-InputPrompt").filter(has_text="[*]").count():
            break
    if not wait_idle(panel, run_timeout_s):
        report["errors"].append(f"Run All did not finish within {run_timeout_s:.0f} s")
    report["run_s"] = time.time() - start
    report["ran"] = ran()
    if report["ran"] < report["cells"]:
        report["errors"].append(f"only {report['ran']} of {report['cells']} code cells ran")
    move_controls(page, panel, report)
    errors_in_page = panel.locator(ERROR_OUTPUT)
    for k in range(errors_in_page.count()):
        report["errors"].append("error output: " + errors_in_page.nth(k).inner_text()[:200].replace("\n", " "))
    report["errors"] += [f"kernel: {e}" for e in kernel_errors.seen] + [f"page: {e}" for e in js_errors]
    first_widget = panel.locator(".jp-OutputArea .jupyter-widgets").first
    if first_widget.count():
        first_widget.scroll_into_view_if_needed(timeout=10000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / (Path(name).stem + ".png")))
    report["total_s"] = time.time() - start
    return report


def shut_down_kernels(page, base: str, token: str):
    headers = {"Authorization": f"token {token}"}
    for session in page.request.get(f"{base}/api/sessions", headers=headers).json():
        page.request.delete(f"{base}/api/sessions/{session['id']}", headers=headers)


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop JupyterLab and its kernels on the way out
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--jupyter", default=str(ROOT / ".venv" / "bin" / "jupyter"))
    parser.add_argument("--run-timeout", type=float, default=600, help="seconds for one lesson's Run All")
    parser.add_argument("notebooks", nargs="*", help="lessons (default: every notebooks/NN_*.ipynb)")
    args = parser.parse_args()
    chromium = need_chromium(args.chromium)
    jupyter = os.path.abspath(args.jupyter)
    if not os.access(jupyter, os.X_OK):
        sys.exit(f"browser-test: no JupyterLab at {args.jupyter}: run `make install` first (make browser-test does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("browser-test: the playwright package is missing: run it through `make browser-test`")
    names = [Path(n).name for n in args.notebooks] or sorted(
        p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    root = prepare_copy(names)
    proc, base, token = start_lab(jupyter, root)
    failed, totals, start = [], dict(moved=0, redrew=0, widget_cells=0), time.time()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            kernel_errors = KernelErrors()
            for name in names:
                page = context.new_page()
                page.on("websocket", kernel_errors.attach)
                try:
                    r = check_lesson(page, base, token, name, kernel_errors, args.run_timeout)
                except Exception as err:
                    r = dict(cells=0, ran=0, widget_cells=0, moved=0, redrew=0, dead=[], run_s=0, total_s=0,
                             errors=[f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"])
                ok = not r["errors"] and not r["dead"] and r["widget_cells"] > 0 and r["moved"] > 0
                print(f"{r['total_s']:6.1f} s  {name}: {r['ran']}/{r['cells']} cells ran in {r['run_s']:.0f} s, "
                      f"{r['widget_cells']} widget(s), {r['redrew']}/{r['moved']} controls redrew the output, "
                      f"{len(r['errors'])} error(s){'' if ok else '  FAILED'}", flush=True)
                for line in r["errors"] + r["dead"]:
                    print(f"          {line}")
                if r["widget_cells"] == 0:
                    print("          no widget rendered")
                for key in totals:
                    totals[key] += r[key]
                if not ok:
                    failed.append(name)
                try:
                    shut_down_kernels(page, base, token)
                except Exception:
                    pass
                page.close()
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"browser-test: {len(names)} lessons in {time.time() - start:.0f} s, {totals['widget_cells']} widgets, "
          f"{totals['redrew']}/{totals['moved']} controls redrew the output; screenshots in "
          f"{SHOTS.relative_to(ROOT)}/; " + (f"FAILED: {', '.join(failed)}" if failed else "all passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
